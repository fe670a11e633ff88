"""End to end: real `projector serve` processes on 127.0.0.1, driven over HTTP and signals."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from projector.readmodels import READ_MODELS
from projector.sender import environment_of
from projector.storage.sqlite.log import append_batch
from tests.storage_support import new_delivery, open_log
from tests.support import (
    AUTH,
    KEY_BY_ENVIRONMENT,
    SAMPLE,
    Service,
    run_cli,
    sample_bodies,
    sample_instant,
    signed,
    wait_projected_http,
)

pytestmark = pytest.mark.e2e

TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, as bytes, for comparing runs of the service."""

    status: int
    body: bytes
    etag: str | None


@dataclass(frozen=True)
class Ack:
    """A delivery the service answered 200 to."""

    seq: int
    environment: str
    body: bytes


def session(limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=limit))


def connection_body(account: str, environment: str = "live", slug: str = "slack") -> bytes:
    payload = {
        "linked_account_id": account,
        "org_id": "645270e37917442c4307297a",
        "environment": environment,
        "type": "General",
        "event": "Connection Created",
        "slug": slug,
        "createdAt": "Wed, 01 Jul 2026 12:00:00 GMT",
    }
    return json.dumps(payload, separators=(",", ":")).encode()


async def post(http: aiohttp.ClientSession, base: str, body: bytes) -> Ack:
    environment = environment_of(body, "test")
    headers = signed(body, KEY_BY_ENVIRONMENT[environment])
    async with http.post(f"{base}/webhooks/refold", data=body, headers=headers) as answer:
        assert answer.status == 200, await answer.text()
        document = await answer.json()
    assert document["environment"] == environment
    return Ack(document["seq"], environment, body)


async def post_all(base: str, bodies: Iterable[bytes], in_flight: int = 16) -> list[Ack]:
    async with session(in_flight) as http:
        return list(await asyncio.gather(*(post(http, base, body) for body in bodies)))


async def get(http: aiohttp.ClientSession, url: str) -> Answer:
    async with http.get(url, headers=AUTH) as answer:
        return Answer(answer.status, await answer.read(), answer.headers.get("ETag"))


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    answer = await get(http, url)
    assert answer.status == 200, answer.body
    return json.loads(answer.body)


async def projected(service: Service) -> dict[str, Any]:
    return dict(await asyncio.to_thread(wait_projected_http, service.url))


def accounts_in(bodies: Iterable[bytes]) -> list[str]:
    found = set()
    for body in bodies:
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        found.add(str(payload["linked_account_id"]))
    return sorted(found)


def expired_live_account(bodies: Iterable[bytes]) -> str:
    """An account of the sample whose latest live connection event is an expiry."""
    latest: dict[tuple[str, str], tuple[datetime, str]] = {}
    for body in bodies:
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if environment_of(body, "test") != "live" or "createdAt" not in payload:
            continue
        if "slug" not in payload or not payload["event"].startswith("Connection "):
            continue
        moment = sample_instant(payload["createdAt"])
        key = (payload["linked_account_id"], payload["slug"])
        latest[key] = max(latest.get(key, (moment, "")), (moment, payload["event"]))
    return sorted(a for (a, _), (_, event) in latest.items() if event == "Connection Expired")[0]


async def snapshot(base: str, accounts: list[str], *, audit: bool = True) -> dict[str, Answer]:
    """Every read answer for banners, connection pages and run lists (and the audit trail)."""
    answers: dict[str, Answer] = {}
    async with session() as http:
        for environment in ("live", "test"):
            for account in accounts:
                for what in ("connections", "workflow-runs"):
                    url = f"{base}/v1/accounts/{account}/{what}?environment={environment}"
                    answers[url] = await get(http, url)
            for listing in ("/v1/connections?", "/v1/connections?status=expired&"):
                url = f"{base}{listing}environment={environment}&limit=25"
                for _ in range(1000):
                    answers[url] = answer = await get(http, url)
                    cursor = json.loads(answer.body)["next_cursor"]
                    if cursor is None:
                        break
                    url = f"{base}{listing}environment={environment}&limit=25&cursor={cursor}"
            if audit:
                url = f"{base}/v1/events?environment={environment}&limit=1000"
                answers[url] = await get(http, url)
        if audit:
            answers["projections"] = await get(http, f"{base}/v1/projections")
    assert all(a.status == 200 and a.etag for a in answers.values())
    return answers


