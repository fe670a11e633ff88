"""projector.client against a real server: typed answers, errors, and the change stream."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from projector import answers
from projector.app import build_app
from projector.client import (
    Change,
    ConnectionChanged,
    ProjectorClient,
    ProjectorError,
    WorkflowRunChanged,
)
from projector.config import Settings, load_settings
from tests.changes_support import connection_body, deliver, get_body, open_stream, run_body
from tests.support import READ_TOKEN, REPO, SIGNING_KEYS, free_port


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TestServer]:
    running = TestServer(build_app(settings), host="127.0.0.1")
    await running.start_server()
    yield running
    await running.close()


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    return json.loads(await get_body(http, url))


async def test_every_query_returns_the_answer_model_of_what_get_answers(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    url = url_of(server)
    seq = await deliver(http, url, connection_body("acct_1"))
    await deliver(http, url, run_body("run_1", "acct_1", "Workflow Errored"))

    async with ProjectorClient(url, READ_TOKEN) as client:
        pairs: list[tuple[answers.Answer, str]] = [
            (await client.account_connections("acct_1"), "/v1/accounts/acct_1/connections"),
            (
                await client.connections(status="expired", limit=5),
                "/v1/connections?status=expired&limit=5",
            ),
            (await client.workflow_run("run_1"), "/v1/workflow-runs/run_1"),
            (
                await client.account_runs("acct_1", status="errored"),
                "/v1/accounts/acct_1/workflow-runs?status=errored",
            ),
            (
                await client.events(linked_account_id="acct_1", flagged=False),
                "/v1/events?linked_account_id=acct_1&flagged=false",
            ),
            (await client.event(seq), f"/v1/events/{seq}"),
            (await client.projections(), "/v1/projections"),
            (await client.fold_errors("workflow_runs"), "/v1/projections/workflow_runs/errors"),
        ]
        for answer, path in pairs:
            assert answer.model_dump(mode="json") == await get_json(http, url + path), path
    banner = pairs[0][0]
    assert isinstance(banner, answers.AccountConnections)
    assert banner.needs_reconnect


async def test_an_error_answer_raises_projector_error_with_its_code(server: TestServer) -> None:
    async with ProjectorClient(url_of(server), READ_TOKEN) as client:
        with pytest.raises(ProjectorError) as unknown:
            await client.workflow_run("no_such_run")
        assert (unknown.value.status, unknown.value.code) == (404, "run_not_found")
        with pytest.raises(ProjectorError) as bad:
            await client.connections(status="broken")
        assert (bad.value.status, bad.value.code) == (400, "invalid_status")
    async with ProjectorClient(url_of(server), "not-the-token") as wrong:
        with pytest.raises(ProjectorError) as refused:
            await wrong.projections()
        assert (refused.value.status, refused.value.code) == (401, "unauthorised")
        assert "not-the-token" not in repr(wrong)


async def test_an_account_id_with_a_slash_or_space_stays_one_path_segment(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    account = "team/ops one"
    await deliver(http, url_of(server), connection_body(account))
    async with ProjectorClient(url_of(server), READ_TOKEN) as client:
        banner = await client.account_connections(account)
    assert banner.linked_account_id == account
    assert [c.slug for c in banner.connections] == ["gmail"]


async def next_change(changes: AsyncGenerator[Change, None]) -> Change:
    async with asyncio.timeout(10):
        return await anext(changes)


async def test_changes_yields_typed_changes_with_their_seqs(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    url = url_of(server)
    async with ProjectorClient(url, READ_TOKEN) as client:
        changes = client.changes(linked_account_id="acct_1", last_event_id=0)
        banner_seq = await deliver(http, url, connection_body("acct_1"))
        run_seq = await deliver(http, url, run_body("run_1", "acct_1"))

        banner, run = await next_change(changes), await next_change(changes)
        await changes.aclose()

    assert isinstance(banner, ConnectionChanged)
    assert banner.seq == banner_seq
    assert banner.banner == await client_free_banner(http, url, "acct_1")
    assert isinstance(run, WorkflowRunChanged)
    assert run.seq == run_seq
    assert (run.run.instance_id, run.run.status) == ("run_1", "completed")


async def client_free_banner(
    http: aiohttp.ClientSession, url: str, account: str
) -> answers.AccountConnections:
    document = await get_json(http, f"{url}/v1/accounts/{account}/connections")
    return answers.AccountConnections.model_validate_json(json.dumps(document))


async def test_changes_resume_after_a_server_restart_with_nothing_lost_or_repeated(
    settings: Settings, http: aiohttp.ClientSession, db_path: Path
) -> None:
    port = free_port()
    first = TestServer(build_app(settings), host="127.0.0.1", port=port)
    await first.start_server()
    url = url_of(first)
    async with ProjectorClient(url, READ_TOKEN, reconnect_seconds=0.05) as client:
        changes = client.changes(last_event_id=0)
        before = await deliver(http, url, connection_body("acct_1"))
        assert (await next_change(changes)).seq == before

        await first.close()  # the stream ends; the client reconnects until a server answers
        second = TestServer(build_app(settings), host="127.0.0.1", port=port)
        await second.start_server()
        try:
            after = [
                await deliver(http, url, run_body("run_1", "acct_1")),
                await deliver(http, url, connection_body("acct_2")),
            ]
            seqs = [(await next_change(changes)).seq for _ in after]
            await changes.aclose()
        finally:
            await second.close()
    assert seqs == after


class Notified(Exception):
    """Raised by the README example's `notify`, to end its endless loop."""


