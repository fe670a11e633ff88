"""The /v1 query API on the whole app, after the sample stream: auth, answers, paging, ETags."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from projector.answercache import AnswerCache
from projector.api import bearer_auth
from projector.app import build_app
from projector.config import load_settings
from projector.cursors import encode_cursor
from projector.readmodels import CONNECTION_HEALTH, READ_MODELS, WORKFLOW_RUNS
from projector.sender import environment_of
from projector.storage.port import StorageUnavailable
from projector.storage.queries import SqlReads
from projector.storage.sqlite import log, readers
from tests.storage_support import (
    BROKEN_SLUG,
    catch_up,
    delivery_of,
    fail_on_broken_slug,
    new_delivery,
    open_log,
    open_projected,
)
from tests.support import (
    AUTH,
    KEY_BY_ENVIRONMENT,
    READ_TOKEN,
    SIGNING_KEYS,
    run_cli,
    sample_bodies,
    sample_instant,
    service_env,
    signed,
    wait_projected,
)

PROTECTED = [
    "/v1/accounts/12345/connections",
    "/v1/accounts/12345/workflow-runs",
    "/v1/connections",
    "/v1/workflow-runs/67d22c4330d75f3a3fa29056",
    "/v1/events",
    "/v1/events/1",
    "/v1/projections",
    "/v1/projections/connection_health/errors",
]
NONEXISTENT = ["/v1/nothing-here", "/v1/accounts", "/v1/events/1/raw", "/v1"]
BAD_AUTH = {
    "no token": {},
    "wrong token": {"Authorization": "Bearer not-the-read-token"},
    "basic scheme": {"Authorization": f"Basic {READ_TOKEN}"},
    "token without scheme": {"Authorization": READ_TOKEN},
    "empty bearer": {"Authorization": "Bearer "},
}
CONNECTION_PRECEDENCE = {"connected": 0, "expired": 1, "deleted": 2}
CONNECTION_STATUS = {
    "Connection Created": "connected",
    "Connection Expired": "expired",
    "Connection Deleted": "deleted",
}
RUN_PRECEDENCE = {"COMPLETED": 4, "ERRORED": 3, "TIMED_OUT": 2, "STOPPED": 1}


@dataclass(frozen=True)
class Sent:
    """One sample delivery and what the receiver answered."""

    seq: int
    environment: str
    body: bytes
    duplicate: bool

    @property
    def payload(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


async def assert_error(answer: ClientResponse, status: int, code: str) -> None:
    """The answer is `status` with the one error shape {"error": {"code", "message"}}."""
    assert answer.status == status
    document = await answer.json()
    assert set(document) == {"error"}
    assert set(document["error"]) == {"code", "message"}
    assert document["error"]["code"] == code


async def get_json(client: TestClient, url: str) -> Any:
    answer = await client.get(url, headers=AUTH)
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def post(client: TestClient, body: bytes) -> Sent:
    environment = environment_of(body, "test")
    answer = await client.post(
        "/webhooks/refold", data=body, headers=signed(body, KEY_BY_ENVIRONMENT[environment])
    )
    assert answer.status == 200, await answer.text()
    document = await answer.json()
    assert document["environment"] == environment
    return Sent(document["seq"], environment, body, document["duplicate"])


async def record_sample(db: Path) -> list[Sent]:
    """Send the sample stream to a fresh app on `db`, 8 in flight; the answers, by seq."""
    settings = load_settings(db=db, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
        lane = asyncio.Semaphore(8)

        async def send(body: bytes) -> Sent:
            async with lane:
                return await post(client, body)

        sent = await asyncio.gather(*(send(body) for body in sample_bodies()))
        await wait_projected(client)
    return sorted(sent, key=lambda item: item.seq)


@pytest.fixture(scope="module")
def sample_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Sent]]:
    """The sample stream sent once, signed, through the real app; its database is copied."""
    db = tmp_path_factory.mktemp("sample") / "template.sqlite3"
    # A thread of its own, so this event loop never meets the one pytest runs tests on.
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, record_sample(db)).result(timeout=120)
    return db, sent


@pytest.fixture
def db_path(tmp_path: Path, sample_template: tuple[Path, list[Sent]]) -> Path:
    """Every test of this module starts on its own copy of the database the sample built."""
    template, _ = sample_template
    copy = tmp_path / "projector.sqlite3"
    for suffix in ("", "-wal"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, copy.with_name(copy.name + suffix))
    return copy


@pytest.fixture
async def sample(client: TestClient, sample_template: tuple[Path, list[Sent]]) -> list[Sent]:
    """What the sample stream's deliveries were answered, once the projections are current."""
    await wait_projected(client)
    return sample_template[1]


async def walk(client: TestClient, url: str, items: str, limit: int) -> list[Any]:
    """Every item of a paginated list, following next_cursor (bounded)."""
    separator = "&" if "?" in url else "?"
    found: list[Any] = []
    cursor: str | None = None
    for _ in range(10_000):
        page_url = f"{url}{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, page_url)
        assert len(page[items]) <= limit
        found.extend(page[items])
        cursor = page["next_cursor"]
        if cursor is None:
            return found
        assert page[items], "a page with a next_cursor must not be empty"
    raise AssertionError(f"{url} did not end")


# --- an independent reading of the sample -----------------------------------------------


def expected_connections(sent: list[Sent]) -> dict[tuple[str, str, str], str]:
    """(environment, account, slug) -> status: the latest createdAt wins, ties by precedence."""
    latest: dict[tuple[str, str, str], tuple[datetime, int, str]] = {}
    for item in sent:
        payload = item.payload
        if payload is None or payload.get("event") not in CONNECTION_STATUS:
            continue
        if "slug" not in payload or environment_of(item.body, item.environment) != (
            item.environment
        ):
            continue
        status = CONNECTION_STATUS[payload["event"]]
        key = (item.environment, payload["linked_account_id"], payload["slug"])
        rank = (sample_instant(payload["createdAt"]), CONNECTION_PRECEDENCE[status], status)
        latest[key] = max(latest.get(key, rank), rank)
    return {key: rank[2] for key, rank in latest.items()}


