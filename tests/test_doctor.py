"""`projector doctor`, run as a user runs it, against real SQLite and PostgreSQL logs, a real
`projector serve`, the fake of Refold's API, and a small site answering /healthz and alerts."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from projector.doctor import Check, failed
from projector.storage.sqlite import log
from projector.subscriptions import FOLDED_EVENTS, RECEIVER_PATH
from tests.postgres_support import fresh_database, opened, query, raw
from tests.storage_support import new_delivery, open_projected, populated_log, sample_deliveries
from tests.support import (
    LIVE_KEY,
    LIVE_OLD_KEY,
    READ_TOKEN,
    REPO,
    TEST_KEY,
    Service,
    ThreadedSite,
    free_port,
    run_cli,
    service_env,
)
from tests.test_subscriptions import FakeRefold

ALERT_SECRET = "T0001/B0002/doctorsecretpart"
LINE = re.compile(r"^(ok|FAIL|skip) +([^:]+): (.*)$")


@dataclass
class FakeSite(ThreadedSite):
    """A service's public side and an alert receiver on 127.0.0.1, in a thread of its own."""

    health_status: int = 200
    health_body: str = '{"status": "ok"}'
    hang: bool = False  # /healthz never answers (until stopped)
    alert_status: int = 200
    alert_body: str = "ok"
    alerts: list[tuple[str, Any]] = field(default_factory=list)  # (content type, JSON body)
    url: str = ""

    @property
    def alert_url(self) -> str:
        return f"{self.url}/services/{ALERT_SECRET}?channel=ops"

    async def healthz(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.released.wait()
        return web.Response(status=self.health_status, text=self.health_body)

    async def alert(self, request: web.Request) -> web.Response:
        assert request.match_info["secret"] == ALERT_SECRET
        assert request.query["channel"] == "ops"
        self.alerts.append((request.content_type, await request.json()))
        return web.Response(status=self.alert_status, text=self.alert_body)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/services/{secret:.+}", self.alert)


@pytest.fixture
def refold() -> Iterator[FakeRefold]:
    with FakeRefold() as fake:
        yield fake


@pytest.fixture
def site() -> Iterator[FakeSite]:
    with FakeSite() as fake:
        yield fake


def doctor(
    db: Path | str, refold: FakeRefold, *args: str, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """`projector doctor ARGS` with the test keys and tokens, Refold's fake, and `env` changes."""
    environment = service_env(Path(db), PROJECTOR_REFOLD_API=refold.url)
    environment["PROJECTOR_DB"] = str(db)  # a PostgreSQL URL stays a URL
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    result = run_cli("doctor", *args, env=environment, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def checks(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """Each printed check by name: (status, the rest of its line); asserts the line shapes."""
    *lines, summary = result.stdout.splitlines()
    found: dict[str, tuple[str, str]] = {}
    for line in lines:
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}"
        status, name, rest = match.groups()
        if status == "FAIL":  # every failure says what to do
            assert re.search(r" — \S", rest), f"no fix on {line!r}"
        found[name] = (status, rest)
    failures = sum(status == "FAIL" for status, _ in found.values())
    assert summary == ("all checks passed" if not failures else f"{failures} check(s) failed")
    assert result.returncode == (1 if failures else 0), result.stdout + result.stderr
    for secret in (TEST_KEY, LIVE_KEY, LIVE_OLD_KEY, READ_TOKEN, ALERT_SECRET, "pg-secret-pw"):
        assert secret not in result.stdout + result.stderr
    return found


def subscribe_all(refold: FakeRefold, url: str) -> None:
    for environment in ("test", "live"):
        refold.add(environment, url, list(FOLDED_EVENTS))


def tamper(db: Path, sql: str) -> None:
    """What someone with file access does: drop the guard triggers, then edit a row."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER IF EXISTS deliveries_no_update")
        conn.execute("DROP TRIGGER IF EXISTS deliveries_no_delete")
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


# --- every check passing ----------------------------------------------------------------


def test_every_check_passes_against_a_running_subscribed_service_and_the_alert_arrives(
    refold: FakeRefold, site: FakeSite, tmp_path: Path
) -> None:
    db = populated_log(tmp_path / "log.sqlite3")
    service = Service(db).start()
    try:
        subscribe_all(refold, service.url + RECEIVER_PATH)
        result = doctor(
            db,
            refold,
            "--send-test-alert",
            PROJECTOR_PUBLIC_URL=service.url,
            PROJECTOR_ALERT_URL=site.alert_url,
        )
    finally:
        service.stop()
    found = checks(result)
    assert result.returncode == 0
    assert list(found) == [
        "configuration",
        "database",
        "public URL",
        "subscriptions (test)",
        "subscriptions (live)",
        "alert URL",
    ]
    assert {status for status, _ in found.values()} == {"ok"}
    assert found["configuration"][1] == "3 signing keys (test, live), 1 read token"
    assert re.fullmatch(
        rf"{re.escape(str(db))}: head seq 537, hash [0-9a-f]{{64}}, chained to seq 536 .*",
        found["database"][1],
    )
    assert found["public URL"][1] == f'GET {service.url}/healthz answered 200 {{"status": "ok"}}'
    assert f"to {service.url}{RECEIVER_PATH}" in found["subscriptions (live)"][1]
    assert found["alert URL"][1] == f"POST {site.url}/…: the test alert was accepted (HTTP 200)"
    text = f"refold-projector doctor: a test alert from {socket.gethostname()}"
    assert site.alerts == [("application/json", {"text": text, "alert": {"kind": "test"}})]
    # Each environment was asked with its own newest key, and only asked.
    assert [(m, k) for m, _, k, _ in refold.requests] in (
        [("GET", TEST_KEY), ("GET", LIVE_KEY)],
        [("GET", LIVE_KEY), ("GET", TEST_KEY)],
    )


def test_json_lists_each_check_with_its_status_and_fix(refold: FakeRefold, tmp_path: Path) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    result = doctor(tmp_path / "log.sqlite3", refold, "--json", PROJECTOR_PUBLIC_URL=None)
    answer = json.loads(result.stdout)
    assert result.returncode == 1
    assert answer["ok"] is False
    by_name = {c["name"]: c for c in answer["checks"]}
    assert by_name["database"]["status"] == "ok"
    assert by_name["database"]["detail"].endswith(": empty (no deliveries yet)")
    assert by_name["public URL"] == {
        "name": "public URL",
        "status": "skip",
        "detail": "PROJECTOR_PUBLIC_URL is not set",
        "fix": None,
    }
    test = by_name["subscriptions (test)"]
    assert test["status"] == "FAIL"
    assert test["fix"].startswith("set PROJECTOR_PUBLIC_URL to this service's public address")
    assert by_name["alert URL"]["status"] == "skip"


# --- configuration ------------------------------------------------------------------------


def test_a_configuration_error_fails_its_check_and_skips_the_others_saying_why(
    refold: FakeRefold, tmp_path: Path
) -> None:
    result = doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_READ_TOKENS="short")
    found = checks(result)
    assert found["configuration"] == (
        "FAIL",
        "PROJECTOR_READ_TOKENS: every token must be at least 8 characters long — fix that "
        "variable (README: Configuration), then run `projector doctor` again",
    )
    for name in ("database", "public URL", "subscriptions", "alert URL"):
        assert found[name] == ("skip", "the configuration did not load")
    assert refold.requests == []


def test_a_malformed_alert_url_is_a_configuration_failure_that_does_not_show_it(
    refold: FakeRefold, tmp_path: Path
) -> None:
    bad = f"hooks.example.com/services/{ALERT_SECRET}"
    found = checks(doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_ALERT_URL=bad))
    status, rest = found["configuration"]
    assert status == "FAIL"
    assert rest.startswith("PROJECTOR_ALERT_URL is not an http:// or https:// address")


# --- database -----------------------------------------------------------------------------


def test_a_missing_sqlite_file_fails_and_is_not_created(refold: FakeRefold, tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "log.sqlite3"
    found = checks(doctor(db, refold))
    assert found["database"] == (
        "FAIL",
        f"PROJECTOR_DB ({db}): no database there — start `projector serve` first, or fix the path",
    )
    assert not db.parent.exists()


def test_a_tampered_head_row_is_caught(refold: FakeRefold, tmp_path: Path) -> None:
    db = populated_log(tmp_path / "log.sqlite3")
    tamper(db, "UPDATE deliveries SET body = x'7b7d' WHERE seq = 537")
    status, rest = checks(doctor(db, refold))["database"]
    assert status == "FAIL"
    assert "the head row (seq 537) does not hash to its stored hash" in rest
    assert rest.endswith("— run `projector verify` to find the first altered row, and restore "
                         "the log from a backup you verified")  # fmt: skip


def test_a_changed_hash_of_the_row_before_the_head_is_caught(
    refold: FakeRefold, tmp_path: Path
) -> None:
    db = populated_log(tmp_path / "log.sqlite3")
    tamper(db, f"UPDATE deliveries SET row_hash = '{'0' * 64}' WHERE seq = 536")
    status, rest = checks(doctor(db, refold))["database"]
    assert (status, "does not hash to its stored hash" in rest) == ("FAIL", True)


def test_a_missing_row_before_the_head_is_caught(refold: FakeRefold, tmp_path: Path) -> None:
    db = populated_log(tmp_path / "log.sqlite3")
    tamper(db, "DELETE FROM deliveries WHERE seq = 536")
    status, rest = checks(doctor(db, refold))["database"]
    assert status == "FAIL"
    assert "seq 536 is missing (the head is seq 537)" in rest


def test_a_log_of_one_row_chains_to_the_genesis_hash(refold: FakeRefold, tmp_path: Path) -> None:
    conn = open_projected(tmp_path / "log.sqlite3")
    log.append_batch(conn, sample_deliveries()[:1])
    conn.close()
    status, rest = checks(doctor(tmp_path / "log.sqlite3", refold))["database"]
    assert status == "ok"
    assert "head seq 1, hash " in rest
    assert "chained to the genesis hash" in rest


def test_postgresql_head_checked_tampering_caught_and_an_empty_database_left_alone(
    refold: FakeRefold, tmp_path: Path
) -> None:
    with fresh_database() as url:
        # A password the server ignores (trust), to prove it is never printed.
        with_password = url.url.replace("postgres@", "postgres:pg-secret-pw@", 1)
        untouched = checks(doctor(with_password, refold))["database"]
        assert untouched[0] == "FAIL"
        assert "start `projector serve` once to create or upgrade it" in untouched[1]
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert asyncio.run(query(url, tables)) == [(0,)]  # nothing was created

        async def populate() -> None:
            async with opened(url) as storage:
                for delivery in [*sample_deliveries()[:40], new_delivery(b"{}", "live")]:
                    await storage.log.append(delivery)

        asyncio.run(populate())
        status, rest = checks(doctor(with_password, refold))["database"]
        assert status == "ok"
        assert re.match(r"postgresql://postgres:\*\*\*@127\.0\.0\.1:5432/\S+: head seq 41, ", rest)

        async def alter_head() -> None:
            async with raw(url) as conn:
                await conn.execute("DROP TRIGGER deliveries_no_update_or_delete ON deliveries")
                await conn.execute("UPDATE deliveries SET body = 'x'::bytea WHERE seq = 41")

        asyncio.run(alter_head())
        status, rest = checks(doctor(with_password, refold))["database"]
        assert (status, "the head row (seq 41) does not hash" in rest) == ("FAIL", True)


def test_an_unreachable_postgresql_server_fails_without_its_password(
    refold: FakeRefold, tmp_path: Path
) -> None:
    port = free_port()
    url = f"postgresql://projector:pg-secret-pw@127.0.0.1:{port}/projector"
    status, rest = checks(doctor(url, refold))["database"]
    assert status == "FAIL"
    assert rest.startswith(f"PostgreSQL at postgresql://projector:***@127.0.0.1:{port}/projector")
    assert "failed while connecting" in rest
    assert rest.endswith("— check that the server is running and reachable and that PROJECTOR_DB "
                         "names it")  # fmt: skip


# --- public URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"health_status": 502, "health_body": "Bad Gateway"}, "/healthz answered HTTP 502"),
        ({"health_body": "<html>welcome</html>"}, 'without {"status": "ok"}'),
        ({"health_body": '{"status": "starting"}'}, 'without {"status": "ok"}'),
        ({"hang": True}, "/healthz: no answer within 1 s"),
    ],
    ids=["502", "not-json", "not-ok", "no-answer"],
)
def test_a_public_url_not_answering_healthz_ok_fails_saying_what_to_check(
    refold: FakeRefold, tmp_path: Path, answer: dict[str, Any], says: str
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    with FakeSite(**answer) as site:
        subscribe_all(refold, site.url + RECEIVER_PATH)
        result = doctor(
            tmp_path / "log.sqlite3", refold, "--timeout", "1", PROJECTOR_PUBLIC_URL=site.url
        )
    found = checks(result)
    status, rest = found["public URL"]
    assert status == "FAIL"
    assert says in rest
    assert rest.endswith("and that PROJECTOR_PUBLIC_URL is its public address")
    assert [s for s, _ in found.values()].count("FAIL") == 1  # the others still ran, and passed


def test_nothing_listening_at_the_public_url_fails(refold: FakeRefold, tmp_path: Path) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    nobody = f"http://127.0.0.1:{free_port()}"
    status, rest = checks(doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_PUBLIC_URL=nobody))[
        "public URL"
    ]
    assert status == "FAIL"
    assert rest.startswith(f"GET {nobody}/healthz: cannot reach it (")


# --- subscriptions --------------------------------------------------------------------------


def test_folded_events_without_an_enabled_subscription_here_are_named_with_the_command(
    refold: FakeRefold, site: FakeSite, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    mine = site.url + RECEIVER_PATH
    refold.add("test", mine, list(FOLDED_EVENTS[:5]))
    refold.add("test", mine, list(FOLDED_EVENTS[5:6]), enabled=False)
    refold.add("test", "https://elsewhere.example.com/hooks", list(FOLDED_EVENTS))
    refold.add("live", mine, list(FOLDED_EVENTS))
    found = checks(doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_PUBLIC_URL=site.url))
    missing = ", ".join(FOLDED_EVENTS[5:])
    assert found["subscriptions (test)"] == (
        "FAIL",
        f"no enabled subscription to {mine} covers {missing} — run `projector subscribe {mine} "
        "--environment test --allow-http`",
    )
    assert found["subscriptions (live)"][0] == "ok"


def test_only_environments_with_a_key_are_asked(
    refold: FakeRefold, site: FakeSite, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    subscribe_all(refold, site.url + RECEIVER_PATH)
    result = doctor(
        tmp_path / "log.sqlite3",
        refold,
        PROJECTOR_PUBLIC_URL=site.url,
        PROJECTOR_SIGNING_KEYS=f"live:{LIVE_KEY}",
    )
    found = checks(result)
    assert found["subscriptions (test)"] == ("skip", "PROJECTOR_SIGNING_KEYS has no test key")
    assert found["subscriptions (live)"][0] == "ok"
    assert [k for _, _, k, _ in refold.requests] == [LIVE_KEY]


def test_refold_refusing_the_key_fails_that_environment_in_one_line_without_the_key(
    refold: FakeRefold, site: FakeSite, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    subscribe_all(refold, site.url + RECEIVER_PATH)
    del refold.keys[TEST_KEY]
    found = checks(doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_PUBLIC_URL=site.url))
    status, rest = found["subscriptions (test)"]
    assert status == "FAIL"
    assert "Refold refused the test API key (HTTP 401) — put the test environment's API key" in (
        rest
    )
    assert found["subscriptions (live)"][0] == "ok"


def test_refold_failing_says_which_call_and_how_to_repeat_it(
    refold: FakeRefold, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    refold.fail_with = 500
    found = checks(doctor(tmp_path / "log.sqlite3", refold))
    for environment in ("test", "live"):
        status, rest = found[f"subscriptions ({environment})"]
        assert status == "FAIL"
        assert rest.startswith(f"GET {refold.url}/api/v2/public/webhook ({environment}): Refold")
        assert rest.endswith("— try again later")


# --- alert URL ----------------------------------------------------------------------------


def test_the_test_alert_is_sent_only_when_asked(
    refold: FakeRefold, site: FakeSite, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    found = checks(doctor(tmp_path / "log.sqlite3", refold, PROJECTOR_ALERT_URL=site.alert_url))
    assert found["alert URL"] == ("skip", "use --send-test-alert to send one")
    assert site.alerts == []


def test_asking_for_a_test_alert_without_an_alert_url_fails(
    refold: FakeRefold, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    found = checks(doctor(tmp_path / "log.sqlite3", refold, "--send-test-alert"))
    assert found["alert URL"] == (
        "FAIL",
        "--send-test-alert, but PROJECTOR_ALERT_URL is not set — set PROJECTOR_ALERT_URL to "
        "the address alerts are POSTed to, e.g. a Slack webhook",
    )


def test_an_alert_receiver_refusing_fails_without_showing_the_url_it_echoes(
    refold: FakeRefold, tmp_path: Path
) -> None:
    open_projected(tmp_path / "log.sqlite3").close()
    with FakeSite(alert_status=404, alert_body=f"no_service for /services/{ALERT_SECRET}") as site:
        found = checks(
            doctor(
                tmp_path / "log.sqlite3",
                refold,
                "--send-test-alert",
                PROJECTOR_ALERT_URL=site.alert_url,
            )
        )
        assert len(site.alerts) == 1
    assert found["alert URL"] == (
        "FAIL",
        f"POST {site.url}/… answered HTTP 404: no_service for … — check "
        "PROJECTOR_ALERT_URL: the receiver's whole address, path and query included",
    )


# --- the parts, on their own --------------------------------------------------------------


def test_a_message_ending_in_advice_gives_the_fix_else_the_fallback() -> None:
    assert failed("x", "no database there; start `projector serve` first", "other") == Check(
        "x", False, "no database there", "start `projector serve` first"
    )
    assert failed("x", "Refold refused (HTTP 400: a; b)", "repeat it") == Check(
        "x", False, "Refold refused (HTTP 400: a; b)", "repeat it"
    )


def test_the_readmes_doctor_example_has_the_printed_line_shapes() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Checking a deployment: `projector doctor`") :]
    example = section[section.index("\n```\n") + 5 :]
    example = example[: example.index("\n```\n")]
    printed = [line for line in example.splitlines() if LINE.match(line)]
    assert [LINE.match(line).group(2) for line in printed] == [  # type: ignore[union-attr]
        "configuration",
        "database",
        "public URL",
        "subscriptions (test)",
        "subscriptions (live)",
        "alert URL",
    ]
    for line in printed:
        assert not line.startswith("FAIL") or " — run `projector subscribe " in line
    assert "1 check(s) failed" in example
    assert "| `PROJECTOR_ALERT_URL` |" in readme
