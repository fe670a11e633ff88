"""The benchmark's baselines, each a server process like `projector serve`.

bare:     aiohttp, POST reads the body and answers 200, GET answers a small JSON.
verified: bare, plus the service's own signature check and `orjson.loads` of the body; stores
          nothing. No receiver that verifies and reads its body can beat it: the ceiling.
parsed:   bare, plus the signature check and the service's own parse of the body (its
          `parse_delivery`); stores nothing: the ceiling of this service's receiving code.
Each runs on the service's own event loop (`server.run_event_loop`: uvloop).
naive:    what most users write first: verify, one aiosqlite INSERT + COMMIT per request.
          Concurrent requests share aiosqlite's one queue, so an INSERT queued before another
          request's COMMIT rides in that commit: naive group-commits by accident.
naive-serial: naive with a lock around INSERT + COMMIT: one transaction, one flush, per
          delivery (context for the slow-fsync run).
naive-read: what most users write first to serve the banner (get.lua's URL) from the same
          database's connections table: bearer token check, one aiosqlite connection, one
          query per request, `json.dumps` of the service's answer shape.
python -m tests.bench.baselines KIND --port P [--db FILE] [--reuse-port]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import orjson
from aiohttp import web

from projector.config import SigningKey, load_settings
from projector.events import parse_delivery
from projector.server import run_event_loop
from projector.signature import SIGNATURE_HEADER, SignatureMatch, verify_signature
from tests.support import READ_TOKEN, SIGNING_KEYS

OK = b'{"ok":true}'
Handler = Callable[[web.Request], Awaitable[web.Response]]


def bare_app() -> web.Application:
    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=OK, content_type="application/json")

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/webhooks/refold", post)
    app.router.add_get("/{tail:.*}", get)
    return app


async def read_verified(
    request: web.Request, keys: tuple[SigningKey, ...]
) -> tuple[bytes, SignatureMatch | None]:
    """The body, and the key whose signature it carries (None if none)."""
    body = await request.read()
    claimed = [v.encode() for v in request.headers.getall(SIGNATURE_HEADER, [])]
    return body, verify_signature(body, claimed, keys)


def ceiling_app(keys: tuple[SigningKey, ...], parse: bool) -> web.Application:
    """bare plus a receiver's CPU work, no storage: verify, then orjson.loads or (`parse`)
    the service's own parse."""

    async def post(request: web.Request) -> web.Response:
        body, match = await read_verified(request, keys)
        if match is None:
            return web.Response(status=401)
        if parse:
            parse_delivery(body, match.key.environment)
        else:
            orjson.loads(body)
        return web.Response(body=OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/webhooks/refold", post)
    return app


def naive_app(db: Path, keys: tuple[SigningKey, ...], serial: bool = False) -> web.Application:
    app = web.Application()
    one_at_a_time = asyncio.Lock()

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        conn = await aiosqlite.connect(db)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (seq INTEGER PRIMARY KEY, environment TEXT,"
            " body BLOB)"
        )
        await conn.commit()
        app["conn"] = conn
        yield
        await conn.close()

    async def post(request: web.Request) -> web.Response:
        body, match = await read_verified(request, keys)
        if match is None:
            return web.Response(status=401)
        conn: aiosqlite.Connection = request.app["conn"]
        if serial:
            async with one_at_a_time:
                await insert(conn, match.key.environment, body)
        else:
            await insert(conn, match.key.environment, body)
        return web.Response(body=OK, content_type="application/json")

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/webhooks/refold", post)
    return app


async def insert(conn: aiosqlite.Connection, environment: str, body: bytes) -> None:
    await conn.execute(
        "INSERT INTO deliveries (environment, body) VALUES (?, ?)", (environment, body)
    )
    await conn.commit()


def naive_read_app(db: Path, token: str) -> web.Application:
    """GET /v1/accounts/{id}/connections?environment=E, one aiosqlite query per request."""
    app = web.Application()
    expected = f"Bearer {token}".encode()

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        conn = await aiosqlite.connect(f"file:{db}?mode=ro", uri=True)
        app["conn"] = conn
        yield
        await conn.close()

    async def get(request: web.Request) -> web.Response:
        offered = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(offered, expected):
            return web.json_response({"error": "unauthorised"}, status=401)
        account = request.match_info["account"]
        environment = request.query.get("environment", "live")
        conn: aiosqlite.Connection = request.app["conn"]
        rows = await conn.execute_fetchall(
            "SELECT slug, status, status_since, type, first_seen, last_seen FROM connections"
            " WHERE environment = ? AND linked_account_id = ? ORDER BY slug",
            (environment, account),
        )
        connections = [
            {
                "slug": slug,
                "status": status,
                "status_since": since,
                "type": type_,
                "needs_reconnect": status == "expired",
                "first_seen": first,
                "last_event_at": last,
            }
            for slug, status, since, type_, first, last in rows
        ]
        answer = {
            "linked_account_id": account,
            "environment": environment,
            "needs_reconnect": any(c["needs_reconnect"] for c in connections),
            "connections": connections,
        }
        return web.Response(text=json.dumps(answer), content_type="application/json")

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/accounts/{account}/connections", get)
    return app


async def serve(app: web.Application, port: int, reuse_port: bool = False) -> None:
    """Serve like `projector serve` does: one process, one loop, until SIGTERM.

    `reuse_port`: several processes share the port, as `serve --workers N`'s workers do.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("listening", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    kinds = ("bare", "verified", "parsed", "naive", "naive-serial", "naive-read")
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--reuse-port", action="store_true", help="share the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    keys = load_settings(signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN).signing_keys
    if args.kind == "bare":
        app = bare_app()
    elif args.kind in ("verified", "parsed"):
        app = ceiling_app(keys, parse=args.kind == "parsed")
    elif args.kind == "naive-read":
        app = naive_read_app(args.db, READ_TOKEN)
    else:
        app = naive_app(args.db, keys, serial=args.kind == "naive-serial")
    run_event_loop(serve(app, args.port, args.reuse_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
