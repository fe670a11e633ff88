"""The CPU table's frame rules (tests/bench/cpu_components.py) on stacks as py-spy writes them."""

from __future__ import annotations

from pathlib import Path

from tests.bench.cpu_components import LOOP, OTHER, WRITER, component, read_raw

ROOT = (
    "_run_module_as_main (<frozen runpy>:198);<module> (projector/cli.py:290);"
    "run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)"
)
REQUEST = (
    ROOT + ";RequestHandler._handle_request (aiohttp/web_protocol.py:577);"
    "Application._handle (aiohttp/web_app.py:563);"
    "observe_requests.<locals>.middleware (projector/metrics.py:201);"
    "bearer_auth.<locals>.middleware (projector/api.py:292)"
)
RECEIVE = REQUEST + ";make_receiver.<locals>._receive (projector/receiver.py:155)"
WRITER_ROOT = (
    "Thread._bootstrap (threading.py:1002)"
    ";WriteLane._serve (projector/storage/sqlite/writer.py:143)"
    ";WriteLane._append (projector/storage/sqlite/writer.py:203)"
    ";append_rows (projector/storage/sqlite/log.py:267)"
)


def test_a_whole_call_is_charged_to_its_component_whatever_it_calls() -> None:
    inside_parse = RECEIVE + (
        ";parse_delivery (projector/events.py:196);_workflow (projector/events.py:352)"
        ";canonical (projector/json_body.py:31);JSONEncoder.encode (json/encoder.py:200)"
    )
    assert component(LOOP, inside_parse) == "parse_delivery"
    signing = RECEIVE + ";verify_signature (projector/signature.py:80);_digest (hmac.py:10)"
    assert component(LOOP, signing) == "signature (three keys)"
    encoding = (
        RECEIVE
        + ";json_answer (projector/http.py:26);Response.__init__ (aiohttp/web_response.py:1)"
    )
    assert component(LOOP, encoding) == "response encoding (pydantic)"


def test_pydantic_is_the_answer_only_when_the_receiver_calls_it() -> None:
    answer = RECEIVE + ";BaseModel.model_construct (pydantic/main.py:356)"
    assert component(LOOP, answer) == "response encoding (pydantic)"
    in_parse = RECEIVE + (
        ";parse_delivery (projector/events.py:196);BaseModel.model_validate (pydantic/main.py:1)"
    )
    assert component(LOOP, in_parse) == "parse_delivery"


def test_otherwise_the_innermost_named_frame_decides() -> None:
    assert component(LOOP, REQUEST) == "aiohttp: middlewares (ours)"
    assert component(LOOP, RECEIVE) == "rest of the handler"
    write = REQUEST + ";StreamWriter.write_eof (aiohttp/http_writer.py:1)"
    assert component(LOOP, write) == "aiohttp: response write"
    parsing = ROOT + ";RequestHandler.data_received (aiohttp/web_protocol.py:1)"
    assert component(LOOP, parsing) == "aiohttp: parsing"
    assert component(LOOP, ROOT) == "aiohttp: loop"
    assert component(LOOP, "") == "other"


def test_writer_frames() -> None:
    hashing = WRITER_ROOT + (
        ";number_batch (projector/storage/rows.py:168);row_hash (projector/integrity.py:50)"
    )
    assert component(WRITER, hashing) == "hash"
    numbering = WRITER_ROOT + ";number_batch (projector/storage/rows.py:168)"
    assert component(WRITER, numbering) == "row build"
    assert component(WRITER, WRITER_ROOT) == "insert"
    commit = WRITER_ROOT + ";transaction (projector/storage/sqlite/log.py:90)"
    assert component(WRITER, commit) == "commit"
    fold = WRITER_ROOT + ";apply (projector/storage/sqlite/tables.py:40)"
    assert component(WRITER, fold) == "fold"


def test_read_raw_counts_by_thread_and_component(tmp_path: Path) -> None:
    raw = tmp_path / "py-spy.raw"
    raw.write_text(
        f"thread (10): MainThread;{RECEIVE} 3\n"
        f"thread (10): MainThread;{ROOT} 2\n"
        f"thread (11): projector-writer;{WRITER_ROOT} 4\n"
        "thread (12): Thread-1 (_connection_worker_thread);Thread.run (threading.py:982) 1\n"
        "py-spy> not a sample line\n"
    )
    samples = read_raw(raw)
    assert samples.counts[LOOP] == {"rest of the handler": 3, "aiohttp: loop": 2}
    assert samples.counts[WRITER] == {"insert": 4}
    assert samples.total(OTHER) == 1
    assert samples.tids == {LOOP: {10}, WRITER: {11}, OTHER: {12}}
