"""Write a deterministic sample of Refold webhook delivery bodies to stdout, one per line.
Run: python data/make_sample.py > data/sample-deliveries.jsonl
"""

# A payload that names "test" but is signed with the live key cannot be expressed in this file
# (it holds bodies, not keys), so that environment-mismatch case is exercised by tests instead.

import json
import random
import string
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

ORG_ID = "645270e37917442c4307297a"
# After May 2026, so Errored payloads may carry the extra (unpublished) fields.
START = datetime(2026, 6, 1, tzinfo=UTC)
SPAN_SECONDS = 30 * 24 * 3600
SLUGS = ["pipedrive", "hubspot", "salesforce", "slack", "gmail", "zendesk", "jira", "notion"]
# name -> (slugs it runs against, node names an error can be reported on)
WORKFLOWS: dict[str, tuple[list[str], list[str]]] = {
    "Sync Deals": (["pipedrive", "hubspot", "salesforce"], ["Fetch Deals", "Create Deal"]),
    "Sync Contacts": (["hubspot", "salesforce", "gmail"], ["List Contacts", "Upsert Contact"]),
    "Get Response": (SLUGS, ["HTTP Request", "Parse Response"]),
    "Post Channel Digest": (["slack"], ["Build Digest", "Post Message"]),
    "Create Ticket": (["zendesk", "jira"], ["Map Fields", "Create Issue"]),
    "Update Notion Page": (["notion"], ["Find Page", "Update Block"]),
}
ERRORS = [
    (429, "rate limited"),
    (500, "internal server error"),
    (502, "bad gateway"),
    (401, "invalid_grant: token has been expired or revoked"),
    (422, "validation failed: amount must be a number"),
]
# Connection life cycles, as the sequence of connection events per (environment, account, slug).
PLANS: dict[str, list[str]] = {
    "connected": ["Created"],
    "expired": ["Created", "Expired"],
    "reconnected": ["Created", "Expired", "Created"],
    "deleted": ["Created", "Deleted"],
    "expired_deleted": ["Created", "Expired", "Deleted"],
    "flapping": ["Created", "Expired", "Created", "Expired", "Created"],
    "expired_twice": ["Created", "Expired", "Created", "Expired"],
}
PLAN_WEIGHTS = [44, 15, 18, 9, 5, 5, 4]


@dataclass
class Event:
    at: int  # seconds into the span; only connection events publish it
    key: tuple[str, ...]  # connection or run identity
    body: dict[str, Any]


def hex24(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}"


def stamp(at: int, iso: bool) -> str:
    dt = START + timedelta(seconds=at)
    if iso:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return format_datetime(dt, usegmt=True)


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def make_accounts(rng: random.Random) -> list[str]:
    ids = ["12345"]
    while len(ids) < 19:
        candidate = str(rng.randint(10_000, 999_999))
        if candidate not in ids:
            ids.append(candidate)
    alnum = string.ascii_letters + string.digits
    while len(ids) < 38:
        candidate = "acct_" + "".join(rng.choice(alnum) for _ in range(4))
        if candidate not in ids:
            ids.append(candidate)
    ids += ["ops@northwind-traders.example", "jules.martin@lumen.example"]
    rng.shuffle(ids)
    return ids


def connection_events(
    rng: random.Random, accounts: list[str]
) -> tuple[list[Event], list[tuple[str, str, str, int, int]]]:
    """Return connection events and the intervals during which each connection was usable."""
    # 23 live-only accounts, 14 test-only, 3 present in both environments.
    envs = [("live",)] * 23 + [("test",)] * 14 + [("live", "test")] * 3
    per_env: dict[str, list[str]] = {"live": [], "test": []}
    for account, names in zip(accounts, envs, strict=True):
        for env in names:
            per_env[env].append(account)

    events: list[Event] = []
    intervals: list[tuple[str, str, str, int, int]] = []
    for env, env_accounts in per_env.items():
        for n, account in enumerate(env_accounts):
            slugs = rng.sample(SLUGS, rng.choice([1, 1, 2, 2, 2, 3]))
            for m, slug in enumerate(slugs):
                plan = rng.choices(list(PLANS), PLAN_WEIGHTS)[0]
                # Guarantee both end states in each environment regardless of the draw.
                if n < 3 and m == 0:
                    plan = "expired"
                elif 3 <= n < 6:
                    plan = "connected"
                steps = PLANS[plan]
                times = sorted(rng.sample(range(SPAN_SECONDS), len(steps)))
                key = (env, account, slug)
                for i, (step, at) in enumerate(zip(steps, times, strict=True)):
                    body = {
                        "linked_account_id": account,
                        "org_id": ORG_ID,
                        "environment": env,
                        "type": "General",
                        "event": f"Connection {step}",
                        "slug": slug,
                        "createdAt": stamp(at, iso=rng.random() < 0.06),
                    }
                    events.append(Event(at, key, body))
                    if step == "Created":
                        end = times[i + 1] if i + 1 < len(times) else SPAN_SECONDS
                        intervals.append((env, account, slug, at, end))
    return events, intervals


def errored_extra(rng: random.Random, workflow: str, attempts: int) -> dict[str, Any]:
    status, text = rng.choice(ERRORS)
    return {
        "failed_node": rng.choice(WORKFLOWS[workflow][1]),
        "attempts": attempts,
        "error": {"status": status, "body": text},
    }


