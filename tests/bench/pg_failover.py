"""Projector failover: kill -9 the folding process under light load; time until the other folds.

Two processes on one log. A poster thread sends distinct signed deliveries to both in turn
(light load); the folding process is killed, and the survivor's /v1/projections is polled
until its fold passes the log head read at the kill. The killed process is started again
(a standby now) before the next run, which kills the new folder.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import psycopg

from projector.signature import SIGNATURE_HEADER, sign_body
from projector.storage.location import PostgresUrl
from tests.bench import probes
from tests.bench.pg_service import folder_pid, serve, stored_bodies, verify
from tests.bench.run import Figures
from tests.bench.workload import body
from tests.support import AUTH, KEY_BY_ENVIRONMENT

POST_EVERY = 0.02  # seconds between deliveries: 50/s over both processes
FIRST_BODY = 30_000_000  # past the ingest bodies' numbers: every delivery is distinct
GIVE_UP_SECONDS = 60.0


class Poster(probes.BackgroundLoop):
    """Posts a delivery every POST_EVERY to each target in turn; records what was acked."""

    def __init__(self, urls: list[str], first: int) -> None:
        self.urls = urls
        self.acked: dict[int, bytes] = {}  # seq -> body
        self.refused = 0
        self._next = first
        super().__init__("failover-poster")

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(POST_EVERY):
            url = self.urls[turn % len(self.urls)]
            turn += 1
            environment, raw = body(self._next)
            self._next += 1
            headers = {SIGNATURE_HEADER: sign_body(raw, KEY_BY_ENVIRONMENT[environment].encode())}
            host, port = url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("POST", "/webhooks/refold", raw, headers)
                answer = conn.getresponse()
                text = answer.read()
            except OSError:
                self.refused += 1  # the killed process: never acknowledged, nothing owed
                continue
            finally:
                conn.close()
            if answer.status == 200:
                self.acked[int(json.loads(text)["seq"])] = raw
            else:
                self.refused += 1


def _folded(url: str) -> int:
    """The survivor's view: the lowest projection position."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/v1/projections", headers=AUTH)
        state = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return min(int(p["position"]) for p in state["projections"])


def _head(url: PostgresUrl) -> int:
    with psycopg.connect(url.url) as conn:
        row = conn.execute("SELECT seq FROM log_head").fetchone()
    assert row is not None
    return int(row[0])


def failover(url: PostgresUrl, runs: int, work: Path) -> Figures:
    """`runs` kills of the folding process; seconds from each kill until the survivor folds."""
    servers = [serve(url, work / f"failover-{n}.log") for n in range(2)]
    seconds: list[float] = []
    acked: dict[int, bytes] = {}
    try:
        for run in range(runs):
            probes.wait_for(lambda: folder_pid(url) is not None, 30)
            folder = next(s for s in servers if s.process.pid == folder_pid(url))
            survivor = next(s for s in servers if s is not folder)
            with Poster([s.url for s in servers], FIRST_BODY + run * 100_000) as poster:
                time.sleep(1.0)  # the light load runs before the kill
                folder.process.kill()
                killed = time.monotonic()
                folder.process.wait()
                head = _head(url)
                while _folded(survivor.url) <= head:  # bounded: gives up after a minute
                    if time.monotonic() - killed > GIVE_UP_SECONDS:
                        raise RuntimeError(f"no fold past seq {head} {GIVE_UP_SECONDS} s after")
                    time.sleep(0.02)
                seconds.append(time.monotonic() - killed)
            acked.update(poster.acked)
            servers[servers.index(folder)] = serve(url, work / f"failover-again-{run}.log")
    finally:
        for server in servers:
            server.stop()
    stored = stored_bodies(url, list(acked))
    lost = sum(1 for seq, raw in acked.items() if stored.get(seq) != raw)
    ordered = sorted(seconds)
    return {
        "runs": len(seconds),
        "median_s": ordered[len(ordered) // 2],
        "max_s": ordered[-1],
        "min_s": ordered[0],
        "each_s": [round(s, 2) for s in seconds],
        "acked": len(acked),
        "lost": lost,
        "verified": verify(url),
    }
