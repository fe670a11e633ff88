"""subscribe, subscriptions, unsubscribe: run as a user runs them, against a fake of Refold's API.

The fake follows Refold's API reference: `x-api-key` picks the environment (401 without a
known key), POST needs `webhook_url` matching ^https?:// and a non-empty `webhook_events`,
answers carry `_id`, `environment`, `webhook_url`, `webhook_events`, `is_enabled`,
`createdAt`, and DELETE answers the remaining list.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from projector.subscriptions import FOLDED_EVENTS, Subscription, plan_subscription
from tests.support import (
    LIVE_KEY,
    LIVE_OLD_KEY,
    TEST_KEY,
    ThreadedSite,
    free_port,
    run_cli,
    service_env,
)

PATH = "/api/v2/public/webhook"
URL = "https://projector.example.com/webhooks/refold"
OTHER_URL = "https://elsewhere.example.com/hooks"
ALL_EVENTS = list(FOLDED_EVENTS)
# Refold would take any of its event names; the service folds only these.
assert "Workflow Stopped" in FOLDED_EVENTS
assert "Workflow Timed Out" in FOLDED_EVENTS


@dataclass
class FakeRefold(ThreadedSite):
    """Refold's webhook API on 127.0.0.1, in a thread of its own; records every request."""

    keys: dict[str, str] = field(default_factory=lambda: {TEST_KEY: "test", LIVE_KEY: "live"})
    subscriptions: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"test": [], "live": []}
    )
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    fail_with: int | None = None  # answer every request with this status
    hang: bool = False  # never answer (until stopped)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def add(self, environment: str, url: str, events: list[str], enabled: bool = True) -> str:
        """A subscription that exists before the command runs; its id."""
        answer = self._answer(environment, {"webhook_url": url, "webhook_events": events})
        answer["is_enabled"] = enabled
        self.subscriptions[environment].append(answer)
        return str(answer["_id"])

    def _answer(self, environment: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": f"6a313eda6d5528bdcf71{next(self._ids):04x}",
            "org_id": "org-1",
            "environment": environment,
            "is_enabled": body.get("is_enabled", True),
            "webhook_events": body["webhook_events"],
            "workflow_ids": [],
            "webhook_url": body["webhook_url"],
            "webhook_body": "{{event}}",
            "method": "POST",
            "webhook_type": "default",
            "createdAt": "2026-06-16T12:17:30.231Z",
            "updatedAt": "2026-06-16T12:17:30.231Z",
            "__v": 0,
        }

    def requests_with(self, key: str) -> list[tuple[str, str, Any]]:
        return [(m, p, b) for m, p, k, b in self.requests if k == key]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        key = request.headers.get("x-api-key")
        self.requests.append((request.method, request.path, key, body))
        if self.hang:
            await self.released.wait()
        if self.fail_with is not None:
            return web.json_response({"message": "refused by the test"}, status=self.fail_with)
        environment = self.keys.get(key or "")
        if environment is None:
            return web.json_response({"message": "Unauthorized"}, status=401)
        mine = self.subscriptions[environment]
        subscription_id = request.match_info.get("id")
        found = [s for s in mine if s["_id"] == subscription_id]
        if request.method == "GET" and subscription_id is None:
            return web.json_response(mine)
        if request.method in ("POST", "PUT"):
            problem = self._problem(body)
            if problem:
                return web.json_response({"message": problem}, status=400)
        if request.method == "POST":
            mine.append(self._answer(environment, body))
            return web.json_response(mine[-1])
        if not found:
            return web.json_response({"message": "Webhook not found"}, status=404)
        if request.method == "PUT":
            found[0].update(body)
            return web.json_response(found[0])
        if request.method == "DELETE":
            mine.remove(found[0])
            return web.json_response(mine)
        return web.json_response(found[0])

    @staticmethod
    def _problem(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be an object"
        if not re.match(r"^https?://", str(body.get("webhook_url", ""))):
            return '"webhook_url" must match ^https?://'
        events = body.get("webhook_events")
        if not isinstance(events, list) or not events:
            return '"webhook_events" must contain at least 1 item'
        return None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", PATH, self.handle)
        app.router.add_route("*", PATH + "/{id}", self.handle)


@pytest.fixture
def refold() -> Iterator[FakeRefold]:
    with FakeRefold() as fake:
        yield fake


def cli(fake_url: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = service_env(tmp_path / "unused.sqlite3", PROJECTOR_REFOLD_API=fake_url, **env)
    return run_cli(*args, env=environment, timeout=60)


def assert_no_key(result: subprocess.CompletedProcess[str]) -> None:
    for key in (TEST_KEY, LIVE_KEY, LIVE_OLD_KEY):
        assert key not in result.stdout + result.stderr


def assert_one_error_line(result: subprocess.CompletedProcess[str], exit_code: int) -> None:
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("projector: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert_no_key(result)


# --- the decision, on its own -------------------------------------------------------------


def subscription(url: str, events: tuple[str, ...], enabled: bool = True) -> Subscription:
    return Subscription(f"id-{url}", "test", url, events, enabled, None)


def test_plan_creates_when_no_subscription_has_the_url() -> None:
    existing = [subscription(OTHER_URL, FOLDED_EVENTS)]
    assert plan_subscription(existing, URL, FOLDED_EVENTS).action == "create"


def test_plan_leaves_a_subscription_with_the_same_events_in_any_order() -> None:
    existing = [subscription(URL, tuple(reversed(FOLDED_EVENTS)))]
    plan = plan_subscription(existing, URL, FOLDED_EVENTS)
    assert (plan.action, plan.subscription_id) == ("leave", f"id-{URL}")


def test_plan_updates_a_subscription_with_other_events_or_disabled() -> None:
    fewer = [subscription(URL, ("Workflow Errored",))]
    disabled = [subscription(URL, FOLDED_EVENTS, enabled=False)]
    for existing in (fewer, disabled):
        plan = plan_subscription(existing, URL, FOLDED_EVENTS)
        assert (plan.action, plan.subscription_id) == ("update", f"id-{URL}")


# --- subscribe ----------------------------------------------------------------------------


def test_subscribe_creates_one_subscription_per_environment_with_its_newest_key(
    refold: FakeRefold, tmp_path: Path
) -> None:
    result = cli(refold.url, tmp_path, "subscribe", URL)
    assert result.returncode == 0, result.stderr
    wanted = {"webhook_url": URL, "webhook_events": ALL_EVENTS, "is_enabled": True}
    for key in (TEST_KEY, LIVE_KEY):
        assert refold.requests_with(key) == [("GET", PATH, None), ("POST", PATH, wanted)]
    assert refold.requests_with(LIVE_OLD_KEY) == []  # the first listed live key is the newest
    test_id, live_id = (
        refold.subscriptions["test"][0]["_id"],
        refold.subscriptions["live"][0]["_id"],
    )
    assert result.stdout.splitlines() == [
        f"test: created {test_id} for {URL}: {', '.join(ALL_EVENTS)}",
        f"live: created {live_id} for {URL}: {', '.join(ALL_EVENTS)}",
    ]
    assert_no_key(result)


def test_subscribe_again_changes_nothing_and_says_so(refold: FakeRefold, tmp_path: Path) -> None:
    assert cli(refold.url, tmp_path, "subscribe", URL).returncode == 0
    refold.requests.clear()
    result = cli(refold.url, tmp_path, "subscribe", URL)
    assert result.returncode == 0, result.stderr
    assert sorted(m for m, _, _, _ in refold.requests) == ["GET", "GET"]
    assert [len(s) for s in refold.subscriptions.values()] == [1, 1]
    assert all(" as it was" in line for line in result.stdout.splitlines())
    assert len(result.stdout.splitlines()) == 2


def test_subscribe_updates_a_subscription_to_the_same_url_with_other_events(
    refold: FakeRefold, tmp_path: Path
) -> None:
    old = refold.add("test", URL, ["Workflow Errored"])
    unrelated = refold.add("test", OTHER_URL, ["Connection Expired"])
    result = cli(refold.url, tmp_path, "subscribe", URL, "--environment", "test")
    assert result.returncode == 0, result.stderr
    wanted = {"webhook_url": URL, "webhook_events": ALL_EVENTS, "is_enabled": True}
    assert refold.requests_with(TEST_KEY) == [("GET", PATH, None), ("PUT", f"{PATH}/{old}", wanted)]
    assert refold.requests_with(LIVE_KEY) == []
    assert [s["_id"] for s in refold.subscriptions["test"]] == [old, unrelated]
    assert result.stdout == f"test: updated {old} for {URL}: {', '.join(ALL_EVENTS)}\n"


def test_subscribe_events_takes_any_case_and_sends_refolds_names(
    refold: FakeRefold, tmp_path: Path
) -> None:
    args = ("subscribe", URL, "--environment", "live", "--events", "workflow errored")
    result = cli(refold.url, tmp_path, *args, "Workflow Timed Out")
    assert result.returncode == 0, result.stderr
    body = refold.requests_with(LIVE_KEY)[1][2]
    assert body["webhook_events"] == ["Workflow Errored", "Workflow Timed Out"]


def test_subscribe_refuses_an_unknown_event_with_the_known_ones(
    refold: FakeRefold, tmp_path: Path
) -> None:
    result = cli(refold.url, tmp_path, "subscribe", URL, "--events", "Workflow Exploded")
    assert result.returncode == 2
    assert "'Workflow Exploded' is not an event this service folds" in result.stderr
    assert all(repr(event) in result.stderr for event in FOLDED_EVENTS)
    assert refold.requests == []


def test_subscribe_refuses_plain_http_unless_allowed(refold: FakeRefold, tmp_path: Path) -> None:
    plain = "http://127.0.0.1:8080/webhooks/refold"
    refused = cli(refold.url, tmp_path, "subscribe", plain)
    assert_one_error_line(refused, 2)
    assert "--allow-http" in refused.stderr
    assert refold.requests == []
    allowed = cli(refold.url, tmp_path, "subscribe", plain, "--allow-http", "--environment", "test")
    assert allowed.returncode == 0, allowed.stderr
    assert refold.subscriptions["test"][0]["webhook_url"] == plain


def test_subscribe_without_a_key_for_an_environment_is_a_configuration_error(
    refold: FakeRefold, tmp_path: Path
) -> None:
    result = cli(refold.url, tmp_path, "subscribe", URL, PROJECTOR_SIGNING_KEYS=f"test:{TEST_KEY}")
    assert_one_error_line(result, 2)
    assert "PROJECTOR_SIGNING_KEYS has no live key" in result.stderr
    assert refold.requests == []


# --- subscriptions ------------------------------------------------------------------------


def test_subscriptions_marks_this_services_and_names_uncovered_events(
    refold: FakeRefold, tmp_path: Path
) -> None:
    mine = refold.add("test", URL, ["Workflow Errored", "Connection Expired"])
    refold.add("test", OTHER_URL, ALL_EVENTS)  # covers all, but not this service
    refold.add("live", URL, ALL_EVENTS, enabled=False)
    public = "https://projector.example.com/"
    result = cli(refold.url, tmp_path, "subscriptions", PROJECTOR_PUBLIC_URL=public)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    marked = [line for line in lines if line.startswith("*  ")]
    assert len(marked) == 2
    assert mine in marked[0]
    assert marked[1].startswith("*  live ")
    assert not any(OTHER_URL in line for line in marked)
    missing_test = [e for e in ALL_EVENTS if e not in ("Workflow Errored", "Connection Expired")]
    assert f"test: not subscribed to this service: {', '.join(missing_test)}" in lines
    assert f"live: not subscribed to this service: {', '.join(ALL_EVENTS)}" in lines
    assert {m for m, _, _, _ in refold.requests} == {"GET"}

    as_json = cli(refold.url, tmp_path, "subscriptions", "--json", PROJECTOR_PUBLIC_URL=public)
    answer = json.loads(as_json.stdout)
    assert answer["this_service_url"] == URL
    test_part = answer["environments"]["test"]
    assert [s["this_service"] for s in test_part["subscriptions"]] == [True, False]
    assert test_part["uncovered_events"] == missing_test
    assert answer["environments"]["live"]["subscriptions"][0]["is_enabled"] is False


def test_subscriptions_without_a_public_url_count_every_enabled_subscription(
    refold: FakeRefold, tmp_path: Path
) -> None:
    refold.add("test", OTHER_URL, ALL_EVENTS)
    result = cli(refold.url, tmp_path, "subscriptions", "--json", "--environment", "test")
    answer = json.loads(result.stdout)
    assert answer["this_service_url"] is None
    assert answer["environments"]["test"]["uncovered_events"] == []
    assert list(answer["environments"]) == ["test"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROJECTOR_PUBLIC_URL", "projector.example.com"),
        ("PROJECTOR_PUBLIC_URL", "https://projector.example.com/?x=1"),
        ("PROJECTOR_REFOLD_TIMEOUT_SECONDS", "0"),
    ],
)
def test_a_malformed_setting_is_a_configuration_error_naming_it(
    refold: FakeRefold, tmp_path: Path, variable: str, value: str
) -> None:
    result = cli(refold.url, tmp_path, "subscriptions", **{variable: value})
    assert_one_error_line(result, 2)
    assert variable in result.stderr
    assert refold.requests == []


def test_a_refold_api_that_is_not_an_address_is_a_configuration_error(tmp_path: Path) -> None:
    result = cli("app.refold.ai", tmp_path, "subscriptions")
    assert_one_error_line(result, 2)
    assert "PROJECTOR_REFOLD_API is 'app.refold.ai'" in result.stderr


# --- unsubscribe --------------------------------------------------------------------------


def test_unsubscribe_deletes_only_subscriptions_to_that_url(
    refold: FakeRefold, tmp_path: Path
) -> None:
    test_mine = refold.add("test", URL, ALL_EVENTS)
    test_other = refold.add("test", OTHER_URL, ALL_EVENTS)
    live_mine = refold.add("live", URL, ["Workflow Errored"])
    result = cli(refold.url, tmp_path, "unsubscribe", URL)
    assert result.returncode == 0, result.stderr
    assert refold.requests_with(TEST_KEY) == [
        ("GET", PATH, None),
        ("DELETE", f"{PATH}/{test_mine}", None),
    ]
    assert refold.requests_with(LIVE_KEY) == [
        ("GET", PATH, None),
        ("DELETE", f"{PATH}/{live_mine}", None),
    ]
    assert [s["_id"] for s in refold.subscriptions["test"]] == [test_other]
    assert refold.subscriptions["live"] == []
    again = cli(refold.url, tmp_path, "unsubscribe", URL, "--environment", "live")
    assert again.stdout == f"live: no subscription for {URL}, nothing to do\n"


# --- Refold's errors ------------------------------------------------------------------------


def test_a_key_refold_does_not_know_is_one_line_and_exit_1(
    refold: FakeRefold, tmp_path: Path
) -> None:
    keys = f"test:{TEST_KEY},live:{LIVE_OLD_KEY}"  # the old live key: revoked in Refold
    result = cli(refold.url, tmp_path, "subscribe", URL, PROJECTOR_SIGNING_KEYS=keys)
    assert_one_error_line(result, 1)
    assert "Refold refused the live API key (HTTP 401)" in result.stderr
    assert "PROJECTOR_SIGNING_KEYS" in result.stderr


@pytest.mark.parametrize(
    ("status", "wanted"),
    [
        (403, "Refold refused the test API key (HTTP 403)"),
        (422, 'Refold refused the request (HTTP 422: {"message": "refused by the test"})'),
        (500, "Refold failed (HTTP 500"),
    ],
)
def test_refolds_refusals_are_one_line_and_exit_1(
    refold: FakeRefold, tmp_path: Path, status: int, wanted: str
) -> None:
    refold.fail_with = status
    for args in (("subscribe", URL), ("subscriptions",), ("unsubscribe", URL)):
        result = cli(refold.url, tmp_path, *args, "--environment", "test")
        assert_one_error_line(result, 1)
        assert wanted in result.stderr
        assert f"GET {refold.url}{PATH} (test)" in result.stderr


def test_nothing_listening_at_refolds_address_is_one_line_and_exit_1(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = cli(nowhere, tmp_path, "subscriptions")
    assert_one_error_line(result, 1)
    assert "cannot reach Refold" in result.stderr
    assert "PROJECTOR_REFOLD_API" in result.stderr


def test_refold_not_answering_times_out_in_one_line_and_exit_1(
    refold: FakeRefold, tmp_path: Path
) -> None:
    refold.hang = True
    args = ("subscribe", URL, "--environment", "live")
    result = cli(refold.url, tmp_path, *args, PROJECTOR_REFOLD_TIMEOUT_SECONDS="1")
    assert_one_error_line(result, 1)
    assert "Refold did not answer within 1 s" in result.stderr
    assert [m for m, _, _, _ in refold.requests] == ["GET"]
