"""A typed Python client of the query API and of the change stream, on aiohttp.

async with ProjectorClient("http://127.0.0.1:8080", token) as client:
    banner = await client.account_connections("12345")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError
from yarl import URL

from projector import answers

AnswerT = TypeVar("AnswerT", bound=answers.Answer)
Query = Mapping[str, str | int | bool | None]


class ProjectorError(Exception):
    """The service answered an error: its status and the error's code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ConnectionChanged:
    """An account's banner changed: `banner` is its answer now, `seq` the delivery behind it."""

    seq: int
    banner: answers.AccountConnections


@dataclass(frozen=True)
class WorkflowRunChanged:
    """A workflow run changed: `run` is its summary now, `seq` the delivery behind it."""

    seq: int
    run: answers.WorkflowRunSummary


Change = ConnectionChanged | WorkflowRunChanged


@dataclass
class _Event:
    kind: str = "message"
    data: str = ""
    id: str | None = None


class ProjectorClient:
    """The /v1 API as typed calls; every answer is the pydantic model of `answers`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        reconnect_seconds: float = 1.0,
        idle_timeout_seconds: float = 60.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        # A trailing '/' so that paths join under it: http://host/projector/ + v1/...
        self._url = URL(url.rstrip("/") + "/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._reconnect_seconds = reconnect_seconds
        # Four heartbeats at the service's default period: a silent stream is a dead one.
        self._idle_timeout = idle_timeout_seconds
        # Your own session (its connection pool, trace configs) is used, and left open.
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:  # never the token
        return f"ProjectorClient({str(self._url).rstrip('/')!r})"

    async def __aenter__(self) -> ProjectorClient:
        if self._owns_session:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session, if the client opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the query API ------------------------------------------------------------------

    async def account_connections(
        self, linked_account_id: str, *, environment: str = "live"
    ) -> answers.AccountConnections:
        """The reconnect banner of one account."""
        path = ("v1", "accounts", linked_account_id, "connections")
        return await self._get(answers.AccountConnections, path, {"environment": environment})

    async def connections(
        self,
        *,
        environment: str = "live",
        status: str | None = None,
        slug: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> answers.ConnectionList:
        """One page of connections by account and app."""
        query: dict[str, str | int | bool | None] = {"environment": environment}
        query.update(status=status, slug=slug, limit=limit, cursor=cursor)
        return await self._get(answers.ConnectionList, ("v1", "connections"), query)

    async def workflow_run(
        self,
        instance_id: str,
        *,
        environment: str = "live",
        limit: int | None = None,
        cursor: str | None = None,
    ) -> answers.WorkflowRunAnswer:
        """One run with a page of its deliveries; ProjectorError `run_not_found` if unknown."""
        query = {"environment": environment, "limit": limit, "cursor": cursor}
        path = ("v1", "workflow-runs", instance_id)
        return await self._get(answers.WorkflowRunAnswer, path, query)

    async def account_runs(
        self,
        linked_account_id: str,
        *,
        environment: str = "live",
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> answers.WorkflowRunList:
        """One page of an account's runs."""
        query: dict[str, str | int | bool | None] = {"environment": environment}
        query.update(status=status, workflow_id=workflow_id, limit=limit, cursor=cursor)
        path = ("v1", "accounts", linked_account_id, "workflow-runs")
        return await self._get(answers.WorkflowRunList, path, query)

    async def events(
        self,
        *,
        environment: str = "live",
        linked_account_id: str | None = None,
        event: str | None = None,
        after: int | None = None,
        flagged: bool | None = None,
        flag: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> answers.AuditEventList:
        """One page of the audit trail."""
        query: dict[str, str | int | bool | None] = {"environment": environment}
        query.update(linked_account_id=linked_account_id, event=event, after=after)
        query.update(flagged=flagged, flag=flag, limit=limit, cursor=cursor)
        return await self._get(answers.AuditEventList, ("v1", "events"), query)

    async def event(self, seq: int, *, environment: str = "live") -> answers.AuditEventDetail:
        """One delivery with its exact bytes; ProjectorError `event_not_found` if none."""
        path = ("v1", "events", str(seq))
        return await self._get(answers.AuditEventDetail, path, {"environment": environment})

    async def projections(self) -> answers.Projections:
        """The log head and where every projection stands."""
        return await self._get(answers.Projections, ("v1", "projections"), {})

    async def fold_errors(
        self, name: str, *, limit: int | None = None, cursor: str | None = None
    ) -> answers.FoldErrorList:
        """One page of the events projection `name` raised on."""
        path = ("v1", "projections", name, "errors")
        return await self._get(answers.FoldErrorList, path, {"limit": limit, "cursor": cursor})

    # --- the change stream --------------------------------------------------------------

    async def changes(
        self,
        *,
        environment: str = "live",
        linked_account_id: str | None = None,
        last_event_id: int | None = None,
    ) -> AsyncGenerator[Change, None]:
        """Every change after `last_event_id` (or from now), forever, resuming after a drop.

        A dropped or cut-off stream is reopened with the last `id` seen as Last-Event-ID, so
        nothing is lost or repeated; a 503 is retried after its Retry-After; other errors raise.
        """
        query = {"environment": environment, "linked_account_id": linked_account_id}
        url = self._url_of(("v1", "changes"), query)
        position = None if last_event_id is None else str(last_event_id)
        while True:
            headers = dict(self._auth)
            if position is not None:
                headers["Last-Event-ID"] = position
            delay = self._reconnect_seconds
            timeout = aiohttp.ClientTimeout(total=None, sock_read=self._idle_timeout)
            try:
                async with self._http().get(url, headers=headers, timeout=timeout) as response:
                    if response.status == 503:
                        delay = _seconds(response.headers.get("Retry-After"), delay)
                    elif response.status != 200:
                        raise await _error(response)
                    else:
                        async for event in _events(response.content):
                            position = event.id if event.id is not None else position
                            change = _change(event)
                            if change is not None:
                                yield change
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
                pass  # dropped, cut off or silent: reopen from the last id seen
            await asyncio.sleep(delay)

    # --- plumbing -----------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client as `async with ProjectorClient(...) as client`")
        return self._session

    def _url_of(self, path: tuple[str, ...], query: Query) -> URL:
        # Each segment quoted whole: an account id holding '/' or '?' stays one segment.
        quoted = "/".join(quote(segment, safe="") for segment in path)
        url = self._url.join(URL(quoted, encoded=True))
        values = {k: _text(v) for k, v in query.items() if v is not None}
        return url.with_query(values)

    async def _get(self, model: type[AnswerT], path: tuple[str, ...], query: Query) -> AnswerT:
        async with self._http().get(self._url_of(path, query), headers=self._auth) as response:
            if response.status != 200:
                raise await _error(response)
            return model.model_validate_json(await response.read())


def _seconds(retry_after: str | None, default: float) -> float:
    """Retry-After in seconds (this service sends whole seconds); `default` otherwise."""
    if retry_after is None or not retry_after.strip().isdigit():
        return default
    return float(retry_after)


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _error(response: aiohttp.ClientResponse) -> ProjectorError:
    body = await response.read()
    try:
        detail = answers.ErrorAnswer.model_validate_json(body).error
    except ValidationError:  # not ours (a proxy's page, say): keep the start of what it was
        return ProjectorError(response.status, "unexpected_answer", body[:200].decode("replace"))
    return ProjectorError(response.status, detail.code, detail.message)


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[_Event]:
    """The events of a text/event-stream body, as the SSE specification splits them.

    Read in chunks, not readline(): aiohttp refuses a line longer than its buffer, and a
    banner of an account with many apps can be a long line.
    """
    pending = b""
    event = _Event()
    async for chunk in content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8", "replace")
            if not line:  # a blank line ends an event; an id-only block updates the id only
                if event.data or event.id is not None:
                    yield event
                event = _Event(id=None)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event.kind = value
            elif name == "data":
                event.data = f"{event.data}\n{value}" if event.data else value
            elif name == "id" and "\0" not in value:
                event.id = value
            # a comment (":" first, so `name` is empty: heartbeats) or `retry`: nothing to do


def _change(event: _Event) -> Change | None:
    """The typed change an event carries; None for an id-only block or an unknown event."""
    if event.id is None or not event.data or not event.id.isdigit():
        return None
    if event.kind == "connection":
        banner = answers.AccountConnections.model_validate_json(event.data)
        return ConnectionChanged(int(event.id), banner)
    if event.kind == "workflow_run":
        run = answers.WorkflowRunSummary.model_validate_json(event.data)
        return WorkflowRunChanged(int(event.id), run)
    return None