def read_log(db: Path) -> list[tuple[int, str, bytes]]:
    """(seq, environment, body) of every delivery, straight from SQLite, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, environment, body FROM deliveries ORDER BY seq")
        return [(int(seq), str(env), bytes(body)) for seq, env, body in rows]
    finally:
        conn.close()


def assert_acknowledged_are_logged(acks: list[Ack], log: list[tuple[int, str, bytes]]) -> None:
    """Every acknowledged delivery is in the log once, at its seq, byte for byte; no gaps."""
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
    by_seq = {seq: (environment, body) for seq, environment, body in log}
    for ack in acks:
        assert by_seq[ack.seq] == (ack.environment, ack.body), ack.seq
    bodies = [body for _, _, body in log]
    for ack in acks:
        assert bodies.count(ack.body) == 1


# --- (a) the demo path ------------------------------------------------------------------


async def test_cli_send_of_the_sample_is_accepted_and_the_banner_query_answers(
    service: Service,
) -> None:
    result = await asyncio.to_thread(
        run_cli, "send", str(SAMPLE), "--url", f"{service.url}/webhooks/refold", env=service.env
    )
    assert result.returncode == 0, result.stderr
    bodies = sample_bodies()
    duplicates = len(bodies) - len(set(bodies))
    assert f"sent {len(bodies)}, accepted {len(bodies)}" in result.stdout
    assert f"duplicates {duplicates}, failed 0" in result.stdout

    state = await projected(service)
    assert state["log_head"] == len(bodies)
    account = expired_live_account(bodies)
    async with session() as http:
        banner = await get_json(http, f"{service.url}/v1/accounts/{account}/connections")
    assert banner["needs_reconnect"] is True
    assert "expired" in {c["status"] for c in banner["connections"]}


# --- (b) restart ------------------------------------------------------------------------


async def test_restart_on_the_same_database_answers_byte_for_byte_the_same(
    service: Service,
) -> None:
    bodies = sample_bodies()
    await post_all(service.url, bodies)
    await projected(service)
    before = await snapshot(service.url, accounts_in(bodies))

    assert await asyncio.to_thread(service.stop) == 0
    await asyncio.to_thread(service.start)
    state = await projected(service)
    assert state["log_head"] == len(bodies)
    after = await snapshot(service.url, accounts_in(bodies))
    assert after == before


# --- (c) rebuild ------------------------------------------------------------------------


async def test_rebuild_while_serving_gives_byte_identical_answers(service: Service) -> None:
    bodies = sample_bodies()
    await post_all(service.url, bodies)
    await projected(service)
    before = await snapshot(service.url, accounts_in(bodies), audit=False)

    result = await asyncio.to_thread(run_cli, "rebuild", env=service.env)
    assert result.returncode == 0, result.stderr
    assert f"rebuilt from {len(bodies)} deliveries" in result.stdout

    state = await projected(service)
    assert state["log_head"] == len(bodies)
    assert [p["errors"] for p in state["projections"]] == [0] * len(READ_MODELS)
    after = await snapshot(service.url, accounts_in(bodies), audit=False)
    assert after == before


def rebuild_has_claimed(db: Path) -> bool:
    """Whether a rebuild has taken its generation and not yet swapped (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return bool(conn.execute("SELECT count(*) FROM rebuild_claims").fetchone()[0])
    finally:
        conn.close()


def append_directly(db: Path, bodies: list[bytes]) -> None:
    """Append live deliveries to the log as another process would, in one transaction."""
    conn = open_log(db)
    try:
        append_batch(conn, [new_delivery(body, "live") for body in bodies])
    finally:
        conn.close()


async def test_deliveries_received_during_a_rebuild_are_all_projected(service: Service) -> None:
    await post_all(service.url, sample_bodies())
    # A longer log, so that the rebuild runs for a while (the sample alone takes milliseconds).
    filler = [connection_body(f"fill-{i:05d}", slug="jira") for i in range(10_000)]
    await asyncio.to_thread(append_directly, service.db, filler)
    await projected(service)

    rebuild = asyncio.create_task(asyncio.to_thread(run_cli, "rebuild", env=service.env))
    # Each ack, and whether the rebuild had claimed its generation before it was sent: then
    # its seq is past the head the rebuild started from.
    acks: list[tuple[Ack, bool]] = []

    async def deliver(http: aiohttp.ClientSession, lane: int) -> None:
        # Keep delivering until the rebuild has ended, then a few more after it (bounded).
        while (not rebuild.done() or len(acks) < 20) and len(acks) < 5000:
            claimed = await asyncio.to_thread(rebuild_has_claimed, service.db)
            body = connection_body(f"rb-{lane}-{len(acks):04d}")
            acks.append((await post(http, service.url, body), claimed))

    async with session() as http:
        await asyncio.gather(*(deliver(http, lane) for lane in range(4)))
        result = await rebuild
        acks.append((await post(http, service.url, connection_body("rb-last")), False))
    assert result.returncode == 0, result.stderr
    swapped_at = int(result.stdout.rsplit("rebuilt from ", 1)[1].split()[0])

    # Appended after the rebuild began and before its swap: the rebuild itself folded these.
    during = [ack for ack, claimed in acks if claimed and ack.seq <= swapped_at]
    assert during, f"no delivery landed while the rebuild ran (it swapped at {swapped_at})"
    state = await projected(service)
    assert state["log_head"] == max(ack.seq for ack, _ in acks)
    async with session() as http:
        for ack, _ in acks:  # `during` among them
            account = json.loads(ack.body)["linked_account_id"]
            banner = await get_json(http, f"{service.url}/v1/accounts/{account}/connections")
            assert [(c["slug"], c["status"]) for c in banner["connections"]] == [
                ("slack", "connected")
            ], account


# --- (d) concurrency --------------------------------------------------------------------


async def test_400_concurrent_deliveries_get_distinct_seqs_and_are_logged_once_each(
    service: Service,
) -> None:
    bodies = [
        connection_body(f"conc-{i:03d}", environment=("live", "test")[i % 2], slug=f"app{i}")
        for i in range(400)
    ]
    acks = await post_all(service.url, bodies, in_flight=100)
    assert len({ack.seq for ack in acks}) == 400
    assert all(ack.environment == environment_of(ack.body, "?") for ack in acks)

    log = read_log(service.db)
    assert len(log) == 400
    assert_acknowledged_are_logged(acks, log)
    async with session() as http:
        for ack in acks[::40]:
            detail = await get_json(
                http, f"{service.url}/v1/events/{ack.seq}?environment={ack.environment}"
            )
            assert base64.b64decode(detail["body_base64"]) == ack.body
    state = await projected(service)
    assert state["log_head"] == 400


# --- (e) SIGKILL ------------------------------------------------------------------------


async def test_acknowledged_deliveries_survive_sigkill_and_are_projected_after_restart(
    service: Service,
) -> None:
    bodies = [connection_body(f"kill-{i:03d}", slug="gmail") for i in range(200)]
    acks = await post_all(service.url, bodies, in_flight=50)
    service.kill()

    await asyncio.to_thread(service.start)
    state = await projected(service)
    assert state["log_head"] == 200
    async with session() as http:
        for ack in acks:
            detail = await get_json(
                http, f"{service.url}/v1/events/{ack.seq}?environment={ack.environment}"
            )
            assert base64.b64decode(detail["body_base64"]) == ack.body
        for ack in acks[::20]:
            account = json.loads(ack.body)["linked_account_id"]
            banner = await get_json(http, f"{service.url}/v1/accounts/{account}/connections")
            assert [c["status"] for c in banner["connections"]] == ["connected"]
    assert_acknowledged_are_logged(acks, read_log(service.db))


# --- (f) projector version change -------------------------------------------------------


async def test_projection_version_change_rebuilds_at_start_with_unchanged_answers(
    service: Service,
) -> None:
    bodies = sample_bodies()
    await post_all(service.url, bodies)
    await projected(service)
    before = await snapshot(service.url, accounts_in(bodies), audit=False)
    assert await asyncio.to_thread(service.stop) == 0

    conn = sqlite3.connect(service.db)
    try:
        with conn:
            conn.execute("UPDATE projections SET version = 0")
            # A read model the old version left behind must not survive the rebuild.
            conn.execute("DELETE FROM connections")
    finally:
        conn.close()

    await asyncio.to_thread(service.start)
    state = await projected(service)
    assert state["log_head"] == len(bodies)
    assert {p["name"]: p["version"] for p in state["projections"]} == {
        model.name: model.version for model in READ_MODELS
    }
    assert all(p["position"] == len(bodies) for p in state["projections"])
    after = await snapshot(service.url, accounts_in(bodies), audit=False)
    assert after == before
    assert "projections_rebuilding" in service.logs()


# --- (g) SIGTERM under load -------------------------------------------------------------


async def test_sigterm_with_deliveries_in_flight_keeps_every_acknowledged_one(
    service: Service,
) -> None:
    bodies = [connection_body(f"term-{i:03d}", slug="jira") for i in range(800)]
    acks: list[Ack] = []
    enough = asyncio.Event()

    async def deliver(http: aiohttp.ClientSession, body: bytes) -> None:
        url = f"{service.url}/webhooks/refold"
        try:
            async with http.post(url, data=body, headers=signed(body)) as answer:
                if answer.status != 200:
                    return  # refused during the shutdown: not acknowledged, so not promised
                document = await answer.json()
        except (aiohttp.ClientError, TimeoutError):
            return  # cut off by the shutdown: the same
        acks.append(Ack(document["seq"], document["environment"], body))
        if len(acks) >= 100:
            enough.set()

    async with session(64) as http:
        deliveries = asyncio.gather(*(deliver(http, body) for body in bodies))
        await asyncio.wait_for(enough.wait(), 30)
        exit_code = await asyncio.to_thread(service.stop)
        await asyncio.wait_for(deliveries, 60)

    assert exit_code == 0, service.logs()[-3000:]
    assert len(acks) >= 100
    log = read_log(service.db)
    assert len(log) >= len(acks)
    assert_acknowledged_are_logged(acks, log)
