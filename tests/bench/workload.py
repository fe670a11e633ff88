"""Benchmark workloads: distinct signed deliveries, and large logs built without HTTP."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from projector.config import fingerprint
from projector.events import parse_delivery
from projector.signature import SIGNATURE_HEADER, sign_body
from projector.storage.sqlite import log
from tests.support import KEY_BY_ENVIRONMENT

SLUGS = ("hubspot", "slack", "gmail", "salesforce")
CONNECTION_EVENTS = ("Connection Created", "Connection Expired", "Connection Deleted")
WORKFLOW_EVENTS = (("Workflow Completed", "COMPLETED"), ("Workflow Errored", "ERRORED"))
START = datetime(2026, 6, 1, tzinfo=UTC)
# The shape: 1,000,000 deliveries over 100,000 connections and 200,000 workflow runs.
CONNECTIONS, RUNS = 100_000, 200_000


def body(i: int) -> tuple[str, bytes]:
    """Delivery number `i`: its environment and body; distinct for every `i`."""
    rng = random.Random(i)
    if rng.random() < 0.6:
        c = rng.randrange(CONNECTIONS)
        environment = "test" if c % 5 == 0 else "live"
        payload: dict[str, object] = {
            "linked_account_id": f"acct_{c // len(SLUGS)}",
            "org_id": "645270e37917442c4307297a",
            "environment": environment,
            "type": "General",
            "event": rng.choice(CONNECTION_EVENTS),
            "slug": SLUGS[c % len(SLUGS)],
            "createdAt": format_datetime(START + timedelta(seconds=i), usegmt=True),
        }
    else:
        w = rng.randrange(RUNS)
        environment = "test" if w % 5 == 0 else "live"
        event, status = rng.choice(WORKFLOW_EVENTS)
        payload = {
            "linked_account_id": f"acct_{w % (CONNECTIONS // len(SLUGS))}",
            "instance_id": f"{w:024x}",
            "workflow_id": "d09fe2930ddf3e1d94ed1f68",
            "event": event,
            "workflow_name": "Sync Deals",
            "status": status,
            "environment": environment,
            "attempts": i,
        }
    return environment, json.dumps(payload, separators=(",", ":")).encode()


def write_signed(path: Path, first: int, count: int) -> Path:
    """Deliveries first..first+count-1 as `signature<TAB>body` lines, for the wrk script."""
    with path.open("wb") as out:
        for i in range(first, first + count):
            environment, raw = body(i)
            signature = sign_body(raw, KEY_BY_ENVIRONMENT[environment].encode())
            out.write(signature.encode() + b"\t" + raw + b"\n")
    return path


def bench_log_name(count: int) -> str:
    """The file name a kept bench log of `count` deliveries has: a new log schema, a new log."""
    return f"log-{count}-v{log.LOG_SCHEMA_VERSION}.sqlite3"


def build_log(path: Path, count: int, batch: int = 10_000, *, signed: bool = False) -> None:
    """A log of `count` deliveries, appended as the receiver would (parsed, hashed, chained).

    `signed` keeps each body's signature header too, as the receiver does (for disk use).
    """
    conn = log.connect(path)
    log.migrate(conn)
    key_ids = {env: fingerprint(env, key) for env, key in KEY_BY_ENVIRONMENT.items()}
    received_at = "2026-07-01T12:00:00Z"
    for start in range(0, count, batch):
        deliveries = []
        for i in range(start, min(start + batch, count)):
            environment, raw = body(i)
            headers = {"content-type": "application/json"}
            if signed:
                key = KEY_BY_ENVIRONMENT[environment].encode()
                headers[SIGNATURE_HEADER] = sign_body(raw, key)
            deliveries.append(
                log.NewDelivery.verified(
                    raw,
                    parse_delivery(raw, environment),
                    environment=environment,
                    received_at=received_at,
                    key_id=key_ids[environment],
                    signed_as="raw",
                    headers=headers,
                )
            )
        log.append_batch(conn, deliveries)
    conn.close()
