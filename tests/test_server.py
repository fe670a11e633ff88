"""projector.server: the event loop `projector serve` runs on (uvloop, else asyncio's own)."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import pytest
import uvloop

from projector.server import run_event_loop
from tests.postgres_support import fresh_database
from tests.support import AUTH, Service, signed, wait_projected_http

BODY = (
    b'{"linked_account_id":"acct_1","org_id":"645270e37917442c4307297a","environment":"live",'
    b'"type":"General","event":"Connection Created","slug":"slack",'
    b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}'
)


def loop_type_under_run_event_loop() -> type[asyncio.AbstractEventLoop]:
    seen: list[type[asyncio.AbstractEventLoop]] = []

    async def record() -> None:
        seen.append(type(asyncio.get_running_loop()))

    run_event_loop(record())
    return seen[0]


def test_the_server_loop_is_uvloop() -> None:
    assert loop_type_under_run_event_loop() is uvloop.Loop


def test_without_uvloop_the_server_loop_is_asyncios_own() -> None:
    with mock.patch.dict(sys.modules, {"uvloop": None}):  # import uvloop raises ImportError
        loop_type = loop_type_under_run_event_loop()
    assert not issubclass(loop_type, uvloop.Loop)
    assert loop_type.__module__.startswith("asyncio")


def listening_line(service: Service) -> dict[str, object]:
    for line in service.logs().splitlines():
        if line.startswith("{") and json.loads(line).get("message") == "listening":
            return dict(json.loads(line))
    raise AssertionError(f"no `listening` line in:\n{service.logs()}")


def post_and_read_back(service: Service) -> dict[str, object]:
    request = urllib.request.Request(
        f"{service.url}/webhooks/refold", data=BODY, headers=signed(BODY), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    wait_projected_http(service.url)
    read = urllib.request.Request(
        f"{service.url}/v1/accounts/acct_1/connections?environment=live", headers=AUTH
    )
    with urllib.request.urlopen(read, timeout=10) as answer:
        return dict(json.loads(answer.read()))


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_serve_runs_on_uvloop_and_ingests_and_answers(engine: str, tmp_path: Path) -> None:
    with fresh_database() if engine == "postgresql" else nullcontext() as url:
        extra = {"PROJECTOR_DB": url.url} if url is not None else {}
        service = Service(tmp_path / "projector.sqlite3", extra_env=extra).start()
        try:
            assert listening_line(service)["event_loop"] == "uvloop"
            answer = post_and_read_back(service)
        finally:
            service.stop()
    assert "slack" in json.dumps(answer)
