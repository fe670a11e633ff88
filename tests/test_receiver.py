"""POST /webhooks/refold on the whole app: signatures, limits, flags, and the error shape."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import ClientResponse, ClientSession, StreamReader, web
from aiohttp.test_utils import TestClient, make_mocked_request
from multidict import CIMultiDict
from structlog.testing import capture_logs

from projector.app import build_app
from projector.config import fingerprint, load_settings
from projector.http import ApiError, Handler
from projector.receiver import read_bounded_body
from projector.signature import SIGNATURE_HEADER, sign_body
from tests.support import (
    AUTH,
    LIVE_KEY,
    LIVE_OLD_KEY,
    READ_TOKEN,
    SIGNING_KEYS,
    TEST_KEY,
    signed,
    wait_projected,
)

WEBHOOK = "/webhooks/refold"
SMALL_LIMIT = 2048


def connection_body(
    account: str = "12345",
    environment: str = "live",
    event: str = "Connection Expired",
    **changes: Any,
) -> bytes:
    """A connection delivery as Refold documents it, compact JSON."""
    payload = {
        "linked_account_id": account,
        "org_id": "645270e37917442c4307297a",
        "environment": environment,
        "type": "General",
        "event": event,
        "slug": "pipedrive",
        "createdAt": "Tue, 07 Nov 2023 08:38:33 GMT",
        **changes,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return json.dumps(payload, separators=(",", ":")).encode()


BODY = connection_body()


async def assert_error(answer: ClientResponse, status: int, code: str) -> None:
    """The answer is `status` with the one error shape {"error": {"code", "message"}}."""
    assert answer.status == status
    assert answer.content_type == "application/json"
    document = await answer.json()
    assert set(document) == {"error"}
    assert set(document["error"]) == {"code", "message"}
    assert document["error"]["code"] == code
    assert isinstance(document["error"]["message"], str)
    assert document["error"]["message"]


async def log_head(client: TestClient) -> int:
    answer = await client.get("/v1/projections", headers=AUTH)
    assert answer.status == 200
    return int((await answer.json())["log_head"])


async def audit_event(client: TestClient, seq: int, environment: str = "live") -> dict[str, Any]:
    answer = await client.get(f"/v1/events/{seq}?environment={environment}", headers=AUTH)
    assert answer.status == 200
    return dict(await answer.json())


@pytest.fixture
async def small_client(aiohttp_client, db_path: Path) -> TestClient:  # type: ignore[no-untyped-def]
    """The whole app with a 2 KiB body limit."""
    settings = load_settings(
        db=db_path,
        signing_keys=SIGNING_KEYS,
        read_tokens=READ_TOKEN,
        max_body_bytes=SMALL_LIMIT,
    )
    return await aiohttp_client(build_app(settings))


# --- accepted deliveries ----------------------------------------------------------------


async def test_signed_connection_delivery_answers_200_with_seq_1_live_not_duplicate(
    client: TestClient,
) -> None:
    answer = await client.post(WEBHOOK, data=BODY, headers=signed(BODY))
    assert answer.status == 200
    assert await answer.json() == {"seq": 1, "environment": "live", "duplicate": False, "flags": []}


async def test_same_bytes_again_are_stored_as_duplicate_with_the_next_seq(
    client: TestClient,
) -> None:
    await client.post(WEBHOOK, data=BODY, headers=signed(BODY))
    answer = await client.post(WEBHOOK, data=BODY, headers=signed(BODY))
    assert answer.status == 200
    assert await answer.json() == {"seq": 2, "environment": "live", "duplicate": True, "flags": []}
    assert (await audit_event(client, 2))["duplicate_of"] == 1


async def test_delivery_signed_with_the_test_key_is_in_the_test_environment(
    client: TestClient,
) -> None:
    body = connection_body(environment="test")
    answer = await client.post(WEBHOOK, data=body, headers=signed(body, TEST_KEY))
    assert answer.status == 200
    assert await answer.json() == {"seq": 1, "environment": "test", "duplicate": False, "flags": []}


async def test_old_rotated_live_key_is_accepted_and_recorded_as_the_key_that_matched(
    client: TestClient,
) -> None:
    answer = await client.post(WEBHOOK, data=BODY, headers=signed(BODY, LIVE_OLD_KEY))
    assert answer.status == 200
    assert await answer.json() == {"seq": 1, "environment": "live", "duplicate": False, "flags": []}
    detail = await audit_event(client, 1)
    assert detail["key_id"] == fingerprint("live", LIVE_OLD_KEY)
    assert detail["key_id"] != fingerprint("live", LIVE_KEY)
    assert LIVE_OLD_KEY not in json.dumps(detail)


async def test_upper_case_hex_of_a_valid_signature_is_accepted(client: TestClient) -> None:
    upper = sign_body(BODY, LIVE_KEY.encode()).upper()
    answer = await client.post(WEBHOOK, data=BODY, headers={SIGNATURE_HEADER: upper})
    assert answer.status == 200
    assert await answer.json() == {"seq": 1, "environment": "live", "duplicate": False, "flags": []}


async def test_accepted_delivery_keeps_its_exact_bytes(client: TestClient) -> None:
    body = b'{"event":"Connection Created", "linked_account_id":"12345","slug":"x",\n' + (
        b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT","environment":"live"}'
    )
    answer = await client.post(WEBHOOK, data=body, headers=signed(body))
    assert answer.status == 200
    detail = await audit_event(client, 1)
    assert base64.b64decode(detail["body_base64"]) == body
    assert detail["signed_as"] == "raw"


async def test_body_signed_over_its_compact_json_form_is_accepted_and_recorded_as_compact(
    client: TestClient,
) -> None:
    spaced = json.dumps(json.loads(BODY), indent=1).encode()
    compact = json.dumps(json.loads(spaced), separators=(",", ":"), ensure_ascii=False).encode()
    assert spaced != compact
    answer = await client.post(WEBHOOK, data=spaced, headers=signed(compact))
    assert answer.status == 200
    detail = await audit_event(client, 1)
    assert detail["signed_as"] == "compact"
    assert base64.b64decode(detail["body_base64"]) == spaced


async def test_same_connection_event_with_reordered_fields_is_a_duplicate(
    client: TestClient,
) -> None:
    reordered = json.dumps(dict(reversed(json.loads(BODY).items()))).encode()
    await client.post(WEBHOOK, data=BODY, headers=signed(BODY))
    answer = await client.post(WEBHOOK, data=reordered, headers=signed(reordered))
    assert await answer.json() == {"seq": 2, "environment": "live", "duplicate": True, "flags": []}


async def test_second_failure_of_a_run_with_new_attempt_count_is_not_a_duplicate(
    client: TestClient,
) -> None:
    seqs = []
    for attempt in (1, 2, 2):
        body = json.dumps(
            {
                "linked_account_id": "dev",
                "instance_id": "67d22c4330d75f3a3fa29056",
                "workflow_id": "67af37ad1d0bb61005439eaf",
                "event": "Workflow Errored",
                "workflow_name": "Get Response",
                "status": "ERRORED",
                "environment": "live",
                "attempts": attempt,
            }
        ).encode()
        answer = await client.post(WEBHOOK, data=body, headers=signed(body))
        seqs.append(await answer.json())
    assert [a["duplicate"] for a in seqs] == [False, False, True]


async def test_payload_naming_production_under_the_live_key_is_not_flagged(
    client: TestClient,
) -> None:
    body = connection_body(environment="production")
    answer = await client.post(WEBHOOK, data=body, headers=signed(body))
    assert answer.status == 200
    assert (await audit_event(client, 1))["flags"] == []
    await wait_projected(client)
    banner = await client.get("/v1/accounts/12345/connections", headers=AUTH)
    assert (await banner.json())["needs_reconnect"] is True


# --- refused signatures -----------------------------------------------------------------

VALID = sign_body(BODY, LIVE_KEY.encode())
BAD_SIGNATURES: dict[str, CIMultiDict[str]] = {
    "missing header": CIMultiDict(),
    "empty header": CIMultiDict({SIGNATURE_HEADER: ""}),
    "blank header": CIMultiDict({SIGNATURE_HEADER: "   "}),
    "wrong key": CIMultiDict({SIGNATURE_HEADER: sign_body(BODY, b"pk_not_a_configured_key")}),
    "signature of other bytes": CIMultiDict(
        {SIGNATURE_HEADER: sign_body(BODY + b"\n", LIVE_KEY.encode())}
    ),
    "non-hex": CIMultiDict({SIGNATURE_HEADER: "z" * 64}),
    "odd length": CIMultiDict({SIGNATURE_HEADER: VALID[:-1]}),
    "too long": CIMultiDict({SIGNATURE_HEADER: VALID + "0"}),
    "sha256= prefix": CIMultiDict({SIGNATURE_HEADER: "sha256=" + VALID}),
    "two headers": CIMultiDict([(SIGNATURE_HEADER, VALID), (SIGNATURE_HEADER, VALID)]),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
async def test_bad_signature_is_refused_401_invalid_signature_and_nothing_is_stored(
    client: TestClient, case: str
) -> None:
    headers = CIMultiDict(BAD_SIGNATURES[case])
    headers["Content-Type"] = "application/json"
    answer = await client.post(WEBHOOK, data=BODY, headers=headers)
    await assert_error(answer, 401, "invalid_signature")
    assert await log_head(client) == 0


async def test_non_ascii_signature_header_is_a_plain_401(client: TestClient) -> None:
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\nConnection: close\r\n"
    ).encode()
    signature = f"{SIGNATURE_HEADER}: ".encode() + "é".encode() * 32 + b"\r\n\r\n"
    assert client.server.host == "127.0.0.1"
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + signature + BODY)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.split()[1] == b"401"
    document = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert document["error"]["code"] == "invalid_signature"
    assert await log_head(client) == 0


async def test_a_body_cut_off_by_a_hang_up_is_400_incomplete_body_not_an_unexpected_error() -> None:
    """aiohttp's test server cancels the handler on a hang-up; `projector serve` does not, and
    the body read then raises ConnectionResetError, as this request's payload does."""
    payload = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(BODY[:10])
    payload.set_exception(ConnectionResetError("Connection lost"))
    request = make_mocked_request("POST", WEBHOOK, payload=payload)
    with capture_logs() as logged, pytest.raises(ApiError) as refused:
        await read_bounded_body(request, SMALL_LIMIT)
    assert (refused.value.status, refused.value.code) == (400, "incomplete_body")
    assert logged == []  # the receiver logs it, once, as it logs every refusal


