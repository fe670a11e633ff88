"""The `subscribe`, `subscriptions` and `unsubscribe` commands: Refold's side of the loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from projector.config import ENVIRONMENTS, ConfigError, Settings, load_settings
from projector.config import normalise_environment as _normalise
from projector.subscriptions import (
    FOLDED_EVENTS,
    RefoldClient,
    RefoldError,
    Subscription,
    client_session,
    gather_lists,
    plan_subscription,
    receiver_url,
    uncovered_events,
)

_URL = re.compile(r"(https?)://[^\s/?#]+\S*")
_EVENT_BY_LOWER = {event.lower(): event for event in FOLDED_EVENTS}
Adder = Callable[[str, str], argparse.ArgumentParser]
Work = Callable[[Settings, list[RefoldClient]], Awaitable[int]]


def event_name(value: str) -> str:
    """An --events value: one of the events this service folds (any case, Refold's spelling)."""
    event = _EVENT_BY_LOWER.get(" ".join(value.split()).lower())
    if event is None:
        known = ", ".join(repr(e) for e in FOLDED_EVENTS)
        raise argparse.ArgumentTypeError(f"{value!r} is not an event this service folds: {known}")
    return event


def environments(value: str) -> tuple[str, ...]:
    """An --environment value: test, live (or production), or both."""
    if value.strip().lower() == "both":
        return ENVIRONMENTS
    environment = _normalise(value)
    if environment is None:
        raise argparse.ArgumentTypeError(f"{value!r}: use test, live or both")
    return (environment,)


def webhook_url(value: str) -> str:
    """A URL argument: an http(s) address, as Refold requires (^https?://)."""
    if not _URL.fullmatch(value.strip()):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an address; give the receiver's full URL, e.g. "
            "https://projector.example.com/webhooks/refold"
        )
    return value.strip()


def _clients(
    settings: Settings, session: aiohttp.ClientSession, wanted: tuple[str, ...]
) -> list[RefoldClient]:
    """One client per environment, each with that environment's newest (first listed) key."""
    clients = []
    for environment in wanted:
        key = next((k for k in settings.signing_keys if k.environment == environment), None)
        if key is None:
            raise ConfigError(
                f"PROJECTOR_SIGNING_KEYS has no {environment} key to call Refold with; add "
                f"{environment}:<api key>, or pass --environment "
                f"{'live' if environment == 'test' else 'test'}"
            )
        secret = key.secret.decode()
        clients.append(RefoldClient(session, settings.refold_api, environment, secret))
    return clients


def _refold(args: argparse.Namespace, work: Work) -> int:
    """Run `work(settings, clients)` against Refold; its errors become one line and exit 1."""
    settings = load_settings(require_secrets=True, require_read_tokens=False)

    async def run() -> int:
        async with client_session(settings.refold_timeout_seconds) as session:
            clients = _clients(settings, session, args.environment)
            return await work(settings, clients)

    try:
        return asyncio.run(run())
    except RefoldError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 1


def _events_text(events: tuple[str, ...]) -> str:
    return ", ".join(events) if events else "(none)"


# --- subscribe ------------------------------------------------------------------------


def cmd_subscribe(args: argparse.Namespace) -> int:
    if args.url.startswith("http://") and not args.allow_http:
        print(
            f"projector: {args.url} is plain http; Refold's guides require HTTPS for receivers: "
            "give an https:// URL, or pass --allow-http (e.g. for a local test)",
            file=sys.stderr,
        )
        return 2
    wanted = tuple(e for e in FOLDED_EVENTS if e in set(args.events or FOLDED_EVENTS))

    async def subscribe(settings: Settings, clients: list[RefoldClient]) -> int:
        for client, existing in zip(clients, await gather_lists(clients), strict=True):
            environment = client.environment
            plan = plan_subscription(existing, args.url, wanted)
            if plan.action == "create":
                created = await client.create(args.url, wanted)
                print(f"{environment}: created {created.id} for {args.url}: {_events_text(wanted)}")
            elif plan.action == "update":
                assert plan.subscription_id is not None
                await client.update(plan.subscription_id, args.url, wanted)
                print(
                    f"{environment}: updated {plan.subscription_id} for {args.url}: "
                    f"{_events_text(wanted)}"
                )
            else:
                print(
                    f"{environment}: left {plan.subscription_id} as it was, already "
                    f"{_events_text(wanted)}"
                )
        return 0

    return _refold(args, subscribe)


