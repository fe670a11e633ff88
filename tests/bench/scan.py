"""The scan ceiling: read the whole log with sqlite3, parse each body, fold into a dict.

No read-model writes, no validation, no chunking: the fastest a rebuild could possibly go.
python -m tests.bench.scan DB  -> one JSON line: deliveries, seconds, rate, keys
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time


def scan(path: str) -> dict[str, float]:
    start = time.perf_counter()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    latest: dict[tuple[object, ...], object] = {}
    count = 0
    for environment, body in conn.execute("SELECT environment, body FROM deliveries ORDER BY seq"):
        count += 1
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if isinstance(payload, dict):
            thing = payload.get("slug") or payload.get("instance_id")
            latest[(environment, payload.get("linked_account_id"), thing)] = payload.get("event")
    seconds = time.perf_counter() - start
    return {"deliveries": count, "seconds": seconds, "rate": count / seconds, "keys": len(latest)}


if __name__ == "__main__":
    print(json.dumps(scan(sys.argv[1])))
