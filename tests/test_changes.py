"""GET /v1/changes on a real server: events, ids, filters, replay, heartbeats, limits, shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from projector.app import build_app
from projector.changes import STREAM_SOCKET_BUFFER
from projector.config import load_settings
from projector.storage.queries import SqlReads
from tests.changes_support import (
    RawStream,
    connection_body,
    deliver,
    get_body,
    open_stream,
    run_body,
)
from tests.support import AUTH, READ_TOKEN, SIGNING_KEYS, TEST_KEY, Service

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(aiohttp_server: Any, db_path: Path) -> Serve:  # type: ignore[misc]
    """Start the whole app on 127.0.0.1 with these settings; returns its URL."""

    async def start(**overrides: Any) -> str:
        settings = load_settings(
            db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN, **overrides
        )
        server: TestServer = await aiohttp_server(build_app(settings))
        return str(server.make_url("")).rstrip("/")

    return start


async def test_each_folded_delivery_is_sent_as_the_answer_get_gives_with_its_seq_as_id(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    stream = await open_stream(http, url)
    expired = await deliver(http, url, connection_body("acct_1"))
    completed = await deliver(http, url, run_body("run_1", "acct_1"))

    first, second = await stream.next_event(), await stream.next_event()

    assert (first.fields["id"], first.fields["event"]) == (str(expired), "connection")
    banner = await get_body(http, f"{url}/v1/accounts/acct_1/connections")
    assert first.fields["data"].encode() == banner
    assert json.loads(banner)["needs_reconnect"] is True
    assert (second.fields["id"], second.fields["event"]) == (str(completed), "workflow_run")
    run = json.loads(await get_body(http, f"{url}/v1/workflow-runs/run_1"))
    del run["deliveries"], run["next_cursor"]  # the stream carries the run's summary
    assert json.loads(second.fields["data"]) == run
    assert run["status"] == "completed"


async def test_a_stream_opened_without_last_event_id_starts_after_what_is_folded(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    before = await deliver(http, url, connection_body("acct_1"))
    response = await http.get(f"{url}/v1/changes", headers=AUTH)
    stream = RawStream(response)
    opening = await stream.next_block()
    assert opening is not None
    assert opening.fields == {"id": str(before)}
    after = await deliver(http, url, connection_body("acct_2"))
    assert (await stream.next_event()).fields["id"] == str(after)


async def test_linked_account_id_and_environment_select_the_events_sent(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    mine = await open_stream(http, url, "?linked_account_id=acct_me")
    in_test = await open_stream(http, url, "?environment=test")
    await deliver(http, url, connection_body("acct_other"))
    banner = await deliver(http, url, connection_body("acct_me"))
    await deliver(http, url, run_body("run_other", "acct_other"))
    run = await deliver(http, url, run_body("run_me", "acct_me"))
    test_body = connection_body("acct_me", environment="test")
    test_banner = await deliver(http, url, test_body, key=TEST_KEY)
    last = await deliver(http, url, connection_body("acct_me", slug="slack"))

    events = [await mine.next_event() for _ in range(3)]
    assert [e.fields["id"] for e in events] == [str(banner), str(run), str(last)]
    assert [json.loads(e.fields["data"])["linked_account_id"] for e in events] == ["acct_me"] * 3
    first_test = await in_test.next_event()
    assert (first_test.fields["id"], first_test.fields["event"]) == (str(test_banner), "connection")
    assert json.loads(first_test.fields["data"])["environment"] == "test"


async def test_reconnecting_with_last_event_id_replays_exactly_the_missed_changes(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    first = await open_stream(http, url)
    seen = await deliver(http, url, connection_body("acct_1"))
    assert (await first.next_event()).fields["id"] == str(seen)
    first.response.close()  # the client drops; these arrive while it is away
    missed = [
        await deliver(http, url, run_body("run_1", "acct_1")),
        await deliver(http, url, connection_body("acct_2", event="Connection Created")),
        await deliver(http, url, connection_body("acct_1", slug="slack")),
    ]

    again = await open_stream(http, url, headers={"Last-Event-ID": str(seen)})
    marker = await deliver(http, url, connection_body("acct_marker"))

    ids = [int((await again.next_event()).fields["id"]) for _ in range(len(missed) + 1)]
    assert ids == [*missed, marker]  # none lost, none repeated, the live one after them


async def test_replay_sends_each_change_with_the_answer_as_it_is_now(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    created = connection_body("acct_1", event="Connection Created", created="Mon, 01 Jun 2026")
    first = await deliver(
        http, url, created.replace(b"Mon, 01 Jun 2026", b"Mon, 01 Jun 2026 08:00:00 GMT")
    )
    second = await deliver(http, url, connection_body("acct_1"))

    stream = await open_stream(http, url, headers={"Last-Event-ID": "0"})

    events = [await stream.next_event(), await stream.next_event()]
    assert [e.fields["id"] for e in events] == [str(first), str(second)]
    now = (await get_body(http, f"{url}/v1/accounts/acct_1/connections")).decode()
    assert [e.fields["data"] for e in events] == [now, now]
    assert json.loads(now)["needs_reconnect"] is True


async def test_a_duplicate_delivery_gives_an_event_identical_to_its_first_copy(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve()
    stream = await open_stream(http, url)
    body = connection_body("acct_1")
    original, duplicate = await deliver(http, url, body), await deliver(http, url, body)

    first, second = await stream.next_event(), await stream.next_event()

    assert (first.fields["id"], second.fields["id"]) == (str(original), str(duplicate))
    assert first.fields["event"] == second.fields["event"] == "connection"
    assert first.fields["data"] == second.fields["data"]


async def test_flagged_deliveries_give_no_event(serve: Serve, http: aiohttp.ClientSession) -> None:
    url = await serve()
    stream = await open_stream(http, url)
    no_slug = json.loads(connection_body("acct_1"))
    del no_slug["slug"]
    await deliver(http, url, json.dumps(no_slug).encode())
    await deliver(http, url, b"not json")
    clean = await deliver(http, url, connection_body("acct_2"))

    assert (await stream.next_event()).fields["id"] == str(clean)


async def test_an_idle_stream_sends_a_heartbeat_comment_every_interval(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve(stream_heartbeat_seconds=0.05)
    stream = await open_stream(http, url)
    for _ in range(3):
        block = await stream.next_block()
        assert block is not None
        assert (block.fields, block.comments) == ({}, ["heartbeat"])


async def test_a_stream_beyond_max_streams_gets_503_with_retry_after_until_one_closes(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve(max_streams=1, stream_heartbeat_seconds=0.05)
    first = await open_stream(http, url)

    async with http.get(f"{url}/v1/changes", headers=AUTH) as refused:
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "5"
        error = (await refused.json())["error"]
        assert error["code"] == "too_many_streams"
        assert "PROJECTOR_MAX_STREAMS" in error["message"]

    first.response.close()
    # The server sees the stream gone at its next heartbeat at the latest: bounded wait.
    async with asyncio.timeout(10):
        while True:
            async with http.get(f"{url}/v1/changes", headers=AUTH) as answer:
                if answer.status == 200:
                    break
                assert answer.status == 503
            await asyncio.sleep(0.05)


async def test_a_client_that_stops_reading_is_cut_off_with_its_position_and_memory_bounded(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    url = await serve(max_streams=1, stream_write_timeout_seconds=0.3)
    # One account with many apps: its banner is large, and replay sends it once per change.
    seqs = [
        await deliver(http, url, connection_body("acct_big", slug=f"app{n:03}")) for n in range(80)
    ]
    banner = await get_body(http, f"{url}/v1/accounts/acct_big/connections")
    everything = len(seqs) * len(banner)
    assert everything > 8 * STREAM_SOCKET_BUFFER  # far more than a stream may hold

    host, port = url.removeprefix("http://").split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
    reader.connect((host, int(port)))
    token = AUTH["Authorization"]
    request = (
        f"GET /v1/changes HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nLast-Event-ID: 0\r\n\r\n"
    )
    reader.sendall(request.encode())
    try:
        opening = await asyncio.to_thread(read_until, reader, b"\nid: 0\n")
        assert opening.startswith(b"HTTP/1.1 200 OK\r\n")
        # Its stream is cut off when a write cannot drain: the only slot frees up.
        async with asyncio.timeout(20):
            while True:
                async with http.get(f"{url}/v1/changes", headers=AUTH) as answer:
                    if answer.status == 200:
                        break
                await asyncio.sleep(0.1)
        received = await asyncio.to_thread(read_until_closed, reader)
    finally:
        reader.close()

    assert len(received) < everything / 2  # what was queued for it stayed bounded
    head, _, tail = received.rpartition(b": cut off: this client read too slowly; ")
    assert head, received[-300:]
    last_id = head.rsplit(b"\nid: ", 1)[-1].split(b"\n", 1)[0]
    assert tail.startswith(b"resume with Last-Event-ID: " + last_id + b"\nid: " + last_id)
    assert int(last_id) in seqs


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What the server sends up to and including `end` (bounded by a timeout)."""
    sock.settimeout(10)
    received = b""
    while end not in received:
        chunk = sock.recv(1)  # one byte at a time: nothing past `end` is read
        assert chunk, received
        received += chunk
    return received


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by a timeout)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    ("query", "headers", "status", "code"),
    [
        ("", {}, 401, "unauthorised"),
        ("?environment=staging", AUTH, 400, "invalid_environment"),
        ("?account=1", AUTH, 400, "unknown_parameter"),
        ("", {**AUTH, "Last-Event-ID": "twelve"}, 400, "invalid_last_event_id"),
        ("", {**AUTH, "Last-Event-ID": "999"}, 400, "invalid_last_event_id"),
    ],
)
async def test_a_wrong_request_is_refused_with_the_json_error_shape(
    serve: Serve,
    http: aiohttp.ClientSession,
    query: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    url = await serve()
    async with http.get(f"{url}/v1/changes{query}", headers=headers) as answer:
        assert answer.status == status
        assert (await answer.json())["error"]["code"] == code


async def test_server_shutdown_ends_each_stream_with_its_position(
    aiohttp_server: Any, db_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = load_settings(db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)
    server: TestServer = await aiohttp_server(build_app(settings))
    url = str(server.make_url("")).rstrip("/")
    stream = await open_stream(http, url)
    seq = await deliver(http, url, connection_body("acct_1"))
    assert (await stream.next_event()).fields["id"] == str(seq)

    closing = asyncio.create_task(server.close())
    goodbye = await stream.next_block()
    assert goodbye is not None
    assert goodbye.fields == {"id": str(seq)}
    assert goodbye.comments == [f"the server is shutting down; resume with Last-Event-ID: {seq}"]
    assert await stream.next_block() is None
    async with asyncio.timeout(20):
        await closing


@pytest.mark.e2e
async def test_sigterm_ends_open_streams_with_their_position_and_exits_0(
    service: Service, http: aiohttp.ClientSession
) -> None:
    stream = await open_stream(http, service.url)
    seq = await deliver(http, service.url, connection_body("acct_1"))
    assert (await stream.next_event()).fields["id"] == str(seq)

    exit_code = asyncio.create_task(asyncio.to_thread(service.stop))
    goodbye = await stream.next_block()
    assert goodbye is not None
    assert goodbye.fields == {"id": str(seq)}
    assert await exit_code == 0


async def test_a_failure_while_streaming_ends_the_stream_with_its_position(
    serve: Serve, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve()
    stream = await open_stream(http, url)
    banner = await deliver(http, url, connection_body("acct_1"))
    assert (await stream.next_event()).fields["id"] == str(banner)

    async def unreadable(*args: object) -> None:  # a fault SQLite cannot be made to give
        raise RuntimeError("the run could not be read")

    monkeypatch.setattr(SqlReads, "run_summary", unreadable)
    await deliver(http, url, run_body("run_1", "acct_1"))

    goodbye = await stream.next_block()
    assert goodbye is not None
    assert goodbye.fields == {"id": str(banner)}
    assert goodbye.comments == [
        f"an unexpected error, logged by the server; resume with Last-Event-ID: {banner}"
    ]
    assert await stream.next_block() is None