def expected_runs(sent: list[Sent]) -> dict[tuple[str, str], tuple[str, str]]:
    """(environment, instance_id) -> (account, status): COMPLETED is final, else precedence."""
    statuses: dict[tuple[str, str], set[str]] = defaultdict(set)
    accounts: dict[tuple[str, str], str] = {}
    for item in sent:
        payload = item.payload
        if payload is None or not str(payload.get("event", "")).startswith("Workflow "):
            continue
        if payload.get("status") not in RUN_PRECEDENCE:
            continue
        key = (item.environment, payload["instance_id"])
        statuses[key].add(payload["status"])
        accounts[key] = payload["linked_account_id"]
    return {
        key: (accounts[key], max(found, key=RUN_PRECEDENCE.__getitem__).lower())
        for key, found in statuses.items()
    }


# --- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize("auth", sorted(BAD_AUTH))
async def test_every_v1_path_refuses_a_bad_token_with_401_that_reveals_nothing(
    client: TestClient, auth: str
) -> None:
    answers = []
    for path in PROTECTED + NONEXISTENT:
        answer = await client.get(path, headers=BAD_AUTH[auth])
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "ETag" not in answer.headers
        answers.append((await answer.read(), answer.headers["WWW-Authenticate"]))
    assert len(set(answers)) == 1
    document = json.loads(answers[0][0])
    assert document["error"]["code"] == "unauthorised"
    assert set(document["error"]) == {"code", "message"}


async def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    answer = await client.get("/v1/projections", headers={"Authorization": f"bearer {READ_TOKEN}"})
    assert answer.status == 200


async def test_healthz_needs_no_token(client: TestClient) -> None:
    answer = await client.get("/healthz")
    assert answer.status == 200
    assert await answer.json() == {"status": "ok"}


# --- the banner query -------------------------------------------------------------------


