"""pgbench ceilings: the adapter's insert alone, no service, on the same PostgreSQL server.

A deliveries-shaped row with a ~600-byte body, in the service's own schema (its indexes and
triggers), sent as one statement per transaction, prepared. Two kinds:
unserialised: seqs from a sequence, no lock; any number of transactions commit at once.
serialised:   the adapter's transaction: lock log_head, insert after it, move it; so every
              transaction waits for the one before it, as the service's appends do.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from projector.integrity import HASHED_COLUMNS

BODY_BYTES = 600
CLIENTS = (1, 4, 16)
ROWS_PER_TRANSACTION = (1, 50)
KINDS = ("unserialised", "serialised")
# Far above any seq the serialised kind reaches: both kinds insert into one table.
UNSERIALISED_FROM = 10**12

_COLUMNS = ", ".join((*HASHED_COLUMNS, "row_hash"))


def _body() -> str:
    """A Refold-like JSON body of BODY_BYTES bytes, as a bytea literal."""
    text = (
        '{"linked_account_id":"acct_12345","org_id":"645270e37917442c4307297a",'
        '"environment":"live","type":"General","event":"Connection Created","slug":"hubspot",'
        '"createdAt":"Mon, 01 Jun 2026 05:42:56 GMT","payload":"'
    )
    text += "x" * (BODY_BYTES - len(text) - 2) + '"}'
    return "'\\x" + text.encode().hex() + "'::bytea"


def _insert(seqs: str) -> str:
    """INSERT of :rows rows, each seq `s` taken from the SQL query `seqs`."""
    return (
        # The headers, the key and the hash in their stored forms (projector.storage.compact).
        f"INSERT INTO deliveries ({_COLUMNS}) SELECT s, '2026-07-01T12:00:00Z', 'live',"
        " 'live:0123456789abcdef', 'raw', '\\x010102'::bytea, "
        f"{_body()}, 'Connection Created', 'connection', 'acct_' || s % 25000, 'hubspot',"
        " NULL, sha256(('ev_' || s)::bytea), '[]', NULL, decode(repeat('0', 64), 'hex')"
        f" FROM ({seqs}) AS g;"
    )


SCRIPTS = {
    "unserialised": (
        "BEGIN;\n"
        + _insert("SELECT nextval('bench_seq') AS s FROM generate_series(1, :rows)")
        + "\nEND;\n"
    ),
    "serialised": (
        "BEGIN;\n"
        "SELECT seq AS head FROM log_head FOR UPDATE \\gset\n"
        + _insert("SELECT :head::bigint + i AS s FROM generate_series(1, :rows) AS i")
        + "\nUPDATE log_head SET seq = :head::bigint + :rows, row_hash = repeat('1', 64);\n"
        "END;\n"
    ),
}


def prepare(conn: Any) -> None:
    """The sequence the unserialised kind takes its seqs from (on a psycopg connection)."""
    conn.execute(f"CREATE SEQUENCE IF NOT EXISTS bench_seq START {UNSERIALISED_FROM}")


def pgbench(url: str, kind: str, clients: int, rows: int, seconds: float) -> dict[str, float]:
    """One pgbench run: tx/s, rows/s, and latency p50/p99/mean from its per-transaction log."""
    with tempfile.TemporaryDirectory(prefix="projector-pgbench-") as work:
        script = Path(work) / f"{kind}.sql"
        script.write_text(SCRIPTS[kind])
        command = [
            "pgbench", "--no-vacuum", "--protocol=prepared", f"--file={script}",
            f"--client={clients}", "--jobs=1", f"--time={round(seconds)}", f"--define=rows={rows}",
            "--log", f"--log-prefix={work}/tx", url,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({kind}, {clients} clients): {done.stderr}")
        latencies = sorted(
            int(line.split()[2]) / 1000
            for log in Path(work).glob("tx.*")
            for line in log.read_text().splitlines()
        )
    tps = float(_field(done.stdout, r"tps = ([\d.]+)"))
    failed = int(_field(done.stdout, r"number of failed transactions: (\d+)"))
    return {
        "tx_rate": tps,
        "row_rate": tps * rows,
        "transactions": len(latencies),
        "failed": failed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_ms": sum(latencies) / len(latencies),
    }


def _field(output: str, pattern: str) -> str:
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"pgbench printed no {pattern!r}:\n{output}")
    return found.group(1)


def ceiling_round(url: str, seconds: float) -> dict[str, dict[str, float]]:
    """Every kind, rows per transaction and client count, once; named for the table."""
    out = {}
    for kind in KINDS:
        for rows in ROWS_PER_TRANSACTION:
            for clients in CLIENTS:
                name = f"pgbench_{kind}_{rows}row_{clients}c"
                out[name] = pgbench(url, kind, clients, rows, seconds)
    return out
