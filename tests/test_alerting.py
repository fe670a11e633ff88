"""Alerting end to end: the real `projector serve`, signed deliveries, a real local receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from projector import alerts
from projector.alerting import MAX_ATTEMPTS
from tests.alerting_support import SECRET_PATH, Receiver, expected_alerts, receiving, until
from tests.changes_support import connection_body, deliver, run_body
from tests.postgres_support import fresh_database
from tests.support import AUTH, Service, run_cli, signed

EXPIRED, CREATED = "Connection Expired", "Connection Created"


def at(minute: int) -> str:
    return f"Wed, 01 Jul 2026 09:{minute:02d}:00 GMT"


def alerting(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"PROJECTOR_ALERT_URL": receiver.url, "PROJECTOR_ALERT_RETRY_SECONDS": "0.2", **extra}


async def started(db: Path, env: dict[str, str]) -> Service:
    return await asyncio.to_thread(Service(db, extra_env=env).start)


async def stopped(service: Service) -> None:
    assert await asyncio.to_thread(service.stop) == 0


async def alert_state(http: aiohttp.ClientSession, service: Service) -> dict[str, Any]:
    async with http.get(f"{service.url}/v1/projections", headers=AUTH) as answer:
        assert answer.status == 200
        state: dict[str, Any] = (await answer.json())["alerts"]
        return state


async def settled(http: aiohttp.ClientSession, service: Service, seq: int) -> dict[str, Any]:
    """The outbox once alerts are derived up to `seq` and none is pending (bounded wait)."""
    for _ in range(1000):
        state = await alert_state(http, service)
        if state is not None and state["position"] >= seq and state["pending"] == 0:
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"alerts not settled up to seq {seq} within 20s: {state}")


def log_events(service: Service, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("message") == event]


async def test_each_transition_alerts_once_and_duplicate_or_stale_deliveries_do_not(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        service = await started(db_path, alerting(receiver))
        try:
            expired = connection_body("acct_1", "hubspot", EXPIRED, at(10))
            s1 = await deliver(http, service.url, expired)
            await deliver(http, service.url, expired)  # a duplicate
            await deliver(http, service.url, connection_body("acct_1", "hubspot", CREATED, at(5)))
            s4 = await deliver(
                http, service.url, connection_body("acct_1", "hubspot", CREATED, at(20))
            )
            errored = run_body("inst_1", "acct_1", "Workflow Errored")
            s5 = await deliver(http, service.url, errored)
            await deliver(http, service.url, errored)
            s7 = await deliver(http, service.url, run_body("inst_1", "acct_1"))
            last = await deliver(http, service.url, connection_body("acct_2", "gmail", EXPIRED))
            await until(lambda: len(receiver.alerted()) >= 5, what="five alerts")
            assert receiver.alerted() == [
                (alerts.NEEDS_RECONNECT, s1),
                (alerts.RECONNECTED, s4),
                (alerts.RUN_FAILED, s5),
                (alerts.RUN_RECOVERED, s7),
                (alerts.NEEDS_RECONNECT, last),
            ]
            first = receiver.delivered()[0]
            assert first["text"].startswith("live | account acct_1 | hubspot connection expired")
            assert first["alert"]["slug"] == "hubspot"
            state = await settled(http, service, last)
            assert state == {"position": last, "pending": 0, "sent": 5, "failed": 0} | {
                "last_failure": None
            }
            assert [line["seq"] for line in log_events(service, "alert_sent")] == [
                s1,
                s4,
                s5,
                s7,
                last,
            ]
            assert SECRET_PATH not in service.logs()
        finally:
            service.kill()


async def test_neither_a_restart_nor_a_rebuild_of_the_read_models_repeats_sent_alerts(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        service = await started(db_path, alerting(receiver))
        sent = []
        try:
            for account in ("acct_1", "acct_2", "acct_3"):
                if sent:  # restarted once, then rebuilt and restarted: nothing sent again
                    await stopped(service)
                    if len(sent) == 2:
                        rebuilt = await asyncio.to_thread(run_cli, "rebuild", env=service.env)
                        assert rebuilt.returncode == 0, rebuilt.stderr
                    service = await started(db_path, alerting(receiver))
                seq = await deliver(http, service.url, connection_body(account, "hubspot", EXPIRED))
                sent.append((alerts.NEEDS_RECONNECT, seq))
                # In seq order: a repeat of an earlier alert would come before this one.
                await until(lambda: len(receiver.alerted()) >= len(sent), what=f"alert {seq}")
                assert receiver.alerted() == sent
                await settled(http, service, seq)
        finally:
            service.kill()


async def test_alerting_first_enabled_on_history_starts_at_the_head_with_its_states(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    """History is not alerted, but it is folded: a later reconnect of it alerts."""
    async with receiving() as receiver:
        service = await started(db_path, {})
        await deliver(http, service.url, connection_body("acct_1", "hubspot", EXPIRED, at(10)))
        assert await alert_state(http, service) is None
        await stopped(service)
        service = await started(db_path, alerting(receiver))
        try:
            back = connection_body("acct_1", "hubspot", CREATED, at(20))
            reconnected = await deliver(http, service.url, back)
            await until(lambda: len(receiver.alerted()) >= 1, what="the reconnect alert")
            assert receiver.alerted() == [(alerts.RECONNECTED, reconnected)]
        finally:
            service.kill()


async def test_a_receiver_answering_500_then_200_gets_the_alert_after_a_retry(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    async with receiving(failures=1) as receiver:
        service = await started(db_path, alerting(receiver))
        try:
            seq = await deliver(http, service.url, connection_body("acct_1", "hubspot", EXPIRED))
            await until(lambda: len(receiver.delivered()) == 1, what="the alert, retried")
            assert [status for _, status in receiver.answered] == [500, 200]
            assert receiver.requests[0] == receiver.requests[1]
            state = await settled(http, service, seq)
            assert (state["sent"], state["failed"]) == (1, 0)
            (retry,) = log_events(service, "alert_retry")
            assert (retry["kind"], retry["seq"], retry["attempt"]) == (
                alerts.NEEDS_RECONNECT,
                seq,
                1,
            )
            assert retry["error"] == "HTTP 500: receiver down"
            assert retry["alert_host"] == "127.0.0.1"
        finally:
            service.kill()


async def test_an_alert_every_attempt_of_which_fails_is_recorded_as_failed_and_counted(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    async with receiving(failures=1000) as receiver:
        env = alerting(receiver, PROJECTOR_ALERT_RETRY_SECONDS="0.02")
        service = await started(db_path, env)
        try:
            seq = await deliver(http, service.url, connection_body("acct_1", "hubspot", EXPIRED))
            state = await settled(http, service, seq)
            assert (state["sent"], state["failed"]) == (0, 1)
            assert state["last_failure"]["seq"] == seq
            assert state["last_failure"]["error"] == "HTTP 500: receiver down"
            assert len(receiver.requests) == MAX_ATTEMPTS
            (failed,) = log_events(service, "alert_failed")
            assert (failed["seq"], failed["attempts"]) == (seq, MAX_ATTEMPTS)
            async with http.get(f"{service.url}/metrics", headers=AUTH) as answer:
                exposition = await answer.text()
            assert (
                'projector_alerts_failed_total{kind="connection_needs_reconnect"} 1.0' in exposition
            )
            assert SECRET_PATH not in service.logs()
        finally:
            service.kill()


async def test_a_flood_beyond_the_limit_per_minute_is_summed_up_in_one_alert(
    db_path: Path, http: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        service = await started(db_path, alerting(receiver, PROJECTOR_ALERT_MAX_PER_MINUTE="5"))
        try:
            receiver.open.clear()  # slow: the flood lands while the first alert is in flight
            first = await deliver(http, service.url, connection_body("acct_x", "gmail", EXPIRED))
            await until(lambda: len(receiver.requests) == 1, what="the first alert's POST")
            seqs = await asyncio.gather(
                *(
                    deliver(http, service.url, connection_body(f"acct_{i}", "gmail", EXPIRED))
                    for i in range(40)
                )
            )
            receiver.open.set()
            await until(lambda: len(receiver.delivered()) == 2, what="the alert and a summary")
            assert receiver.alerted() == [(alerts.NEEDS_RECONNECT, first)]
            summary = receiver.delivered()[1]["alert"]
            assert (summary["kind"], summary["count"]) == (alerts.SUMMARY, 40)
            assert (summary["first_seq"], summary["seq"]) == (min(seqs), max(seqs))
            assert receiver.delivered()[1]["text"].startswith("40 alerts at once")
            state = await settled(http, service, max(seqs))
            assert state["sent"] == 41
        finally:
            service.kill()


async def test_kill_9_under_load_loses_no_alert(db_path: Path, http: aiohttp.ClientSession) -> None:
    """Every transition in the log gets an alert (repeats allowed), across a SIGKILL."""
    bodies = [
        connection_body(f"acct_{i}", "hubspot", event, at(minute))
        for i in range(60)
        for event, minute in ((EXPIRED, 10), (CREATED, 20))
    ]

    async def post_all(url: str) -> None:
        gate = asyncio.Semaphore(8)

        async def one(body: bytes) -> None:
            async with gate:
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    async with http.post(f"{url}/webhooks/refold", data=body, headers=signed(body)):
                        pass

        await asyncio.gather(*(one(body) for body in bodies))

    async with receiving() as receiver:
        env = alerting(receiver, PROJECTOR_ALERT_MAX_PER_MINUTE="10000")
        service = await started(db_path, env)
        load = asyncio.create_task(post_all(service.url))
        await until(lambda: len(receiver.delivered()) >= 10, what="alerts under load")
        await asyncio.to_thread(service.kill)
        await load
        service = await started(db_path, env)
        try:
            await post_all(service.url)  # as Refold retries what was not acknowledged
            expected = set(expected_alerts(db_path))
            assert len(expected) >= 60
            await until(lambda: expected <= set(receiver.alerted()), 30, "every transition")
            assert set(receiver.alerted()) == expected
        finally:
            service.kill()


async def test_on_postgresql_two_processes_send_each_alert_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Only the projector lease's holder derives and sends."""
    with fresh_database() as url:
        async with receiving() as receiver:
            env = alerting(receiver, PROJECTOR_DB=url.url)
            one = await started(tmp_path / "one.sqlite3", env)
            two = await started(tmp_path / "two.sqlite3", env)
            try:
                seqs = []
                for i in range(6):
                    service = (one, two)[i % 2]
                    body = connection_body(f"acct_{i}", "hubspot", EXPIRED)
                    seqs.append(await deliver(http, service.url, body))
                await until(lambda: len(receiver.alerted()) >= 6, what="six alerts")
                back = connection_body(
                    "acct_0", "hubspot", CREATED, "Wed, 01 Jul 2026 10:00:00 GMT"
                )
                last = await deliver(http, two.url, back)
                await until(lambda: len(receiver.alerted()) >= 7, what="the reconnect alert")
                assert receiver.alerted() == [
                    *((alerts.NEEDS_RECONNECT, seq) for seq in seqs),
                    (alerts.RECONNECTED, last),
                ]
                state = await settled(http, one, last)
                assert (state["sent"], state["position"]) == (7, last)
            finally:
                one.kill()
                two.kill()