async def test_account_with_an_expired_connection_needs_reconnect(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    account = sorted(a for (e, a, _), s in expected.items() if e == "live" and s == "expired")[0]
    banner = await get_json(client, f"/v1/accounts/{account}/connections")
    assert banner["linked_account_id"] == account
    assert banner["environment"] == "live"
    assert banner["needs_reconnect"] is True
    assert {c["slug"] for c in banner["connections"]} == {
        slug for (e, a, slug) in expected if (e, a) == ("live", account)
    }
    for connection in banner["connections"]:
        status = expected["live", account, connection["slug"]]
        assert connection["status"] == status
        assert connection["needs_reconnect"] is (status == "expired")


async def test_every_account_banner_matches_the_latest_event_of_each_connection(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    for environment, account in {(e, a) for e, a, _ in expected}:
        banner = await get_json(
            client, f"/v1/accounts/{account}/connections?environment={environment}"
        )
        found = {c["slug"]: c["status"] for c in banner["connections"]}
        wanted = {s: st for (e, a, s), st in expected.items() if (e, a) == (environment, account)}
        assert found == wanted, (environment, account)
        assert banner["needs_reconnect"] is ("expired" in wanted.values())


async def test_unknown_account_has_no_connections_and_needs_no_reconnect(
    client: TestClient, sample: list[Sent]
) -> None:
    banner = await get_json(client, "/v1/accounts/nobody-at-all/connections")
    assert banner == {
        "linked_account_id": "nobody-at-all",
        "environment": "live",
        "needs_reconnect": False,
        "connections": [],
    }


async def test_environment_defaults_to_live_and_test_switches(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    live = {a for e, a, _ in expected if e == "live"}
    account = sorted({a for e, a, _ in expected if e == "test"} - live)[0]
    default = await get_json(client, f"/v1/accounts/{account}/connections")
    assert default["environment"] == "live"
    assert default["connections"] == []
    test = await get_json(client, f"/v1/accounts/{account}/connections?environment=test")
    assert test["environment"] == "test"
    assert {c["slug"] for c in test["connections"]} == {
        s for e, a, s in expected if (e, a) == ("test", account)
    }


async def test_environment_production_is_the_same_as_live(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    account = sorted(a for e, a, _ in expected if e == "live")[0]
    url = f"/v1/accounts/{account}/connections"
    bodies = set()
    for query in ("", "?environment=live", "?environment=production", "?environment=LIVE"):
        answer = await client.get(url + query, headers=AUTH)
        assert answer.status == 200
        bodies.add(await answer.read())
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["connections"]


@pytest.mark.parametrize("environment", ["staging", "prod", "", "live,test"])
async def test_unknown_environment_is_400_invalid_environment(
    client: TestClient, environment: str
) -> None:
    answer = await client.get(
        f"/v1/accounts/12345/connections?environment={environment}", headers=AUTH
    )
    await assert_error(answer, 400, "invalid_environment")


# --- connection lists -------------------------------------------------------------------


async def test_connections_filtered_by_status_expired_list_only_expired_ones(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    for environment in ("live", "test"):
        page = await get_json(
            client, f"/v1/connections?status=expired&environment={environment}&limit=1000"
        )
        assert page["next_cursor"] is None
        assert {c["status"] for c in page["connections"]} == {"expired"}
        assert {(c["linked_account_id"], c["slug"]) for c in page["connections"]} == {
            (a, s) for (e, a, s), st in expected.items() if e == environment and st == "expired"
        }


async def test_connection_pages_of_3_visit_every_expired_connection_exactly_once(
    client: TestClient, sample: list[Sent]
) -> None:
    whole = await get_json(client, "/v1/connections?status=expired&limit=1000")
    walked = await walk(client, "/v1/connections?status=expired", "connections", 3)
    keys = [(c["linked_account_id"], c["slug"]) for c in walked]
    assert len(keys) == len(set(keys))
    assert walked == whole["connections"]
    assert len(walked) > 3


async def test_unfiltered_connection_pages_visit_every_connection_exactly_once(
    client: TestClient, sample: list[Sent]
) -> None:
    expected = expected_connections(sample)
    for environment in ("live", "test"):
        walked = await walk(client, f"/v1/connections?environment={environment}", "connections", 7)
        found = {(c["linked_account_id"], c["slug"]): c["status"] for c in walked}
        assert len(found) == len(walked)
        assert found == {(a, s): st for (e, a, s), st in expected.items() if e == environment}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "", "1.5", "²", "99999999999"])
@pytest.mark.parametrize("path", ["/v1/connections", "/v1/events", "/v1/accounts/1/workflow-runs"])
async def test_out_of_range_or_non_numeric_limit_is_400_invalid_limit(
    client: TestClient, path: str, limit: str
) -> None:
    answer = await client.get(path, params={"limit": limit}, headers=AUTH)
    await assert_error(answer, 400, "invalid_limit")


async def test_limit_1000_is_accepted(client: TestClient) -> None:
    answer = await client.get("/v1/connections?limit=1000", headers=AUTH)
    assert answer.status == 200


async def test_random_base64_cursor_is_400_invalid_cursor(client: TestClient) -> None:
    forged = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    for path in ("/v1/connections", "/v1/events", "/v1/accounts/12345/workflow-runs"):
        answer = await client.get(path, params={"cursor": forged}, headers=AUTH)
        await assert_error(answer, 400, "invalid_cursor")


async def test_cursor_from_events_used_on_connections_is_400_invalid_cursor(
    client: TestClient, sample: list[Sent]
) -> None:
    events = await get_json(client, "/v1/events?limit=2")
    assert events["next_cursor"]
    answer = await client.get(
        "/v1/connections", params={"cursor": events["next_cursor"]}, headers=AUTH
    )
    await assert_error(answer, 400, "invalid_cursor")


async def test_cursor_from_connections_used_on_events_is_400_invalid_cursor(
    client: TestClient, sample: list[Sent]
) -> None:
    connections = await get_json(client, "/v1/connections?limit=2")
    assert connections["next_cursor"]
    answer = await client.get(
        "/v1/events", params={"cursor": connections["next_cursor"]}, headers=AUTH
    )
    await assert_error(answer, 400, "invalid_cursor")


@pytest.mark.parametrize(
    "sort_key", [[10**30], [-1], [1.5], [True], ["1"], [1, 2], {"seq": 1}, None]
)
async def test_forged_well_formed_events_cursor_is_400_invalid_cursor(
    client: TestClient, sort_key: object
) -> None:
    forged = base64.urlsafe_b64encode(json.dumps(sort_key).encode()).decode().rstrip("=")
    answer = await client.get("/v1/events", params={"cursor": forged}, headers=AUTH)
    await assert_error(answer, 400, "invalid_cursor")


async def test_no_frame_of_a_failing_reads_traceback_holds_a_read_token(
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    """JSON logs print every frame's locals; README: tokens never appear in logs."""
    failures: list[BaseException] = []

    @web.middleware
    async def keep_failure(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except RuntimeError as exc:
            failures.append(exc)
            return web.Response(status=500)

    async def failing_read(request: web.Request) -> web.Response:
        raise RuntimeError("a read that fails")

    app = web.Application(middlewares=[keep_failure, bearer_auth((READ_TOKEN.encode(),))])
    app.router.add_get("/v1/failing", failing_read)
    client = await aiohttp_client(app)
    answer = await client.get("/v1/failing", headers=AUTH)
    assert answer.status == 500
    traceback = failures[0].__traceback__
    assert traceback is not None
    while traceback is not None:
        shown = {name: repr(value) for name, value in traceback.tb_frame.f_locals.items()}
        assert READ_TOKEN not in repr(shown), traceback.tb_frame.f_code.co_name
        traceback = traceback.tb_next


@pytest.mark.parametrize(
    ("path", "sort_key"),
    [
        ("/v1/connections", ["\ud800", "slack"]),
        ("/v1/accounts/12345/workflow-runs", ["\udfff"]),
    ],
)
async def test_forged_cursor_holding_a_lone_surrogate_is_400_invalid_cursor(
    client: TestClient, path: str, sort_key: list[str]
) -> None:
    """json.loads takes "\\ud800" and the types match, but SQLite cannot bind it."""
    forged = base64.urlsafe_b64encode(json.dumps(sort_key).encode()).decode().rstrip("=")
    answer = await client.get(path, params={"cursor": forged}, headers=AUTH)
    await assert_error(answer, 400, "invalid_cursor")


async def test_unknown_query_parameter_is_400_unknown_parameter(client: TestClient) -> None:
    for url in (
        "/v1/connections?stauts=expired",
        "/v1/accounts/12345/connections?env=test",
        "/v1/events?seq=3",
        "/v1/projections?verbose=1",
    ):
        answer = await client.get(url, headers=AUTH)
        await assert_error(answer, 400, "unknown_parameter")


async def test_upper_case_status_is_400_invalid_status(client: TestClient) -> None:
    for url in (
        "/v1/connections?status=EXPIRED",
        "/v1/connections?status=reauth_required",
        "/v1/accounts/12345/workflow-runs?status=ERRORED",
    ):
        answer = await client.get(url, headers=AUTH)
        await assert_error(answer, 400, "invalid_status")


RUN_STATUS_CHOICES = "completed, errored, timed_out, stopped, other"


async def test_an_unknown_run_status_is_400_naming_the_statuses_the_filter_takes(
    client: TestClient,
) -> None:
    for status in ("erored", "paused", "running", "COMPLETED"):
        answer = await client.get(f"/v1/accounts/12345/workflow-runs?status={status}", headers=AUTH)
        await assert_error(answer, 400, "invalid_status")
        message = (await answer.json())["error"]["message"]
        assert message == f"status {status!r} is not one of {RUN_STATUS_CHOICES}"


async def test_run_status_other_lists_the_runs_whose_status_is_none_of_the_four(
    client: TestClient,
) -> None:
    account = "acct-other-status"
    runs = {"run-paused": "PAUSED", "run-errored": "ERRORED", "run-odd": "Waiting_Input"}
    for instance, status in runs.items():
        body = json.dumps(
            {
                "linked_account_id": account,
                "instance_id": instance,
                "event": "Workflow Stopped",
                "status": status,
                "environment": "live",
            }
        ).encode()
        answer = await client.post("/webhooks/refold", data=body, headers=signed(body))
        assert answer.status == 200
    listed = await get_json(client, f"/v1/accounts/{account}/workflow-runs")
    assert {r["instance_id"]: r["status"] for r in listed["runs"]} == {
        "run-errored": "errored",
        "run-odd": "waiting_input",
        "run-paused": "paused",
    }
    other = await get_json(client, f"/v1/accounts/{account}/workflow-runs?status=other")
    assert [r["instance_id"] for r in other["runs"]] == ["run-odd", "run-paused"]
    errored = await get_json(client, f"/v1/accounts/{account}/workflow-runs?status=errored")
    assert [r["instance_id"] for r in errored["runs"]] == ["run-errored"]
    paged = await get_json(client, f"/v1/accounts/{account}/workflow-runs?status=other&limit=1")
    assert [r["instance_id"] for r in paged["runs"]] == ["run-odd"]
    rest = await get_json(
        client,
        f"/v1/accounts/{account}/workflow-runs?status=other&cursor={paged['next_cursor']}",
    )
    assert [r["instance_id"] for r in rest["runs"]] == ["run-paused"]


async def test_repeated_query_parameter_is_400(client: TestClient) -> None:
    answer = await client.get("/v1/connections?status=expired&status=deleted", headers=AUTH)
    await assert_error(answer, 400, "repeated_parameter")


# --- workflow runs ----------------------------------------------------------------------


def errored_then_completed(sample: list[Sent]) -> tuple[str, str]:
    """A run of the sample whose ERRORED delivery is logged before its COMPLETED one."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item in sample:
        payload = item.payload
        if payload and "instance_id" in payload and payload.get("status") in RUN_PRECEDENCE:
            seen[item.environment, payload["instance_id"]].append(payload["status"])
    for key, statuses in seen.items():
        if "ERRORED" in statuses and "COMPLETED" in statuses[statuses.index("ERRORED") :]:
            return key
    raise AssertionError("the sample holds no run that errored and then completed")


async def test_run_that_errored_then_completed_is_completed_and_lists_its_deliveries(
    client: TestClient, sample: list[Sent]
) -> None:
    environment, instance = errored_then_completed(sample)
    run = await get_json(client, f"/v1/workflow-runs/{instance}?environment={environment}")
    assert run["instance_id"] == instance
    assert run["environment"] == environment
    assert run["status"] == "completed"
    mine = [
        item
        for item in sample
        if item.environment == environment and (item.payload or {}).get("instance_id") == instance
    ]
    assert run["deliveries"] == [
        {
            "seq": item.seq,
            "event": item.payload["event"] if item.payload else None,
            "status": str((item.payload or {}).get("status")).lower(),
            "duplicate": item.duplicate,
        }
        for item in mine
    ]
    statuses = [d["status"] for d in run["deliveries"]]
    assert statuses.index("errored") < statuses.index("completed")


async def test_every_run_has_the_status_its_events_decide(
    client: TestClient, sample: list[Sent]
) -> None:
    for (environment, instance), (account, status) in expected_runs(sample).items():
        run = await get_json(client, f"/v1/workflow-runs/{instance}?environment={environment}")
        assert (run["linked_account_id"], run["status"]) == (account, status), instance


async def test_unknown_run_is_404_run_not_found(client: TestClient, sample: list[Sent]) -> None:
    answer = await client.get("/v1/workflow-runs/000000000000000000000000", headers=AUTH)
    await assert_error(answer, 404, "run_not_found")


async def test_run_of_the_test_environment_is_not_found_in_live(
    client: TestClient, sample: list[Sent]
) -> None:
    runs = expected_runs(sample)
    live = {i for e, i in runs if e == "live"}
    instance = sorted(i for e, i in runs if e == "test" and i not in live)[0]
    answer = await client.get(f"/v1/workflow-runs/{instance}", headers=AUTH)
    await assert_error(answer, 404, "run_not_found")


async def test_account_runs_filtered_by_status_errored_list_only_errored_runs(
    client: TestClient, sample: list[Sent]
) -> None:
    runs = expected_runs(sample)
    by_account: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for (environment, instance), (account, status) in runs.items():
        by_account[environment, account][instance] = status
    candidates = [
        key
        for key, statuses in by_account.items()
        if "errored" in statuses.values() and len(set(statuses.values())) > 1
    ]
    assert candidates
    for environment, account in candidates:
        url = f"/v1/accounts/{account}/workflow-runs?environment={environment}"
        errored = await get_json(client, url + "&status=errored")
        assert errored["next_cursor"] is None
        assert {r["status"] for r in errored["runs"]} == {"errored"}
        assert {r["instance_id"] for r in errored["runs"]} == {
            i for i, s in by_account[environment, account].items() if s == "errored"
        }
        everything = await walk(client, url, "runs", 2)
        assert {r["instance_id"]: r["status"] for r in everything} == by_account[
            environment, account
        ]


# --- a run with more deliveries than one page ------------------------------------------------

LONG_RUN = "10000000000000000000a11"


def run_event(instance: str, status: str, attempt: int) -> bytes:
    """A live workflow event of `instance`; each attempt is a new event, a repeat a retry."""
    payload = {
        "linked_account_id": "acct_long",
        "instance_id": instance,
        "workflow_id": "wf_long",
        "event": f"Workflow {status.title()}",
        "workflow_name": "Sync Everything",
        "status": status,
        "environment": "live",
        "attempts": attempt,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def long_run_log(path: Path) -> list[dict[str, Any]]:
    """1,234 deliveries of LONG_RUN (errors, retries, then completed) among 308 of another
    run, appended and folded straight through the log; LONG_RUN's deliveries as answered."""
    bodies = []
    for attempt in range(1, 1234):
        # Every tenth attempt repeats the one before exactly: a retry, marked duplicate.
        bodies.append(run_event(LONG_RUN, "ERRORED", attempt if attempt % 10 else attempt - 1))
        if attempt % 4 == 0:
            bodies.append(run_event("20000000000000000000b22", "ERRORED", attempt))
    bodies.append(run_event(LONG_RUN, "COMPLETED", 1234))
    conn = open_projected(path)
    appended = log.append_batch(conn, [new_delivery(body, "live") for body in bodies])
    catch_up(conn)
    conn.close()
    return [
        {
            "seq": landed.seq,
            "event": json.loads(body)["event"],
            "status": json.loads(body)["status"].lower(),
            "duplicate": landed.duplicate_of is not None,
        }
        for body, landed in zip(bodies, appended, strict=True)
        if LONG_RUN.encode() in body
    ]


@pytest.mark.parametrize("limit", [1000, 617, 100])
async def test_a_run_with_more_than_1000_deliveries_is_returned_whole_over_pages(
    tmp_path: Path, limit: int
) -> None:
    """Pages of `limit` (617 divides the 1,234 exactly) follow next_cursor to every delivery."""
    settings = load_settings(
        db=tmp_path / "long.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN
    )
    expected = long_run_log(settings.db)
    assert len(expected) == 1234
    assert sum(d["duplicate"] for d in expected) == 123
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
        pages = []
        url = f"/v1/workflow-runs/{LONG_RUN}?limit={limit}"
        for _ in range(20):  # bounded: 13 pages at most
            pages.append(await get_json(client, url))
            if pages[-1]["next_cursor"] is None:
                break
            url = f"/v1/workflow-runs/{LONG_RUN}?limit={limit}&cursor={pages[-1]['next_cursor']}"
    assert [len(page["deliveries"]) for page in pages] == [
        min(limit, 1234 - start) for start in range(0, 1234, limit)
    ]
    assert [d for page in pages for d in page["deliveries"]] == expected
    summaries = [
        {k: v for k, v in page.items() if k not in ("deliveries", "next_cursor")} for page in pages
    ]
    assert summaries == [summaries[0]] * len(pages)
    assert (summaries[0]["status"], summaries[0]["workflow_id"]) == ("completed", "wf_long")


async def test_pages_of_a_run_are_kept_and_tagged_apart(tmp_path: Path) -> None:
    """The answer cache keys on the whole URL: one page's answer never stands for another's."""
    settings = load_settings(
        db=tmp_path / "pages.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN
    )
    expected = [d["seq"] for d in long_run_log(settings.db)]
    async with TestClient(TestServer(build_app(settings), host="127.0.0.1")) as client:
        first_url = f"/v1/workflow-runs/{LONG_RUN}?limit=2"
        first = await client.get(first_url, headers=AUTH)
        second_url = f"{first_url}&cursor={(await first.json())['next_cursor']}"
        second = await client.get(second_url, headers=AUTH)
        again = await client.get(first_url, headers=AUTH)
        # The first page's tag offered for the second page: no match, the whole page comes.
        offered = await client.get(
            second_url, headers={**AUTH, "If-None-Match": first.headers["ETag"]}
        )
        assert [d["seq"] for d in (await first.json())["deliveries"]] == expected[:2]
        assert [d["seq"] for d in (await second.json())["deliveries"]] == expected[2:4]
        assert first.headers["ETag"] != second.headers["ETag"]
        assert again.headers["ETag"] == first.headers["ETag"]
        assert await again.read() == await first.read()
        assert offered.status == 200
        assert await offered.read() == await second.read()


async def test_a_run_page_with_a_bad_limit_or_cursor_is_400(client: TestClient) -> None:
    """The run's deliveries take limit and cursor as every list does, with the same errors."""
    url = "/v1/workflow-runs/67d22c4330d75f3a3fa29056"
    for limit in ("0", "1001", "abc"):
        answer = await client.get(url, params={"limit": limit}, headers=AUTH)
        await assert_error(answer, 400, "invalid_limit")
    connections = await get_json(client, "/v1/connections?limit=1")
    for cursor in (connections["next_cursor"], "bm90LWEtY3Vyc29y", encode_cursor(-1)):
        answer = await client.get(url, params={"cursor": cursor}, headers=AUTH)
        await assert_error(answer, 400, "invalid_cursor")


# --- the audit trail --------------------------------------------------------------------


async def test_events_are_listed_in_log_order_with_duplicates_marked(
    client: TestClient, sample: list[Sent]
) -> None:
    for environment in ("live", "test"):
        events = await walk(client, f"/v1/events?environment={environment}", "events", 1000)
        mine = [item for item in sample if item.environment == environment]
        assert [e["seq"] for e in events] == [item.seq for item in mine]
        assert [e["duplicate"] for e in events] == [item.duplicate for item in mine]
        assert [e["payload"] for e in events] == [item.payload for item in mine]
        assert {e["environment"] for e in events} == {environment}
    assert any(item.duplicate for item in sample)
    first_seen: set[bytes] = set()
    for item in sample:
        assert item.duplicate is (item.body in first_seen)
        first_seen.add(item.body)


async def test_malformed_line_is_listed_with_flag_not_json_and_null_payload(
    client: TestClient, sample: list[Sent]
) -> None:
    broken = [item for item in sample if item.payload is None]
    assert len(broken) == 1
    events = await walk(client, f"/v1/events?environment={broken[0].environment}", "events", 1000)
    (listed,) = [e for e in events if e["seq"] == broken[0].seq]
    assert listed["flags"] == ["not_json"]
    assert listed["payload"] is None
    assert listed["event"] is None


async def test_every_flagged_sample_delivery_carries_the_flag_that_says_why(
    client: TestClient, sample: list[Sent]
) -> None:
    known = {*CONNECTION_STATUS, *(f"Workflow {s}" for s in ("Completed", "Errored", "Stopped"))}
    known.add("Workflow Timed Out")
    for environment in ("live", "test"):
        events = await walk(client, f"/v1/events?environment={environment}", "events", 1000)
        for event, item in zip(
            events, [i for i in sample if i.environment == environment], strict=True
        ):
            payload = item.payload
            if payload is None:
                wanted = ["not_json"]
            elif payload.get("event") not in known:
                wanted = ["unknown_event"]
            elif payload["event"].startswith("Connection ") and "slug" not in payload:
                wanted = ["missing_field:slug"]
            else:
                wanted = []
            assert event["flags"] == wanted, item.body
    flagged = [i for i in sample if i.payload is None or i.payload.get("event") not in known]
    assert len(flagged) >= 3


async def test_events_after_a_seq_start_after_it(client: TestClient, sample: list[Sent]) -> None:
    after = sample[len(sample) // 2].seq
    events = await walk(client, f"/v1/events?after={after}", "events", 1000)
    assert [e["seq"] for e in events] == [
        item.seq for item in sample if item.environment == "live" and item.seq > after
    ]


@pytest.mark.parametrize("after", ["-1", "x", "1e3", "9" * 19])
async def test_events_after_something_not_a_seq_is_400_invalid_after(
    client: TestClient, after: str
) -> None:
    answer = await client.get("/v1/events", params={"after": after}, headers=AUTH)
    await assert_error(answer, 400, "invalid_after")


async def test_events_filtered_by_linked_account_id_list_only_that_account(
    client: TestClient, sample: list[Sent]
) -> None:
    per_account: dict[str, list[int]] = defaultdict(list)
    for item in sample:
        if item.environment == "live" and item.payload:
            per_account[str(item.payload.get("linked_account_id"))].append(item.seq)
    account, wanted = max(per_account.items(), key=lambda pair: len(pair[1]))
    assert len(wanted) > 5
    events = await walk(client, f"/v1/events?linked_account_id={account}", "events", 5)
    assert [e["seq"] for e in events] == wanted
    assert {e["linked_account_id"] for e in events} == {account}


async def test_events_filtered_by_event_list_only_that_event(
    client: TestClient, sample: list[Sent]
) -> None:
    events = await walk(
        client, "/v1/events?environment=test&event=Connection%20Expired", "events", 10
    )
    wanted = [
        item.seq
        for item in sample
        if item.environment == "test" and (item.payload or {}).get("event") == "Connection Expired"
    ]
    assert len(wanted) > 10
    assert [e["seq"] for e in events] == wanted


async def test_event_pages_visit_every_event_once_and_end_with_a_null_cursor(
    client: TestClient, sample: list[Sent]
) -> None:
    whole = await get_json(client, "/v1/events?limit=1000")
    assert whole["next_cursor"] is None
    walked = await walk(client, "/v1/events", "events", 7)
    assert walked == whole["events"]


async def test_event_detail_body_base64_decodes_to_the_exact_bytes_sent(
    client: TestClient, sample: list[Sent]
) -> None:
    for item in sample:
        detail = await get_json(client, f"/v1/events/{item.seq}?environment={item.environment}")
        assert base64.b64decode(detail["body_base64"]) == item.body
        assert detail["seq"] == item.seq
        assert detail["duplicate"] is item.duplicate
        assert (detail["duplicate_of"] is not None) is item.duplicate


async def test_event_of_the_other_environment_is_404(
    client: TestClient, sample: list[Sent]
) -> None:
    item = next(i for i in sample if i.environment == "test")
    answer = await client.get(f"/v1/events/{item.seq}?environment=live", headers=AUTH)
    await assert_error(answer, 404, "event_not_found")
    answer = await client.get(f"/v1/events/{len(sample) + 1}?environment=test", headers=AUTH)
    await assert_error(answer, 404, "event_not_found")


async def test_projections_stand_at_a_log_head_equal_to_the_deliveries_sent(
    client: TestClient, sample: list[Sent]
) -> None:
    state = await get_json(client, "/v1/projections")
    assert state["log_head"] == len(sample) == len(sample_bodies())
    assert {p["name"] for p in state["projections"]} == {"connection_health", "workflow_runs"}
    for projection in state["projections"]:
        assert projection["position"] == len(sample)
        assert projection["errors"] == 0


# --- the dead letters: flagged deliveries and fold errors --------------------------------


async def test_events_flagged_true_and_false_split_the_audit_trail_by_its_flags(
    client: TestClient, sample: list[Sent]
) -> None:
    for environment in ("live", "test"):
        url = f"/v1/events?environment={environment}"
        every = await walk(client, url, "events", 1000)
        flagged = await walk(client, url + "&flagged=true", "events", 3)
        clean = await walk(client, url + "&flagged=false", "events", 100)
        assert flagged == [e for e in every if e["flags"]]
        assert clean == [e for e in every if not e["flags"]]
        assert flagged


@pytest.mark.parametrize("flag", ["not_json", "unknown_event", "missing_field:slug"])
async def test_events_with_a_flag_list_exactly_the_deliveries_carrying_it(
    client: TestClient, sample: list[Sent], flag: str
) -> None:
    carrying = 0
    for environment in ("live", "test"):
        url = f"/v1/events?environment={environment}"
        every = await walk(client, url, "events", 1000)
        found = await walk(client, f"{url}&flag={flag}", "events", 1)
        assert found == [e for e in every if flag in e["flags"]]
        carrying += len(found)
    assert carrying


@pytest.mark.parametrize("value", ["yes", "True", "1", "", "true,false"])
async def test_events_flagged_other_than_true_or_false_is_400_invalid_flagged(
    client: TestClient, value: str
) -> None:
    answer = await client.get("/v1/events", params={"flagged": value}, headers=AUTH)
    await assert_error(answer, 400, "invalid_flagged")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("unknown_events", "use one of not_json"),
        ("missing_field", "missing_field:slug"),
        ("slug", "missing_field:FIELD"),
    ],
)
async def test_events_flag_that_no_delivery_can_carry_is_400_invalid_flag_saying_what_to_send(
    client: TestClient, value: str, says: str
) -> None:
    answer = await client.get("/v1/events", params={"flag": value}, headers=AUTH)
    await assert_error(answer, 400, "invalid_flag")
    assert says in (await answer.json())["error"]["message"]


def broken_slug_body(minute: int) -> bytes:
    """A valid connection event of the app the broken fold below raises on."""
    return json.dumps(
        {
            "linked_account_id": "acct_broken",
            "environment": "live",
            "event": "Connection Created",
            "slug": BROKEN_SLUG,
            "createdAt": f"Mon, 01 Jun 2026 05:{minute:02d}:00 GMT",
        }
    ).encode()


async def test_fold_errors_are_listed_with_seq_event_and_error_until_a_rebuild_clears_them(
    client: TestClient,
    sample: list[Sent],
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fold bug on a real delivery: listed, paginated; the fixed code's rebuild empties it."""
    errors_url = "/v1/projections/connection_health/errors"
    assert await get_json(client, errors_url) == {
        "projection": "connection_health",
        "errors": [],
        "next_cursor": None,
    }
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr("projector.storage.sqlite.projection.READ_MODELS", (broken, WORKFLOW_RUNS))
    seqs = [(await post(client, broken_slug_body(minute))).seq for minute in (1, 2)]
    await post(client, sample[0].body)  # a delivery that folds fine, between the two
    state = await wait_projected(client)
    assert [p["errors"] for p in state["projections"]] == [2, 0]  # type: ignore[index]

    listed = await walk(client, errors_url, "errors", 1)
    assert listed == [
        {
            "seq": seq,
            "environment": "live",
            "event": "Connection Created",
            "error": f"RuntimeError: fold bug on {BROKEN_SLUG}",
        }
        for seq in seqs
    ]
    assert await get_json(client, "/v1/projections/workflow_runs/errors") == {
        "projection": "workflow_runs",
        "errors": [],
        "next_cursor": None,
    }

    # The fix ships: `projector rebuild` folds the log with the working code into a new
    # generation, and the old generation's errors are no longer listed.
    monkeypatch.setattr("projector.storage.sqlite.projection.READ_MODELS", READ_MODELS)
    env = service_env(db_path)
    done = await asyncio.to_thread(run_cli, "rebuild", env=env)
    assert done.returncode == 0, done.stderr
    assert (await get_json(client, errors_url))["errors"] == []


async def test_fold_errors_of_an_unknown_projection_are_404_projection_not_found(
    client: TestClient,
) -> None:
    answer = await client.get("/v1/projections/connections/errors", headers=AUTH)
    await assert_error(answer, 404, "projection_not_found")
    message = (await answer.json())["error"]["message"]
    assert "connection_health, workflow_runs" in message


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"environment": "live"}, "unknown_parameter"),
        ({"status": "x"}, "unknown_parameter"),
        ({"limit": "0"}, "invalid_limit"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
    ],
)
async def test_fold_errors_refuse_a_bad_parameter_with_400(
    client: TestClient, query: dict[str, str], code: str
) -> None:
    answer = await client.get("/v1/projections/workflow_runs/errors", params=query, headers=AUTH)
    await assert_error(answer, 400, code)


async def test_fold_errors_name_only_what_they_take_when_refusing_an_unknown_parameter(
    client: TestClient,
) -> None:
    answer = await client.get("/v1/projections/workflow_runs/errors?sort=seq", headers=AUTH)
    await assert_error(answer, 400, "unknown_parameter")
    assert (await answer.json())["error"]["message"].endswith("this endpoint takes cursor, limit")


async def test_projections_check_an_environment_they_are_given(client: TestClient) -> None:
    """The answer covers both environments, but a typo is still a 400, never ignored."""
    answer = await client.get("/v1/projections?environment=xyz", headers=AUTH)
    await assert_error(answer, 400, "invalid_environment")
    assert (await client.get("/v1/projections?environment=test", headers=AUTH)).status == 200


# --- ETags ------------------------------------------------------------------------------

READS = [
    "/v1/accounts/12345/connections",
    "/v1/accounts/12345/workflow-runs?environment=live",
    "/v1/connections?status=expired&limit=3",
    "/v1/events?environment=test&limit=20",
    "/v1/events/1",
    "/v1/projections",
]


async def test_every_200_read_carries_an_etag_and_repeats_it_with_the_same_bytes(
    client: TestClient, sample: list[Sent]
) -> None:
    for url in READS:
        first = await client.get(url, headers=AUTH)
        second = await client.get(url, headers=AUTH)
        assert first.status == second.status == 200, url
        assert first.headers["ETag"]
        assert first.headers["ETag"] == second.headers["ETag"]
        assert await first.read() == await second.read()


async def test_if_none_match_with_the_current_etag_is_304_with_an_empty_body(
    client: TestClient, sample: list[Sent]
) -> None:
    for url in READS:
        first = await client.get(url, headers=AUTH)
        tag = first.headers["ETag"]
        again = await client.get(url, headers={**AUTH, "If-None-Match": tag})
        assert again.status == 304, url
        assert await again.read() == b""
        assert again.headers["ETag"] == tag
        stale = await client.get(url, headers={**AUTH, "If-None-Match": '"not-the-tag"'})
        assert stale.status == 200


async def test_etag_changes_when_a_new_delivery_changes_the_answer(
    client: TestClient, sample: list[Sent]
) -> None:
    url = "/v1/accounts/12345/connections"
    before = await client.get(url, headers=AUTH)
    tag = before.headers["ETag"]
    body = json.dumps(
        {
            "linked_account_id": "12345",
            "environment": "live",
            "type": "General",
            "event": "Connection Expired",
            "slug": "etag-app",
            "createdAt": "Tue, 30 Jun 2026 23:59:59 GMT",
        },
        separators=(",", ":"),
    ).encode()
    await post(client, body)
    await wait_projected(client)
    after = await client.get(url, headers={**AUTH, "If-None-Match": tag})
    assert after.status == 200
    assert after.headers["ETag"] != tag
    assert "etag-app" in {c["slug"] for c in (await after.json())["connections"]}


async def test_error_answers_carry_no_etag(client: TestClient) -> None:
    answer = await client.get("/v1/workflow-runs/unknown", headers=AUTH)
    assert answer.status == 404
    assert "ETag" not in answer.headers


async def test_an_event_logged_with_undecodable_header_bytes_reads_back_escaped(
    tmp_path: Path,
) -> None:
    """Rows from before header values were escaped on receipt still answer, not 500."""
    settings = load_settings(
        db=tmp_path / "old.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN
    )
    conn = open_log(settings.db)
    old_row = replace(delivery_of(sample_bodies()[0]), headers={"user-agent": "curl\udcff"})
    log.append_batch(conn, [old_row])
    conn.close()
    async with TestClient(TestServer(build_app(settings))) as client:
        answer = await client.get("/v1/events/1?environment=live", headers=AUTH)
        assert answer.status == 200
        assert (await answer.json())["headers"] == {"user-agent": "curl\\xff"}


def connection(event: str, slug: str) -> bytes:
    """A live connection event of account acct_c."""
    payload = {
        "linked_account_id": "acct_c",
        "environment": "live",
        "event": event,
        "slug": slug,
        "createdAt": "Tue, 07 Nov 2023 08:38:33 GMT",
    }
    return json.dumps(payload).encode()


class CountingReaders(readers.ReaderPool):
    """The real reader pool, counting the connections handed out (one per database read)."""

    taken = 0

    def connection(self) -> Any:
        CountingReaders.taken += 1
        return super().connection()


async def test_a_repeated_read_model_query_costs_no_database_read_until_a_delivery_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conditional or not, a repeat is answered from memory; a folded delivery ends that."""
    monkeypatch.setattr("projector.storage.sqlite.adapter.ReaderPool", CountingReaders)
    caches: list[AnswerCache] = []  # the app's answer cache, to see when it is dropped

    def observed_cache() -> AnswerCache:
        caches.append(AnswerCache())
        return caches[-1]

    monkeypatch.setattr("projector.app.AnswerCache", observed_cache)
    settings = load_settings(
        db=tmp_path / "c.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        [cache] = caches
        banner = "/v1/accounts/acct_c/connections?environment=live"
        body = connection("Connection Created", "slack")
        assert (
            await client.post("/webhooks/refold", data=body, headers=signed(body))
        ).status == 200
        await wait_projected(client)
        # The projector's next poll (within a second) sees the fold and drops every kept
        # answer once more: a repeat is free only while the read models stand, so measure
        # again if the cache was dropped meanwhile (bounded).
        for _ in range(5):
            version = cache.version
            first = await client.get(banner, headers=AUTH)
            tag = first.headers["ETag"]
            before = CountingReaders.taken
            again = await client.get(banner, headers=AUTH)
            conditional = await client.get(banner, headers={**AUTH, "If-None-Match": tag})
            if cache.version == version:
                break
        assert cache.version == version, "the read models kept changing"
        assert (again.status, await again.read()) == (200, await first.read())
        assert again.headers["ETag"] == tag
        assert conditional.status == 304
        assert CountingReaders.taken == before  # neither touched the database

        expired = connection("Connection Expired", "gmail")
        assert (
            await client.post("/webhooks/refold", data=expired, headers=signed(expired))
        ).status == 200
        await wait_projected(client)
        changed = await client.get(banner, headers={**AUTH, "If-None-Match": tag})
        assert changed.status == 200
        assert (await changed.json())["needs_reconnect"] is True
        assert CountingReaders.taken > before


async def test_a_read_the_database_cannot_answer_is_a_503_to_retry_not_a_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down or cut off (PostgreSQL restarting): the reader is told to come back, as documented."""

    async def database_away(*args: object, **kwargs: object) -> None:
        raise StorageUnavailable("PostgreSQL at postgresql://u:***@db/refold failed while reading")

    monkeypatch.setattr(SqlReads, "list_connections", database_away)
    answer = await client.get("/v1/connections?environment=live", headers=AUTH)
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "5"
    assert (await answer.json())["error"]["code"] == "storage_unavailable"