async def test_a_user_agent_byte_that_is_not_utf8_is_kept_visibly_and_readable_back(
    client: TestClient,
) -> None:
    """aiohttp hands a \\xff header byte over as a lone surrogate: no JSON answer can hold it."""
    head = (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(BODY)}\r\n"
        f"{SIGNATURE_HEADER}: {sign_body(BODY, LIVE_KEY.encode())}\r\nConnection: close\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + b"User-Agent: Refold \xff\r\n\r\n" + BODY)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert raw.split(b"\r\n", 1)[0].split()[1] == b"200"
    assert (await audit_event(client, 1))["headers"]["user-agent"] == "Refold \\xff"


# --- refused bodies ---------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid connection delivery padded with an extra field to exactly `size` bytes."""
    empty = connection_body(padding="")
    return connection_body(padding="x" * (size - len(empty)))


async def test_body_of_exactly_the_limit_is_accepted(small_client: TestClient) -> None:
    body = padded_body(SMALL_LIMIT)
    assert len(body) == SMALL_LIMIT
    answer = await small_client.post(WEBHOOK, data=body, headers=signed(body))
    assert answer.status == 200


async def test_body_over_the_limit_with_content_length_is_refused_413(
    small_client: TestClient,
) -> None:
    body = padded_body(SMALL_LIMIT + 1)
    answer = await small_client.post(WEBHOOK, data=body, headers=signed(body))
    await assert_error(answer, 413, "body_too_large")
    assert await log_head(small_client) == 0