async def test_the_readme_example_runs_as_shown(
    server: TestServer, http: aiohttp.ClientSession
) -> None:
    readme = (REPO / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    url = url_of(server)
    source = example.replace("http://127.0.0.1:8080", url)
    imports, _, body = source.partition("\n\n")
    code = imports + "\n\nasync def example():\n" + textwrap.indent(body, "    ")
    namespace: dict[str, Any] = {"token": READ_TOKEN}

    def notify(account: str) -> None:
        raise Notified(account)

    namespace["notify"] = notify
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    running = asyncio.ensure_future(namespace["example"]())
    try:
        # The example's stream starts from "now": expire connections until one reaches it.
        async with asyncio.timeout(10):
            for n in range(1000):
                await deliver(http, url, connection_body("acct_readme", slug=f"app{n}"))
                done, _ = await asyncio.wait({running}, timeout=0.05)
                if done:
                    break
        with pytest.raises(Notified, match="acct_readme"):
            await running
    finally:
        running.cancel()


async def test_changes_retries_a_503_after_its_retry_after_and_then_streams(
    aiohttp_server: Any, db_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = load_settings(
        db=db_path,
        signing_keys=SIGNING_KEYS,
        read_tokens=READ_TOKEN,
        max_streams=1,
        stream_heartbeat_seconds=0.1,
    )
    url = url_of(await aiohttp_server(build_app(settings)))
    statuses: list[int] = []
    refused = asyncio.Event()

    async def on_request_end(session: object, context: object, params: Any) -> None:
        statuses.append(params.response.status)
        if params.response.status == 503:
            refused.set()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_end.append(on_request_end)
    holder = await open_stream(http, url)  # the only stream allowed
    async with (
        aiohttp.ClientSession(trace_configs=[tracing]) as session,
        ProjectorClient(url, READ_TOKEN, session=session) as client,
    ):
        changes = client.changes(last_event_id=0)
        receiving = asyncio.ensure_future(next_change(changes))
        async with asyncio.timeout(10):
            await refused.wait()
        holder.response.close()  # the slot frees; the client comes back after Retry-After
        seq = await deliver(http, url, connection_body("acct_1"))
        change = await asyncio.wait_for(receiving, 30)
        await changes.aclose()
    assert change.seq == seq
    assert statuses == [503, 200]
