"""CPU per body of the JSON read and the parses, with the orjson fast path and without it.

python -m tests.bench.parse_rate [--bodies 5000] [--repeats 15]
The bench workload's bodies; each figure is the best of `repeats` interleaved passes (the
least disturbed by other work on the machine), in microseconds per body.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import orjson

from projector import json_body
from projector.events import parse_change, parse_delivery
from tests.bench.workload import body

Step = Callable[[bytes, str], Any]
STEPS: dict[str, Step] = {
    "orjson.loads": lambda b, _: orjson.loads(b),
    "load_json_object": lambda b, _: json_body.load_json_object(b),
    "parse_change": parse_change,
    "parse_delivery": parse_delivery,
}


def _declines(raw: bytes) -> None:
    return None


def one_pass(step: Step, bodies: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    for environment, raw in bodies:
        step(raw, environment)
    return (time.perf_counter() - start) / len(bodies) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bodies", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    bodies = [body(i) for i in range(args.bodies)]
    taken = sum(json_body.fast_json_object(raw) is not None for _, raw in bodies)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, step in STEPS.items():
            for path in ("fast", "strict"):
                if name == "orjson.loads" and path == "strict":
                    continue
                # Strict: the fast path declines every body, as before it existed (a plain
                # function: a Mock would add microseconds of its own to every call).
                declined = mock.patch.object(json_body, "fast_json_object", new=_declines)
                with declined if path == "strict" else mock.patch.dict({}):
                    figure = one_pass(step, bodies)
                key = f"{name} {path}"
                best[key] = min(best.get(key, figure), figure)
    for key, figure in best.items():
        print(f"{key:28} {figure:8.2f} us/body")
    print(json.dumps({"fast_path_taken": taken / len(bodies), **best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
