"""Test support for the change stream: bodies to send, and an SSE stream read off the wire."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp

from tests.support import AUTH, signed

ORG = "645270e37917442c4307297a"


def connection_body(
    account: str,
    slug: str = "gmail",
    event: str = "Connection Expired",
    created: str = "Wed, 01 Jul 2026 09:15:00 GMT",
    environment: str = "live",
) -> bytes:
    """A connection event as Refold sends it."""
    payload = {
        "linked_account_id": account,
        "org_id": ORG,
        "environment": environment,
        "type": "General",
        "event": event,
        "slug": slug,
        "createdAt": created,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def run_body(instance: str, account: str, event: str = "Workflow Completed") -> bytes:
    """A workflow event as Refold sends it."""
    status = {"Workflow Completed": "COMPLETED", "Workflow Errored": "ERRORED"}[event]
    payload = {
        "linked_account_id": account,
        "instance_id": instance,
        "workflow_id": "wf_1",
        "config_id": "cfg_1",
        "event": event,
        "workflow_name": "Sync Deals",
        "status": status,
        "environment": "live",
    }
    return json.dumps(payload, separators=(",", ":")).encode()


async def deliver(
    http: aiohttp.ClientSession, url: str, body: bytes, key: str | None = None
) -> int:
    """POST one signed delivery; returns its seq."""
    headers = signed(body) if key is None else signed(body, key)
    async with http.post(f"{url}/webhooks/refold", data=body, headers=headers) as answer:
        assert answer.status == 200, await answer.text()
        return int((await answer.json())["seq"])


@dataclass
class Block:
    """One blank-line-terminated block of a text/event-stream: its fields and comments."""

    fields: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)

    @property
    def is_event(self) -> bool:
        return "data" in self.fields


class RawStream:
    """GET /v1/changes read block by block, as bytes arrive: the wire format itself."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._pending = b""

    async def next_block(self, within: float = 10) -> Block | None:
        """The next block, or None at the end of the stream (bounded by `within`)."""
        async with asyncio.timeout(within):
            while b"\n\n" not in self._pending:
                chunk = await self.response.content.readany()
                if not chunk:
                    return None
                self._pending += chunk
        text, self._pending = self._pending.split(b"\n\n", 1)
        block = Block()
        for line in text.decode().split("\n"):
            name, _, value = line.partition(":")
            if name:
                block.fields[name] = value.removeprefix(" ")
            else:
                block.comments.append(value.strip())
        return block

    async def next_event(self, within: float = 10) -> Block:
        """The next block carrying data (skipping heartbeats and id-only blocks)."""
        async with asyncio.timeout(within):
            while True:
                block = await self.next_block(within)
                assert block is not None, "the stream ended before the event came"
                if block.is_event:
                    return block


async def open_stream(
    http: aiohttp.ClientSession,
    url: str,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> RawStream:
    """Open a stream, check it is 200 text/event-stream, and read its opening block."""
    response = await http.get(f"{url}/v1/changes{query}", headers={**AUTH, **(headers or {})})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    stream = RawStream(response)
    opening = await stream.next_block()
    assert opening is not None
    assert "id" in opening.fields
    return stream


async def get_body(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url, headers=AUTH) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.read()
