"""The scan ceiling: read the whole log with sqlite3, parse each body, fold into a dict.

No read-model writes, no validation, no chunking: the fastest a rebuild could possibly go.
Bodies are parsed with `orjson.loads` (issue 13's ceiling); `--parser json` uses the
standard library's `json.loads` instead, for context.
python -m tests.bench.scan DB [--parser orjson|json]
  -> one JSON line: deliveries, seconds, rate, keys, cpu_seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import sys
import time
from collections.abc import Callable

import orjson

PARSERS: dict[str, Callable[[bytes], object]] = {"orjson": orjson.loads, "json": json.loads}


def scan(path: str, parser: str = "orjson") -> dict[str, float]:
    loads = PARSERS[parser]
    start = time.perf_counter()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    latest: dict[tuple[object, ...], object] = {}
    count = 0
    for environment, body in conn.execute("SELECT environment, body FROM deliveries ORDER BY seq"):
        count += 1
        try:
            payload = loads(body)
        except ValueError:  # orjson.JSONDecodeError is a ValueError too
            continue
        if isinstance(payload, dict):
            thing = payload.get("slug") or payload.get("instance_id")
            latest[(environment, payload.get("linked_account_id"), thing)] = payload.get("event")
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "deliveries": count,
        "seconds": seconds,
        "rate": count / seconds,
        "keys": len(latest),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db")
    parser.add_argument("--parser", choices=tuple(PARSERS), default="orjson")
    args = parser.parse_args(argv)
    print(json.dumps(scan(args.db, args.parser)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
