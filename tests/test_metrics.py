"""GET /metrics on the whole app: names, labels and exact counts; the access log."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from projector.app import build_app
from projector.config import load_settings
from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS
from tests.storage_support import BROKEN_BODY, fail_on_broken_slug
from tests.support import (
    AUTH,
    READ_TOKEN,
    SIGNING_KEYS,
    TEST_KEY,
    Service,
    signed,
    wait_projected,
)

WEBHOOK = "/webhooks/refold"
ACCOUNT = "acct_4471_private"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def connection_body(account: str = ACCOUNT, environment: str = "live", **changes: Any) -> bytes:
    payload = {
        "linked_account_id": account,
        "org_id": "645270e37917442c4307297a",
        "environment": environment,
        "type": "General",
        "event": "Connection Expired",
        "slug": "pipedrive",
        "createdAt": "Tue, 07 Nov 2023 08:38:33 GMT",
        **changes,
    }
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


async def scrape(client: TestClient) -> Samples:
    """GET /metrics with the token, parsed by prometheus_client's own text parser."""
    answer = await client.get("/metrics", headers=AUTH)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    return parsed(await answer.text())


def parsed(text: str) -> Samples:
    """A scrape's samples, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled series was never touched."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


async def post(client: TestClient, body: bytes, key: str | None = None, **headers: str) -> int:
    sent = signed(body) if key is None else signed(body, key)
    answer = await client.post(WEBHOOK, data=body, headers={**sent, **headers})
    return answer.status


async def test_metrics_needs_a_read_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-configured-token"}):
        answer = await client.get("/metrics", headers=headers)
        assert answer.status == 401
        assert (await answer.json())["error"]["code"] == "unauthorised"
    assert (await client.get("/metrics", headers=AUTH)).status == 200


async def test_stored_deliveries_are_counted_by_environment_and_outcome(
    client: TestClient,
) -> None:
    flagged = connection_body(slug=None)  # missing_field:slug
    assert await post(client, connection_body()) == 200  # new
    assert await post(client, connection_body()) == 200  # duplicate
    assert await post(client, flagged) == 200  # flagged
    assert await post(client, flagged) == 200  # flagged and a repeat: flagged only
    assert await post(client, connection_body(environment="test"), TEST_KEY) == 200
    samples = await scrape(client)
    assert {
        (labels["environment"], labels["outcome"]): value(
            samples, "projector_deliveries_total", **labels
        )
        for labels in series(samples, "projector_deliveries_total")
    } == {("live", "new"): 1, ("live", "duplicate"): 1, ("live", "flagged"): 2, ("test", "new"): 1}
    # Each of the five was timed from its body to its commit, and committed in some batch.
    assert value(samples, "projector_append_seconds_count") == 5
    assert value(samples, "projector_append_seconds_bucket", le="+Inf") == 5
    assert value(samples, "projector_commit_batch_size_sum") == 5
    assert 1 <= value(samples, "projector_commit_batch_size_count") <= 5
    assert series(samples, "projector_deliveries_refused_total") == []


async def test_refused_deliveries_are_counted_by_status_and_reason(
    aiohttp_client: Any, db_path: Path
) -> None:
    settings = load_settings(
        db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN, max_body_bytes=2048
    )
    client = await aiohttp_client(build_app(settings))
    body = connection_body()
    wrong_key = "pk_rotated_on_one_side_only"
    assert await post(client, body, wrong_key) == 401
    assert await post(client, body, wrong_key) == 401
    assert await post(client, b"x" * 4096) == 413
    assert await post(client, gzip.compress(body), **{"Content-Encoding": "gzip"}) == 415
    refuse_inserts(db_path)
    assert await post(client, body) == 503
    samples = await scrape(client)
    name = "projector_deliveries_refused_total"
    assert {
        (labels["status"], labels["reason"]): value(samples, name, **labels)
        for labels in series(samples, name)
    } == {
        ("401", "invalid_signature"): 2,
        ("413", "body_too_large"): 1,
        ("415", "unsupported_encoding"): 1,
        ("503", "storage_unavailable"): 1,
    }
    assert series(samples, "projector_deliveries_total") == []
    assert value(samples, "projector_append_seconds_count") == 0


def refuse_inserts(db: Path) -> None:
    """Make every insert into the log fail from another connection, as a full disk would."""
    saboteur = sqlite3.connect(db)
    saboteur.execute(
        "CREATE TRIGGER refuse_inserts BEFORE INSERT ON deliveries"
        " BEGIN SELECT RAISE(ABORT, 'inserts refused by the test'); END"
    )
    saboteur.commit()
    saboteur.close()


async def test_http_requests_are_labelled_by_route_template_never_by_path(
    client: TestClient,
) -> None:
    assert (await client.get(f"/v1/accounts/{ACCOUNT}/connections", headers=AUTH)).status == 200
    assert (await client.get(f"/v1/accounts/{ACCOUNT}/connections")).status == 401
    assert (await client.get(f"/v1/workflow-runs/{ACCOUNT}", headers=AUTH)).status == 404
    assert (await client.get(f"/no/such/{ACCOUNT}", headers=AUTH)).status == 404
    assert await post(client, connection_body()) == 200
    samples = await scrape(client)
    requests = "projector_http_requests_total"
    account_route = "/v1/accounts/{linked_account_id}/connections"
    assert value(samples, requests, route=account_route, method="GET", status="200") == 1
    assert value(samples, requests, route=account_route, method="GET", status="401") == 1
    run_route = "/v1/workflow-runs/{instance_id}"
    assert value(samples, requests, route=run_route, method="GET", status="404") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert value(samples, requests, route=WEBHOOK, method="POST", status="200") == 1
    assert value(samples, "projector_http_request_seconds_count", route=account_route) == 2
    # No label value anywhere holds the account id of a path.
    assert all(ACCOUNT not in v for _, labels in samples for _, v in labels)


async def test_log_head_positions_and_lag_are_read_at_scrape_time(client: TestClient) -> None:
    for minute in range(3):
        assert await post(client, connection_body(createdAt=f"2026-06-01T10:0{minute}:00Z")) == 200
    await wait_projected(client)
    samples = await scrape(client)
    assert value(samples, "projector_log_head_seq") == 3
    for name in ("connection_health", "workflow_runs"):
        assert value(samples, "projector_projection_position", projection=name) == 3
        assert value(samples, "projector_projection_lag_seconds", projection=name) == 0
        assert value(samples, "projector_fold_errors_total", projection=name) == 0


async def test_lag_is_the_age_of_the_oldest_delivery_a_projection_has_not_folded(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await with_an_hour_old_backlog(aiohttp_client, db_path)
    samples = await scrape(client)
    assert value(samples, "projector_log_head_seq") == 1
    for name in ("connection_health", "workflow_runs"):
        assert value(samples, "projector_projection_position", projection=name) == 0
        lag = value(samples, "projector_projection_lag_seconds", projection=name)
        assert 3600 <= lag < 2 * 3600


async def with_an_hour_old_backlog(aiohttp_client: Any, db_path: Path) -> TestClient:
    """A stalled projector (checkpoints refused) and one delivery received an hour ago."""
    settings = load_settings(db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    client: TestClient = await aiohttp_client(build_app(settings, clock=lambda: an_hour_ago))
    stall_projections(db_path)
    assert await post(client, connection_body()) == 200
    return client


def stall_projections(db: Path) -> None:
    """Make every projection checkpoint fail from another connection: nothing gets folded."""
    saboteur = sqlite3.connect(db)
    saboteur.execute(
        "CREATE TRIGGER stall_projections BEFORE UPDATE ON projections"
        " BEGIN SELECT RAISE(ABORT, 'projection stalled by the test'); END"
    )
    saboteur.commit()
    saboteur.close()


async def test_fold_errors_are_counted_per_projection(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr("projector.storage.sqlite.projection.READ_MODELS", (broken, WORKFLOW_RUNS))
    assert await post(client, BROKEN_BODY) == 200
    assert await post(client, connection_body()) == 200
    await wait_projected(client)
    samples = await scrape(client)
    assert value(samples, "projector_fold_errors_total", projection="connection_health") == 1
    assert value(samples, "projector_fold_errors_total", projection="workflow_runs") == 0


async def test_metrics_are_served_without_the_storage_gauges_when_the_log_cannot_be_read(
    aiohttp_client: Any, db_path: Path
) -> None:
    """The refusal counters matter most when storage fails: a scrape must not 500 then."""
    settings = load_settings(db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)
    client = await aiohttp_client(build_app(settings))
    assert await post(client, connection_body(), "pk_rotated_on_one_side_only") == 401
    saboteur = sqlite3.connect(db_path)
    saboteur.execute("ALTER TABLE projections RENAME TO projections_moved_by_the_test")
    saboteur.commit()
    saboteur.close()
    with capture_logs() as logged:
        samples = await scrape(client)
    name = "projector_deliveries_refused_total"
    assert value(samples, name, status="401", reason="invalid_signature") == 1
    assert "projector_log_head_seq" not in {sample_name for sample_name, _ in samples}
    assert [e["event"] for e in logged if e["log_level"] == "warning"] == [
        "metrics_storage_unreadable"
    ]


async def test_two_apps_in_one_process_keep_their_own_counts(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    clients = []
    for name in ("one", "two"):
        settings = load_settings(
            db=tmp_path / f"{name}.sqlite3", signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN
        )
        clients.append(await aiohttp_client(build_app(settings)))
    assert await post(clients[0], connection_body()) == 200
    first, second = [await scrape(c) for c in clients]
    name = "projector_deliveries_total"
    assert value(first, name, environment="live", outcome="new") == 1
    assert value(second, name, environment="live", outcome="new") == 0


async def test_the_process_and_platform_collectors_are_exposed(client: TestClient) -> None:
    samples = await scrape(client)
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


# --- the access log ------------------------------------------------------------------------


async def access_logged_client(aiohttp_client: Any, db_path: Path, enabled: bool) -> TestClient:
    settings = load_settings(
        db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN, access_log=enabled
    )
    client: TestClient = await aiohttp_client(build_app(settings))
    return client


async def test_the_access_log_has_one_line_per_request_without_token_path_or_body(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await access_logged_client(aiohttp_client, db_path, enabled=True)
    body = connection_body()
    with capture_logs() as logged:
        assert (await client.get(f"/v1/accounts/{ACCOUNT}/connections", headers=AUTH)).status == 200
        assert await post(client, body) == 200
        assert (await client.get("/metrics")).status == 401
    lines = [entry for entry in logged if entry["event"] == "request"]
    assert [(e["route"], e["method"], e["status"]) for e in lines] == [
        ("/v1/accounts/{linked_account_id}/connections", "GET", 200),
        (WEBHOOK, "POST", 200),
        ("/metrics", "GET", 401),
    ]
    for entry in lines:
        assert entry["remote"] == "127.0.0.1"
        assert entry["duration_ms"] >= 0
        assert entry["log_level"] == "info"
    text = repr(logged)
    for never in (READ_TOKEN, ACCOUNT, signed(body)["x-cobalt-signature"], "pipedrive"):
        assert never not in text


async def test_without_access_log_no_request_is_logged(aiohttp_client: Any, db_path: Path) -> None:
    client = await access_logged_client(aiohttp_client, db_path, enabled=False)
    with capture_logs() as logged:
        assert (await client.get("/healthz")).status == 200
        assert await post(client, connection_body()) == 200
    assert [entry for entry in logged if entry["event"] == "request"] == []


# --- a real `projector serve` -------------------------------------------------------------


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


@pytest.mark.e2e
def test_a_served_process_exposes_metrics_and_writes_json_access_lines(db_path: Path) -> None:
    service = Service(db_path, extra_env={"PROJECTOR_ACCESS_LOG": "true"}).start()
    try:
        body = connection_body()
        posted = urllib.request.Request(
            f"{service.url}{WEBHOOK}", data=body, headers=signed(body), method="POST"
        )
        with urllib.request.urlopen(posted, timeout=10) as answer:
            assert answer.status == 200
        assert http_get(f"{service.url}/metrics")[0] == 401
        status, text = http_get(f"{service.url}/metrics", AUTH)
        assert status == 200
        (family,) = [
            f for f in text_string_to_metric_families(text) if f.name == "projector_deliveries"
        ]
        assert [
            (s.name, s.labels, s.value) for s in family.samples if s.name.endswith("_total")
        ] == [("projector_deliveries_total", {"environment": "live", "outcome": "new"}, 1.0)]
        assert http_get(f"{service.url}/readyz") == (200, '{"status":"ready"}')
    finally:
        assert service.stop() == 0
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("message") == "request"]
    # Service.start polled /healthz until the process answered: those lines come first.
    assert [(r["route"], r["status"]) for r in requests if r["route"] != "/healthz"] == [
        (WEBHOOK, 200),
        ("/metrics", 401),
        ("/metrics", 200),
        ("/readyz", 200),
    ]
    assert READ_TOKEN not in service.logs()


@pytest.mark.e2e
def test_a_change_stream_is_counted_when_it_ends_but_never_timed(db_path: Path) -> None:
    """A stream's duration is its life, not a latency: it stays out of the histogram."""
    # A real process: aiohttp's test server cancels a handler whose client hangs up.
    heartbeat = {"PROJECTOR_STREAM_HEARTBEAT_SECONDS": "0.05"}  # a hang-up is seen at once
    service = Service(db_path, extra_env=heartbeat).start()
    changes, requests = "/v1/changes", "projector_http_requests_total"
    try:
        opened = urllib.request.Request(f"{service.url}{changes}", headers=AUTH)
        with urllib.request.urlopen(opened, timeout=10) as stream:
            assert stream.status == 200
            assert stream.readline().startswith(b": changes after seq")
        for _ in range(200):  # bounded: 10 s at most for the server to notice the hang-up
            samples = parsed(http_get(f"{service.url}/metrics", AUTH)[1])
            if value(samples, requests, route=changes, method="GET", status="200"):
                break
            time.sleep(0.05)
        assert value(samples, requests, route=changes, method="GET", status="200") == 1
        assert value(samples, "projector_http_request_seconds_count", route=changes) == 0
        assert value(samples, "projector_http_request_seconds_count", route="/metrics") >= 1
    finally:
        assert service.stop() == 0


async def test_the_one_sqlite_process_reports_that_it_folds(client: TestClient) -> None:
    samples = parsed(await (await client.get("/metrics", headers=AUTH)).text())
    assert value(samples, "projector_folding") == 1.0
