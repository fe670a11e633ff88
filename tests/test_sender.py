"""projector.sender: signing and posting bodies, failing fast, and showing progress."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from projector.config import ConfigError, parse_signing_keys
from projector.sender import SendReport, TerminalProgress, send_bodies, terminal_progress
from projector.signature import SIGNATURE_HEADER, verify_signature
from tests.support import REPO, SIGNING_KEYS, free_port, run_cli, service_env

KEYS = parse_signing_keys(SIGNING_KEYS)


def body(n: int, environment: str = "test") -> bytes:
    return json.dumps(
        {
            "linked_account_id": f"acct-{n}",
            "event": "Connection Created",
            "environment": environment,
        }
    ).encode()


@dataclass
class HeldReceiver:
    """A receiver that checks each signature, then holds every answer until released."""

    received: list[tuple[bytes, str]] = field(default_factory=list)  # body, key environment
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        match = verify_signature(
            raw, [h.encode() for h in request.headers.getall(SIGNATURE_HEADER)], KEYS
        )
        if match is None:
            return web.json_response({"error": "bad signature"}, status=401)
        self.received.append((raw, match.key.environment))
        await self.release.wait()
        return web.json_response({"seq": len(self.received), "duplicate": False})


async def start(receiver: HeldReceiver) -> TestServer:
    app = web.Application()
    app.router.add_post("/webhooks/refold", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def wait_for(event: asyncio.Event, within: float = 30) -> None:
    """Wait for what another task signals, for a bounded time."""
    async with asyncio.timeout(within):
        await event.wait()


async def test_a_url_where_nothing_listens_stops_the_send_at_the_first_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/refold"
    report = await send_bodies(url, [body(n) for n in range(50)], KEYS, "test", 1, backoff=0)
    assert report.unreachable == f"cannot connect to {url} (Connection refused)"
    assert (report.sent, report.accepted) == (1, 0)
    assert report.failed == ["line 1: cannot connect: Connection refused"]


async def test_a_missing_key_is_found_before_any_line_is_sent() -> None:
    receiver = HeldReceiver()
    receiver.release.set()
    server = await start(receiver)
    only_test = parse_signing_keys("test:tk_only")
    try:
        with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS has no live key"):
            await send_bodies(
                str(server.make_url("/webhooks/refold")),
                [body(1), body(2, "live")],
                only_test,
                "test",
            )
    finally:
        await server.close()
    assert receiver.received == []


async def test_progress_is_reported_while_answers_are_outstanding() -> None:
    receiver = HeldReceiver()
    server = await start(receiver)
    seen: list[str] = []
    held = asyncio.Event()

    def progress(report: SendReport) -> None:
        seen.append(report.progress())
        if report.progress() == "sent 3, accepted 0, failed 0":
            held.set()

    try:
        sending: asyncio.Task[SendReport] = asyncio.create_task(
            send_bodies(
                str(server.make_url("/webhooks/refold")),
                [body(1), body(2, "live"), body(3)],
                KEYS,
                "test",
                progress=progress,
                progress_every=0.01,
            )
        )
        await wait_for(held)  # every answer is still held: this is progress mid-send
        receiver.release.set()
        report = await sending
    finally:
        await server.close()
    assert (report.sent, report.accepted, report.failed, report.unreachable) == (3, 3, [], None)
    assert sorted(environment for _, environment in receiver.received) == ["live", "test", "test"]


def test_progress_goes_to_a_terminal_only() -> None:
    assert terminal_progress(io.StringIO()) is None
    controller, terminal = pty.openpty()
    with os.fdopen(terminal, "w") as stream:
        progress = terminal_progress(stream)
        assert isinstance(progress, TerminalProgress)
        progress(SendReport(sent=5, accepted=4, failed=["line 2: HTTP 400"]))
        progress.end()
        assert read_line(controller).replace(b"\r\n", b"\n") == (
            b"\rsent 5, accepted 4, failed 1\n"
        )
    os.close(controller)


def read_line(controller: int) -> bytes:
    """What a pty's terminal side wrote, up to its newline: the kernel may pass it on in parts."""
    read = b""
    deadline = time.monotonic() + 5
    while not read.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            read += os.read(controller, 1000)
    return read


def test_ending_progress_that_never_showed_writes_nothing() -> None:
    stream = io.StringIO()
    TerminalProgress(stream).end()
    assert stream.getvalue() == ""


# --- projector send ----------------------------------------------------------------------


def deliveries_file(folder: Path, count: int) -> Path:
    path = folder / "deliveries.jsonl"
    path.write_bytes(b"".join(body(n, ("test", "live")[n % 2]) + b"\n" for n in range(count)))
    return path


def test_send_to_a_port_where_nothing_listens_fails_with_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/refold"
    file = deliveries_file(tmp_path, 100)
    try:
        # Before, each of the 100 lines was retried with backoff: over 90 s, a line each.
        result = run_cli(
            "send", str(file), "--url", url, env=service_env(tmp_path / "db"), timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("send still ran 60 s after it could not connect")
    assert result.returncode == 1
    assert result.stderr == (
        f"projector: cannot connect to {url} (Connection refused); check --url, and that "
        "the service runs there\n"
    )
    assert result.stdout == ""


async def test_send_on_a_terminal_shows_progress_while_it_sends(tmp_path: Path) -> None:
    receiver = HeldReceiver()
    server = await start(receiver)
    controller, terminal = pty.openpty()
    shown = bytearray()
    progress_shown, line_ended = asyncio.Event(), asyncio.Event()

    def read_terminal() -> None:
        try:
            shown.extend(os.read(controller, 4096))
        except OSError:  # the child closed the terminal (EIO): nothing more to read
            loop.remove_reader(controller)
        if b"sent 3, accepted 0, failed 0" in shown:
            progress_shown.set()
        if shown.endswith(b"\r\n"):
            line_ended.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(controller, read_terminal)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projector.cli",
            "send",
            str(deliveries_file(tmp_path, 3)),
            "--url",
            str(server.make_url("/webhooks/refold")),
            env=service_env(tmp_path / "db"),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=terminal,
        )
        os.close(terminal)
        await wait_for(progress_shown)  # every answer is still held: progress mid-send
        receiver.release.set()
        async with asyncio.timeout(60):
            stdout, _ = await process.communicate()
        await wait_for(line_ended)
    finally:
        loop.remove_reader(controller)
        os.close(controller)
        await server.close()
    assert process.returncode == 0
    assert stdout == b"sent 3, accepted 3, duplicates 0, failed 0\n"
    assert shown.startswith(b"\rsent ")
    lines = bytes(shown).removesuffix(b"\r\n").split(b"\r")[1:]
    assert lines
    assert all(re.fullmatch(rb"sent [0-3], accepted [0-3], failed 0", line) for line in lines)
