"""py-spy's raw stacks -> the service's components, by frame (file and function) rules.

A raw line is `thread (TID): NAME;outermost frame;...;innermost frame COUNT`, each frame
`function (path:line)`. The event-loop thread's stacks are attributed in two passes:
whole calls first (a sample inside `verify_signature` is the signature, whatever it calls),
then the innermost frame any rule names (a sample in aiohttp's parser is parsing, whatever
request it serves). The writer thread's by its innermost frame of our code.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

LOOP, WRITER, OTHER = "loop thread", "writer thread", "other threads"
LINE = re.compile(r"^thread \((\d+)\): ([^;]*);?(.*) (\d+)$")
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")

# (path part, function part or "" for any, component): calls attributed whole, on the loop
# thread; the innermost one in the stack wins.
LOOP_CALLS = (
    ("projector/signature.py", "", "signature (three keys)"),
    ("projector/events.py", "parse_delivery", "parse_delivery"),
    ("projector/json_body.py", "", "parse_delivery"),
    ("projector/http.py", "json_answer", "response encoding (pydantic)"),
    ("projector/receiver.py", "read_bounded_body", "body read (iter_chunked)"),
    ("projector/storage/rows.py", "", "rest of the handler"),  # NewDelivery.verified
    ("projector/storage/", "", "hand-off to the writer"),
)
# Then the innermost frame that one of these names.
LOOP_FRAMES = (
    ("aiohttp/streams.py", "", "body read (iter_chunked)"),
    ("aiohttp/web_protocol.py", "data_received", "aiohttp: parsing"),
    ("aiohttp/http_parser.py", "", "aiohttp: parsing"),
    ("aiohttp/web_request.py", "", "aiohttp: parsing"),
    ("aiohttp/web_protocol.py", "finish_response", "aiohttp: response write"),
    ("aiohttp/web_response.py", "", "aiohttp: response write"),
    ("aiohttp/http_writer.py", "", "aiohttp: response write"),
    ("aiohttp/", "", "aiohttp: dispatch"),
    ("projector/metrics.py", "", "aiohttp: middlewares (ours)"),
    ("projector/api.py", "", "aiohttp: middlewares (ours)"),
    ("projector/", "", "rest of the handler"),
    ("asyncio/", "", "aiohttp: loop"),
    ("uvloop/", "", "aiohttp: loop"),
)
WRITER_FRAMES = (
    ("projector/integrity.py", "", "hash"),
    ("projector/storage/rows.py", "", "row build"),
    ("projector/storage/sqlite/projection.py", "", "fold"),
    ("projector/storage/sqlite/tables.py", "", "fold"),
    ("projector/readmodels.py", "", "fold"),
    ("projector/fold/", "", "fold"),
    ("projector/events.py", "", "fold"),
    ("projector/storage/sqlite/log.py", "transaction", "commit"),
    ("projector/storage/sqlite/log.py", "", "insert"),
    ("projector/storage/sqlite/chain.py", "", "insert"),
    ("projector/storage/sqlite/writer.py", "", "writer loop"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, path) of each frame, outermost first."""
    out = []
    for text in stack.split(";") if stack else []:
        match = FRAME.match(text)
        out.append((match.group(1), match.group(2)) if match else (text, ""))
    return out


def _first(frames: Iterable[tuple[str, str]], rules: tuple[tuple[str, str, str], ...]) -> str:
    for function, path in frames:
        for part, name, component in rules:
            if part in path and name in function:
                return component
    return ""


def thread_of(name: str) -> str:
    if name == "MainThread":
        return LOOP
    return WRITER if name == "projector-writer" else OTHER


def component(thread: str, stack: str) -> str:
    """The component a sample of `thread`'s `stack` is charged to ("other" if no rule)."""
    innermost_first = list(reversed(_frames(stack)))
    if thread == LOOP:
        for i, (function, path) in enumerate(innermost_first):
            # pydantic called straight from the receiver: the 200's model, so its encoding.
            caller = innermost_first[i + 1][1] if i + 1 < len(innermost_first) else ""
            if "pydantic/" in path and "projector/receiver.py" in caller:
                return "response encoding (pydantic)"
            found = _first([(function, path)], LOOP_CALLS)
            if found:
                return found
        return _first(innermost_first, LOOP_FRAMES) or "other"
    if thread == WRITER:
        return _first(innermost_first, WRITER_FRAMES) or "other"
    return "other"


@dataclass
class Samples:
    """Sample counts by thread kind and component, and the OS thread ids seen per kind."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    tids: dict[str, set[int]] = field(default_factory=dict)

    def total(self, thread: str) -> int:
        return sum(self.counts.get(thread, Counter()).values())


def read_raw(path: Path) -> Samples:
    """Count py-spy's raw output (`--format raw --threads`) by thread kind and component."""
    samples = Samples()
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        tid, name, stack, count = match.groups()
        thread = thread_of(name)
        samples.tids.setdefault(thread, set()).add(int(tid))
        counts = samples.counts.setdefault(thread, Counter())
        counts[component(thread, stack)] += int(count)
    return samples