def workflow_events(
    rng: random.Random, intervals: list[tuple[str, str, str, int, int]]
) -> tuple[list[Event], list[tuple[str, ...]]]:
    """Return workflow events and the identities of runs that errored and then completed."""
    workflow_ids = {name: hex24(rng) for name in WORKFLOWS}
    configs: dict[tuple[str, str, str], str | None] = {}
    outcomes = (
        ["COMPLETED"] * 170
        + ["ERRORED"] * 26
        + ["ERRORED>COMPLETED"] * 16
        + ["ERRORED>ERRORED"] * 6
        + ["ERRORED>ERRORED>COMPLETED"] * 4
        + ["STOPPED"] * 7
        + ["STOPPED>COMPLETED"] * 3
        + ["TIMED_OUT"] * 8
    )
    rng.shuffle(outcomes)
    runs: list[tuple[str, str, str, str, int]] = []
    for outcome in outcomes:
        env, account, slug, lo, hi = rng.choices(intervals, [i[4] - i[3] for i in intervals])[0]
        workflow = rng.choice([w for w, (slugs, _) in WORKFLOWS.items() if slug in slugs])
        if (env, account, workflow) not in configs:
            configs[env, account, workflow] = hex24(rng) if rng.random() < 0.6 else None
        runs.append((outcome, env, account, workflow, rng.randrange(lo, hi)))

    # A few test-environment runs leave `environment` out, as some documented examples do.
    test_runs = [i for i, run in enumerate(runs) if run[1] == "test"]
    no_env = set(rng.sample(test_runs, 8))

    events: list[Event] = []
    retried: list[tuple[str, ...]] = []
    event_names = {"TIMED_OUT": "Workflow Timed Out"}
    for i, (outcome, env, account, workflow, at) in enumerate(runs):
        instance_id = hex24(rng)
        key = (env, instance_id)
        statuses = outcome.split(">")
        if statuses[0] == "ERRORED" and statuses[-1] == "COMPLETED":
            retried.append(key)
        for attempt, status in enumerate(statuses, start=1):
            body: dict[str, Any] = {
                "linked_account_id": account,
                "instance_id": instance_id,
                "workflow_id": workflow_ids[workflow],
            }
            if configs[env, account, workflow] is not None:
                body["config_id"] = configs[env, account, workflow]
            body["event"] = event_names.get(status, f"Workflow {status.title()}")
            body["workflow_name"] = workflow
            body["status"] = status
            if i not in no_env:
                body["environment"] = env
            # Runs that fail more than once always report attempts; single failures only sometimes.
            if status == "ERRORED" and (len(statuses) > 1 or rng.random() < 0.5):
                body |= errored_extra(rng, workflow, attempt)
            at += rng.randint(60, 3 * 3600)
            events.append(Event(min(at, SPAN_SECONDS - 1), key, body))
    return events, retried


def move_before(order: list[Event], later: Event, earlier: Event) -> None:
    order.remove(later)
    order.insert(order.index(earlier), later)


def oddities(rng: random.Random, conn: list[Event], runs: list[Event]) -> list[str]:
    refreshed = dict(rng.choice([e for e in conn if e.key[0] == "live"]).body)
    refreshed["event"] = "Connection Refreshed"
    refreshed["createdAt"] = stamp(rng.randrange(SPAN_SECONDS), iso=False)
    paused = dict(rng.choice([e for e in runs if e.body["status"] == "COMPLETED"]).body)
    paused["event"] = "Workflow Paused"
    paused["status"] = "PAUSED"
    no_slug = dict(rng.choice([e for e in conn if e.body["event"] == "Connection Expired"]).body)
    del no_slug["slug"]
    no_slug["createdAt"] = stamp(rng.randrange(SPAN_SECONDS), iso=False)
    # A body cut short in transit: the first fields of a connection event, unterminated.
    malformed = dumps({"linked_account_id": "12345", "event": "Connection Created"})[:-1]
    return [dumps(refreshed), dumps(paused), dumps(no_slug), malformed]


def main() -> None:
    rng = random.Random(2026)
    accounts = make_accounts(rng)
    conn, intervals = connection_events(rng, accounts)
    runs, retried = workflow_events(rng, intervals)
    base = conn + runs

    # "live" and "production" name the same environment in Refold's docs; use both.
    live = [e for e in base if e.body.get("environment") == "live"]
    for event in rng.sample(live, 6):
        event.body["environment"] = "production"

    order = sorted(base, key=lambda e: e.at)
    # No ordering is guaranteed between deliveries: jitter neighbours, then invert some
    # life cycles outright (e.g. Expired arriving before its Created).
    for i in range(len(order) - 1):
        if rng.random() < 0.25:
            j = min(len(order) - 1, i + rng.randint(1, 3))
            order[i], order[j] = order[j], order[i]
    by_key: dict[tuple[str, ...], list[Event]] = {}
    for event in conn:
        by_key.setdefault(event.key, []).append(event)
    multi = [evs for evs in by_key.values() if len(evs) > 1]
    for evs in rng.sample(multi, 14):
        k = rng.randrange(len(evs) - 1)
        move_before(order, evs[k + 1], evs[k])
    for key in rng.sample(retried, 6):
        evs = [e for e in runs if e.key == key]
        move_before(order, evs[-1], evs[0])

    # About 15% of events are delivered 2-4 times (retries, or two subscriptions on one URL).
    keyed: list[tuple[float, str]] = [(float(i), dumps(e.body)) for i, e in enumerate(order)]
    for i in rng.sample(range(len(order)), round(len(order) * 0.15)):
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            keyed.append((i + rng.uniform(0.5, 40.0), keyed[i][1]))
    lines = [line for _, line in sorted(keyed)]

    odd = oddities(rng, conn, runs)
    spots = sorted(rng.sample(range(len(lines) * 2 // 5, len(lines) * 3 // 5), len(odd)))
    for spot, line in zip(reversed(spots), odd, strict=True):
        lines.insert(spot, line)

    sys.stdout.buffer.write("".join(line + "\n" for line in lines).encode("utf-8"))


if __name__ == "__main__":
    main()
