"""`projector doctor`'s checks over the network: public URL, Refold subscriptions, alert URL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from projector.config import ENVIRONMENTS, Settings
from projector.doctor import Check, failed, shown_url, skipped
from projector.subscriptions import RefoldClient, RefoldError, receiver_url, uncovered_events

_REACH_SERVICE = (
    "check that `projector serve` runs, that the proxy in front of it forwards to its port, "
    "and that PROJECTOR_PUBLIC_URL is its public address"
)


# --- 3. public URL -------------------------------------------------------------------


async def check_public_url(session: aiohttp.ClientSession, public_url: str | None) -> Check:
    """GET <PROJECTOR_PUBLIC_URL>/healthz answers 200 {"status": "ok"}."""
    name = "public URL"
    if public_url is None:
        return skipped(name, "PROJECTOR_PUBLIC_URL is not set")
    url = shown_url(public_url + "/healthz")
    try:
        async with session.get(public_url + "/healthz") as response:
            status, text = response.status, await response.text(errors="replace")
    except TimeoutError:
        seconds = session.timeout.total
        return Check(name, False, f"GET {url}: no answer within {seconds:g} s", _REACH_SERVICE)
    except aiohttp.ClientError as exc:
        reason = str(exc).replace(public_url, shown_url(public_url)) or type(exc).__name__
        return Check(name, False, f"GET {url}: cannot reach it ({reason})", _REACH_SERVICE)
    if status != 200:
        return Check(name, False, f"GET {url} answered HTTP {status}", _REACH_SERVICE)
    try:
        answer: Any = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("status") != "ok":
        detail = f'GET {url} answered 200 without {{"status": "ok"}}: refold-projector is not there'
        return Check(name, False, detail, _REACH_SERVICE)
    return Check(name, True, f'GET {url} answered 200 {{"status": "ok"}}')


# --- 4. subscriptions ----------------------------------------------------------------


async def check_subscriptions(
    session: aiohttp.ClientSession, settings: Settings
) -> AsyncIterator[Check]:
    """Per environment with a key: every folded event has an enabled subscription to us."""
    mine = receiver_url(settings.public_url)
    for environment in ENVIRONMENTS:
        name = f"subscriptions ({environment})"
        key = next((k for k in settings.signing_keys if k.environment == environment), None)
        if key is None:
            yield skipped(name, f"PROJECTOR_SIGNING_KEYS has no {environment} key")
            continue
        client = RefoldClient(session, settings.refold_api, environment, key.secret.decode())
        yield await _check_environment(name, client, mine)


async def _check_environment(name: str, client: RefoldClient, mine: str | None) -> Check:
    environment = client.environment
    try:
        subscriptions = await client.list()
    except RefoldError as exc:
        fallback = f"`projector subscriptions --environment {environment}` makes the same call"
        return failed(name, str(exc), fallback)
    missing = uncovered_events(subscriptions, mine)
    where = f"to {mine}" if mine is not None else "(to any URL: PROJECTOR_PUBLIC_URL is not set)"
    if not missing:
        count = len(subscriptions)
        detail = f"every event this service folds has an enabled subscription {where}"
        return Check(name, True, f"{detail} ({count} subscription{'s' * (count != 1)} listed)")
    detail = f"no enabled subscription {where} covers {', '.join(missing)}"
    if mine is None:
        fix = (
            "set PROJECTOR_PUBLIC_URL to this service's public address, then run `projector "
            f"subscribe <PROJECTOR_PUBLIC_URL>/webhooks/refold --environment {environment}`"
        )
    else:
        allow_http = " --allow-http" if mine.startswith("http://") else ""
        fix = f"run `projector subscribe {mine} --environment {environment}{allow_http}`"
    return Check(name, False, detail, fix)


# --- 5. alert URL --------------------------------------------------------------------


def alert_body(host: str) -> dict[str, Any]:
    """The test alert's body: `text` for Slack's incoming webhooks, `alert` for programs."""
    return {"text": f"refold-projector doctor: a test alert from {host}", "alert": {"kind": "test"}}


async def check_alert(
    session: aiohttp.ClientSession, alert_url: str | None, *, send: bool, host: str
) -> Check:
    """With `send`, POST a test alert to PROJECTOR_ALERT_URL; any 2xx answer passes."""
    name = "alert URL"
    if not send:
        return skipped(name, "use --send-test-alert to send one")
    if alert_url is None:
        fix = "set PROJECTOR_ALERT_URL to the address alerts are POSTed to, e.g. a Slack webhook"
        return Check(name, False, "--send-test-alert, but PROJECTOR_ALERT_URL is not set", fix)
    url = shown_url(alert_url, whole=False)  # the path of a webhook URL is its secret
    check_url = "check PROJECTOR_ALERT_URL: the receiver's whole address, path and query included"
    try:
        async with session.post(alert_url, json=alert_body(host)) as response:
            status, text = response.status, await response.text(errors="replace")
    except TimeoutError:
        seconds = session.timeout.total
        detail = f"POST {url}: no answer within {seconds:g} s"
        return Check(name, False, detail, f"{check_url}, and that the receiver is up")
    except aiohttp.ClientError as exc:
        reason = _without(str(exc), alert_url) or type(exc).__name__
        return Check(name, False, f"POST {url}: cannot reach it ({reason})", check_url)
    if not 200 <= status < 300:
        said = _without(" ".join(text.split()), alert_url)[:100]
        said = f": {said}" if said else ""
        return Check(name, False, f"POST {url} answered HTTP {status}{said}", check_url)
    return Check(name, True, f"POST {url}: the test alert was accepted (HTTP {status})")


def _without(text: str, alert_url: str) -> str:
    """`text` with the alert URL's path, query and long path parts cut out: an echo of any
    of them would show the secret they hold."""
    parts = urlsplit(alert_url)
    pieces = {alert_url, parts.path, parts.query, f"{parts.path}?{parts.query}"}
    pieces.update(segment for segment in parts.path.split("/") if len(segment) >= 6)
    for piece in sorted(pieces - {"", "/", "?"}, key=len, reverse=True):
        text = text.replace(piece, "…")
    return text