async def test_chunked_body_over_the_limit_is_refused_413(small_client: TestClient) -> None:
    body = padded_body(SMALL_LIMIT * 3)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    answer = await small_client.post(WEBHOOK, data=chunks(), headers=signed(body))
    assert answer.request_info.headers.get("Transfer-Encoding") == "chunked"
    await assert_error(answer, 413, "body_too_large")
    assert await log_head(small_client) == 0


async def test_gzip_content_encoding_is_refused_415(client: TestClient) -> None:
    compressed = gzip.compress(BODY)
    headers = {**signed(compressed), "Content-Encoding": "gzip"}
    answer = await client.post(WEBHOOK, data=compressed, headers=headers)
    await assert_error(answer, 415, "unsupported_encoding")
    assert await log_head(client) == 0


async def test_get_on_the_webhook_is_a_json_405(client: TestClient) -> None:
    answer = await client.get(WEBHOOK)
    await assert_error(answer, 405, "method_not_allowed")


async def test_405_on_the_webhook_names_the_allowed_method(client: TestClient) -> None:
    """RFC 9110 section 15.5.6: a 405 must carry an Allow header."""
    answer = await client.get(WEBHOOK)
    assert answer.status == 405
    assert "POST" in answer.headers.get("Allow", "")


async def test_unknown_path_is_a_json_404(client: TestClient) -> None:
    answer = await client.post("/webhooks/other", data=BODY, headers=signed(BODY))
    await assert_error(answer, 404, "not_found")


