"""CPU per delivery of the SQLite append path (number, hash, store), on a real file.

python -m tests.bench.append_rate [--deliveries 20000] [--batch 256] [--repeats 5]
Appends the bench workload's deliveries (headers kept as the receiver keeps them) in group
commits of `batch` to a fresh log, `repeats` times; prints the best pass's process CPU per
delivery (fsync waits excluded) and its wall time. Run it from two checkouts, interleaved
(PYTHONPATH=<checkout>), to compare their append paths.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from projector.config import fingerprint
from projector.events import parse_delivery
from projector.signature import SIGNATURE_HEADER, sign_body
from projector.storage.sqlite import log
from tests.bench.workload import body
from tests.support import KEY_BY_ENVIRONMENT


def deliveries(count: int) -> list[log.NewDelivery]:
    """The first `count` bench deliveries, parsed, as the receiver hands them to the log."""
    found = []
    for i in range(count):
        environment, raw = body(i)
        key = KEY_BY_ENVIRONMENT[environment]
        found.append(
            log.NewDelivery.verified(
                raw,
                parse_delivery(raw, environment),
                environment=environment,
                received_at="2026-07-01T12:00:00.123456Z",
                key_id=fingerprint(environment, key),
                signed_as="raw",
                headers={
                    "content-type": "application/json",
                    SIGNATURE_HEADER: sign_body(raw, key.encode()),
                },
            )
        )
    return found


def one_pass(batch: list[log.NewDelivery], size: int, work: Path) -> tuple[float, float]:
    """CPU and wall seconds to append `batch` in commits of `size` to a fresh log."""
    path = work / f"append-{time.monotonic_ns()}.sqlite3"
    conn = log.connect(path)
    log.migrate(conn)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(batch), size):
        log.append_batch(conn, batch[start : start + size])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    conn.close()
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = deliveries(args.deliveries)
    with tempfile.TemporaryDirectory(prefix="append-rate-") as work:
        passes = [one_pass(batch, args.batch, Path(work)) for _ in range(args.repeats)]
    cpu, wall = min(passes)
    print(
        f"log schema v{log.LOG_SCHEMA_VERSION}: {cpu / len(batch) * 1e6:.1f} us CPU and "
        f"{wall / len(batch) * 1e6:.1f} us wall per delivery (best of {args.repeats}, "
        f"{len(batch)} deliveries in commits of {args.batch})"
    )


if __name__ == "__main__":
    main()
