"""Test support: keys, signing, and a real `projector serve` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from aiohttp import web
from aiohttp.test_utils import TestClient

from projector.signature import SIGNATURE_HEADER, sign_body

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample-deliveries.jsonl"

TEST_KEY = "tk_test_key_0001"
LIVE_KEY = "pk_live_key_new1"
LIVE_OLD_KEY = "pk_live_key_old1"
READ_TOKEN = "read-token-for-tests"
SIGNING_KEYS = f"test:{TEST_KEY},live:{LIVE_KEY},live:{LIVE_OLD_KEY}"
KEY_BY_ENVIRONMENT = {"test": TEST_KEY, "live": LIVE_KEY}
AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}


def signed(body: bytes, key: str = LIVE_KEY) -> dict[str, str]:
    """Headers Refold would send with `body` signed by `key`."""
    return {SIGNATURE_HEADER: sign_body(body, key.encode()), "Content-Type": "application/json"}


def sample_bodies() -> list[bytes]:
    """The sample stream in data/, one body per line."""
    return [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]


def sample_instant(text: str) -> datetime:
    """A createdAt of the sample, read by its exact shape: not by the parser under test."""
    for shape in ("%a, %d %b %Y %H:%M:%S GMT", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, shape).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise AssertionError(f"a createdAt of a shape the sample does not use: {text!r}")


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(db: Path, **extra: str) -> dict[str, str]:
    """The environment a test service runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    env.update(
        PROJECTOR_DB=str(db),
        PROJECTOR_SIGNING_KEYS=SIGNING_KEYS,
        PROJECTOR_READ_TOKENS=READ_TOKEN,
        PROJECTOR_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `projector` command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "projector.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@dataclass
class Service:
    """A real `projector serve` process; start, stop (SIGTERM) or kill (SIGKILL) it."""

    db: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()  # more `projector serve` arguments, e.g. --seed FILE
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return service_env(self.db, **self.extra_env)

    def start(self, timeout: float = 30) -> Service:
        self.log_path = self.db.with_suffix(f".{self.port}.log")
        command = [sys.executable, "-m", "projector.cli", "serve", "--port", str(self.port)]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [*command, *self.serve_args],
                env=self.env,
                stdout=log_file,
                stderr=log_file,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"projector serve exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"projector serve did not answer /healthz in {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


async def wait_projected(client: TestClient, within: float = 10) -> dict[str, object]:
    """Poll /v1/projections until every projection has reached the log head (bounded)."""
    deadline = time.monotonic() + within
    while True:
        answer = await client.get("/v1/projections", headers=AUTH)
        state = await answer.json()
        if all(p["position"] == state["log_head"] for p in state["projections"]):
            return dict(state)
        if time.monotonic() > deadline:
            raise AssertionError(f"projections did not catch up in {within}s: {state}")
        await asyncio.sleep(0.02)


def wait_projected_http(base_url: str, timeout: float = 30) -> dict[str, object]:
    """The same for a real process, over plain HTTP."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{base_url}/v1/projections", headers=AUTH)
        with urllib.request.urlopen(request, timeout=5) as answer:
            state = json.loads(answer.read())
        if all(p["position"] == state["log_head"] for p in state["projections"]):
            return dict(state)
        if time.monotonic() > deadline:
            raise AssertionError(f"projections did not catch up in {timeout}s: {state}")
        time.sleep(0.05)


class ThreadedSite:
    """An aiohttp app on 127.0.0.1, in a thread and loop of its own, for a fake of a peer.

    A subclass adds its routes in `add_routes`; `released` ends any answer it holds back.
    """

    url: str

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self.released = asyncio.Event()
        app = web.Application()
        self.add_routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.released.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