# --- stored but flagged -----------------------------------------------------------------

FLAGGED = {
    "not_json": b'{"linked_account_id":"flagged","event":"Connection Created"',
    "unknown_event": connection_body(account="flagged", event="Connection Refreshed"),
    "missing_field:slug": connection_body(account="flagged", slug=None),
    "environment_mismatch": connection_body(account="flagged", environment="test"),
}


@pytest.mark.parametrize("flag", sorted(FLAGGED))
async def test_signed_but_unusable_body_is_stored_flagged_and_kept_out_of_read_models(
    client: TestClient, flag: str
) -> None:
    body = FLAGGED[flag]
    answer = await client.post(WEBHOOK, data=body, headers=signed(body))
    assert answer.status == 200
    # The sender sees at once that it was stored but flagged, and why.
    assert await answer.json() == {
        "seq": 1,
        "environment": "live",
        "duplicate": False,
        "flags": [flag],
    }

    detail = await audit_event(client, 1)
    assert detail["flags"] == [flag]
    assert base64.b64decode(detail["body_base64"]) == body
    if flag == "not_json":
        assert detail["flags"] == ["not_json"]
        assert detail["payload"] is None
    else:
        assert detail["payload"] == json.loads(body)

    await wait_projected(client)
    for environment in ("live", "test"):
        banner = await client.get(
            f"/v1/accounts/flagged/connections?environment={environment}", headers=AUTH
        )
        assert (await banner.json())["connections"] == []
        listed = await client.get(f"/v1/connections?environment={environment}", headers=AUTH)
        assert (await listed.json())["connections"] == []