# --- subscriptions ----------------------------------------------------------------------


def _row(subscription: Subscription, mine: str | None) -> dict[str, object]:
    return {
        "environment": subscription.environment,
        "id": subscription.id,
        "webhook_url": subscription.webhook_url,
        "webhook_events": list(subscription.webhook_events),
        "is_enabled": subscription.is_enabled,
        "created_at": subscription.created_at,
        "this_service": mine is not None and subscription.webhook_url == mine,
    }


def cmd_subscriptions(args: argparse.Namespace) -> int:
    async def show(settings: Settings, clients: list[RefoldClient]) -> int:
        mine = receiver_url(settings.public_url)
        report: dict[str, dict[str, Any]] = {}
        for client, subscriptions in zip(clients, await gather_lists(clients), strict=True):
            report[client.environment] = {
                "subscriptions": [_row(s, mine) for s in subscriptions],
                "uncovered_events": uncovered_events(subscriptions, mine),
            }
        if args.json:
            print(json.dumps({"this_service_url": mine, "environments": report}, indent=2))
            return 0
        _print_table(report, mine)
        return 0

    return _refold(args, show)


def _print_table(report: dict[str, dict[str, Any]], mine: str | None) -> None:
    header = ("", "environment", "id", "enabled", "created", "webhook_url", "events")
    rows: list[tuple[str, ...]] = [header]
    for environment, part in report.items():
        for row in part["subscriptions"]:
            rows.append(
                (
                    "*" if row["this_service"] else "",
                    environment,
                    str(row["id"]),
                    "yes" if row["is_enabled"] else "no",
                    str(row["created_at"] or "-"),
                    str(row["webhook_url"]),
                    ", ".join(row["webhook_events"]),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if mine is not None:
        print(f"* points at this service ({mine}, from PROJECTOR_PUBLIC_URL)")
    whose = "to this service" if mine is not None else "at all"
    for environment, part in report.items():
        missing = part["uncovered_events"]
        if missing:
            print(f"{environment}: not subscribed {whose}: {', '.join(missing)}")
        else:
            print(f"{environment}: every event this service folds is subscribed {whose}")


# --- unsubscribe ------------------------------------------------------------------------


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    async def unsubscribe(settings: Settings, clients: list[RefoldClient]) -> int:
        for client, existing in zip(clients, await gather_lists(clients), strict=True):
            matching = [s for s in existing if s.webhook_url == args.url]
            for subscription in matching:
                await client.delete(subscription.id)
                print(f"{client.environment}: deleted {subscription.id} for {args.url}")
            if not matching:
                print(f"{client.environment}: no subscription for {args.url}, nothing to do")
        return 0

    return _refold(args, unsubscribe)


# --- parsers ----------------------------------------------------------------------------


def add_commands(command: Adder) -> None:
    """Add the three commands, with `command(name, summary)` making each sub-parser."""
    both = "test, live or both (default both)"
    url_help = "the receiver's URL, e.g. https://projector.example.com/webhooks/refold"

    subscribe = command(
        "subscribe",
        "subscribe URL to Refold's webhooks in each environment with its newest key; "
        "idempotent: an existing subscription to URL is updated, never duplicated",
    )
    subscribe.add_argument("url", metavar="URL", type=webhook_url, help=url_help)
    subscribe.add_argument(
        "--events",
        nargs="+",
        type=event_name,
        metavar="E",
        help=f"events to receive (default all this service folds: {', '.join(FOLDED_EVENTS)})",
    )
    subscribe.add_argument("--environment", type=environments, default=ENVIRONMENTS, help=both)
    subscribe.add_argument(
        "--allow-http", action="store_true", help="accept a plain http:// URL (local tests)"
    )
    subscribe.set_defaults(run=cmd_subscribe)

    listing = command(
        "subscriptions",
        "list Refold's webhook subscriptions of each environment, marking this service's "
        "and naming folded events nobody subscribed to",
    )
    listing.add_argument("--environment", type=environments, default=ENVIRONMENTS, help=both)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=cmd_subscriptions)

    unsubscribe = command(
        "unsubscribe", "delete every Refold webhook subscription to URL in each environment"
    )
    unsubscribe.add_argument("url", metavar="URL", type=webhook_url, help=url_help)
    unsubscribe.add_argument("--environment", type=environments, default=ENVIRONMENTS, help=both)
    unsubscribe.set_defaults(run=cmd_unsubscribe)