async def test_deliveries_beyond_max_pending_get_503_before_their_body_is_read(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A slow body holds its slot: the next request is refused at once, body unread."""
    settings = load_settings(
        db=tmp_path / "p.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN, max_pending=1
    )
    app = build_app(settings)
    receiving = asyncio.Event()

    @web.middleware
    async def note_receiving(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Set before the receiver runs; this test goes on only once the receiver is waiting
        # for the rest of the body, so the slot is taken by then.
        receiving.set()
        return await handler(request)

    app.middlewares.append(note_receiving)
    client: TestClient = await aiohttp_client(app)
    body = connection_body("acct_slow")
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:10]
        await release.wait()  # the first delivery is in progress until released
        yield body[10:]

    first = asyncio.create_task(
        client.post("/webhooks/refold", data=slow_body(), headers=signed(body))
    )
    await asyncio.wait_for(receiving.wait(), 10)
    second_body = connection_body("acct_refused")
    refused = await client.post("/webhooks/refold", data=second_body, headers=signed(second_body))
    assert not first.done()  # the first delivery still holds its slot
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    assert (await refused.json())["error"]["code"] == "overloaded"
    release.set()
    assert (await first).status == 200
    after = await client.post("/webhooks/refold", data=second_body, headers=signed(second_body))
    assert after.status == 200  # the slot is free again once the first was answered


# --- every refusal is logged once, without secrets ------------------------------------------

# Text that must never reach a log line: the keys, the read token, and the body's own words.
BODY_MARKER = "acct-body-marker-5c1e"
LOGGED_BODY = connection_body(BODY_MARKER)
NEVER_LOGGED = (LIVE_KEY, LIVE_OLD_KEY, TEST_KEY, READ_TOKEN, BODY_MARKER)


@asynccontextmanager
async def served(db: Path, **limits: int) -> AsyncIterator[str]:
    """The app run as `projector serve` runs it (a hang-up does not cancel the handler)."""
    settings = load_settings(db=db, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN, **limits)
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def refusals(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logged if entry["event"] == "delivery_refused"]


def assert_nothing_secret(logged: list[dict[str, Any]], *also: str) -> None:
    """No key, token, signature value or body text in any captured entry."""
    text = repr(logged)
    for secret in (*NEVER_LOGGED, *also):
        assert secret not in text


def assert_one_refusal(
    logged: list[dict[str, Any]], reason: str, status: int, level: str, length: int | None
) -> dict[str, Any]:
    (entry,) = refusals(logged)
    assert (entry["reason"], entry["status"], entry["log_level"]) == (reason, status, level)
    assert entry["remote"] == "127.0.0.1"
    assert entry["content_length"] == length
    return entry


def request_head(content_length: int, signature: str) -> bytes:
    return (
        f"POST {WEBHOOK} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n{SIGNATURE_HEADER}: {signature}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


WRONG_SIGNATURE = sign_body(LOGGED_BODY, b"pk_not_a_configured_key")
CLIENT_REFUSALS: dict[str, tuple[dict[str, str], bytes, int, str, str]] = {
    # name: (headers, body, status, reason, level)
    "signed with an unknown key": (
        {SIGNATURE_HEADER: WRONG_SIGNATURE},
        LOGGED_BODY,
        401,
        "invalid_signature",
        "warning",
    ),
    "no signature": ({}, LOGGED_BODY, 401, "invalid_signature", "warning"),
    "body over the limit": (
        signed(LOGGED_BODY),
        LOGGED_BODY + b" " * 2048,
        413,
        "body_too_large",
        "info",
    ),
    "gzip": (
        {**signed(LOGGED_BODY), "Content-Encoding": "gzip"},
        gzip.compress(LOGGED_BODY),
        415,
        "unsupported_encoding",
        "info",
    ),
}


@pytest.mark.parametrize("case", sorted(CLIENT_REFUSALS))
async def test_a_refused_delivery_is_logged_once_with_reason_status_remote_and_length(
    db_path: Path, case: str
) -> None:
    headers, body, status, reason, level = CLIENT_REFUSALS[case]
    async with served(db_path, max_body_bytes=SMALL_LIMIT) as base, ClientSession() as http:
        with capture_logs() as logged:
            async with http.post(base + WEBHOOK, data=body, headers=headers) as answer:
                assert answer.status == status
                assert (await answer.json())["error"]["code"] == reason
    assert_one_refusal(logged, reason, status, level, len(body))
    assert_nothing_secret(logged, WRONG_SIGNATURE, signed(LOGGED_BODY)[SIGNATURE_HEADER])


async def test_a_chunked_body_over_the_limit_is_logged_with_no_content_length(
    db_path: Path,
) -> None:
    body = padded_body(SMALL_LIMIT * 3)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    async with served(db_path, max_body_bytes=SMALL_LIMIT) as base, ClientSession() as http:
        with capture_logs() as logged:
            async with http.post(base + WEBHOOK, data=chunks(), headers=signed(body)) as answer:
                assert answer.status == 413
    entry = assert_one_refusal(logged, "body_too_large", 413, "info", None)
    assert entry["received_bytes"] > SMALL_LIMIT


async def test_an_accepted_delivery_logs_no_refusal(db_path: Path) -> None:
    async with served(db_path) as base, ClientSession() as http:
        with capture_logs() as logged:
            async with http.post(
                base + WEBHOOK, data=LOGGED_BODY, headers=signed(LOGGED_BODY)
            ) as answer:
                assert answer.status == 200
    assert refusals(logged) == []


async def test_a_sender_that_hangs_up_mid_body_is_logged_once_as_incomplete_body(
    db_path: Path,
) -> None:
    """Less than Content-Length, then the connection closes: nobody gets the 400, the log does."""
    signature = signed(LOGGED_BODY)[SIGNATURE_HEADER]
    async with served(db_path) as base:
        with capture_logs() as logged:
            host, port = base.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(request_head(len(LOGGED_BODY), signature) + LOGGED_BODY[:25])
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            for _ in range(1000):  # the refusal is logged once the server sees the hang-up
                if refusals(logged):
                    break
                await asyncio.sleep(0.01)
    assert_one_refusal(logged, "incomplete_body", 400, "info", len(LOGGED_BODY))
    assert_nothing_secret(logged, signature)


async def test_a_delivery_beyond_max_pending_is_logged_once_as_overloaded(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One delivery holds the only slot (its body half sent); the next is refused and logged."""
    reading = asyncio.Event()

    async def reading_seen(request: web.Request, limit: int) -> bytes:
        reading.set()  # the first delivery is in progress: its slot is taken
        return await read_bounded_body(request, limit)

    monkeypatch.setattr("projector.receiver.read_bounded_body", reading_seen)
    signature = signed(LOGGED_BODY)[SIGNATURE_HEADER]
    async with served(db_path, max_pending=1) as base, ClientSession() as http:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request_head(len(LOGGED_BODY), signature) + LOGGED_BODY[:10])
            await writer.drain()
            await asyncio.wait_for(reading.wait(), 10)
            other = connection_body("acct_refused")
            with capture_logs() as logged:
                async with http.post(base + WEBHOOK, data=other, headers=signed(other)) as answer:
                    assert answer.status == 503
                    assert (await answer.json())["error"]["code"] == "overloaded"
            writer.write(LOGGED_BODY[10:])
            await writer.drain()
            first = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
    assert first.split(b"\r\n", 1)[0].split()[1] == b"200"
    entry = assert_one_refusal(logged, "overloaded", 503, "warning", len(other))
    assert entry["in_progress"] == 1
    assert_nothing_secret(logged, signed(other)[SIGNATURE_HEADER], "acct_refused")


async def test_a_delivery_the_log_cannot_commit_is_logged_once_as_storage_unavailable(
    db_path: Path,
) -> None:
    """Another connection makes every insert fail, as a full disk would: 503, logged once."""
    signature = signed(LOGGED_BODY)[SIGNATURE_HEADER]
    async with served(db_path) as base, ClientSession() as http:
        saboteur = sqlite3.connect(db_path)
        saboteur.execute(
            "CREATE TRIGGER refuse_inserts BEFORE INSERT ON deliveries"
            " BEGIN SELECT RAISE(ABORT, 'inserts refused by the test'); END"
        )
        saboteur.commit()
        saboteur.close()
        with capture_logs() as logged:
            async with http.post(
                base + WEBHOOK, data=LOGGED_BODY, headers=signed(LOGGED_BODY)
            ) as answer:
                assert answer.status == 503
                assert (await answer.json())["error"]["code"] == "storage_unavailable"
    entry = assert_one_refusal(logged, "storage_unavailable", 503, "warning", len(LOGGED_BODY))
    assert entry["detail"] == "inserts refused by the test"
    assert entry["environment"] == "live"
    assert_nothing_secret(logged, signature)
