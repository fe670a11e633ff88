"""Refold's webhook subscriptions: a small API client, and what subscribing would change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from projector.events import CONNECTION_STATUS_BY_EVENT, WORKFLOW_STATUS_BY_EVENT

# Every event this service folds, in Refold's Title Case: what `subscribe` asks for by default.
FOLDED_EVENTS: tuple[str, ...] = (*CONNECTION_STATUS_BY_EVENT, *WORKFLOW_STATUS_BY_EVENT)
WEBHOOK_PATH = "/api/v2/public/webhook"
RECEIVER_PATH = "/webhooks/refold"
Action = Literal["create", "update", "leave"]


class RefoldError(Exception):
    """Refold refused a request or could not be reached; the message is one line, keyless."""


@dataclass(frozen=True)
class Subscription:
    """One of Refold's webhook subscriptions, as its API answers it."""

    id: str
    environment: str
    webhook_url: str
    webhook_events: tuple[str, ...]
    is_enabled: bool
    created_at: str | None

    @classmethod
    def from_answer(cls, answer: Any, environment: str) -> Subscription:
        """Read one subscription of Refold's answer, or raise RefoldError if it is not one."""
        if not isinstance(answer, dict) or not isinstance(answer.get("_id"), str):
            raise RefoldError(
                f"Refold's {environment} answer holds something that is not a subscription"
            )
        events = answer.get("webhook_events")
        created = answer.get("createdAt")
        return cls(
            id=answer["_id"],
            environment=str(answer.get("environment") or environment),
            webhook_url=str(answer.get("webhook_url", "")),
            webhook_events=tuple(str(e) for e in events) if isinstance(events, list) else (),
            is_enabled=answer.get("is_enabled", True) is not False,
            created_at=created if isinstance(created, str) else None,
        )


@dataclass(frozen=True)
class Plan:
    """What `subscribe` does in one environment: create, update `subscription_id`, or leave."""

    action: Action
    subscription_id: str | None = None


def plan_subscription(existing: list[Subscription], url: str, events: tuple[str, ...]) -> Plan:
    """Decide how to make `url` receive exactly `events`, enabled, without a second subscription.

    The first subscription to the same URL is kept (updated if its events or its being
    enabled differ); only when there is none is one created.
    """
    for subscription in existing:
        if subscription.webhook_url == url:
            same = set(subscription.webhook_events) == set(events) and subscription.is_enabled
            return Plan("leave" if same else "update", subscription.id)
    return Plan("create")


def uncovered_events(subscriptions: list[Subscription], url: str | None) -> list[str]:
    """Folded events no enabled subscription covers (only those to `url`, when it is set)."""
    covered = {
        event
        for subscription in subscriptions
        if subscription.is_enabled and (url is None or subscription.webhook_url == url)
        for event in subscription.webhook_events
    }
    return [event for event in FOLDED_EVENTS if event not in covered]


def receiver_url(public_url: str | None) -> str | None:
    """The address Refold should deliver to, from PROJECTOR_PUBLIC_URL (None if unset)."""
    return None if public_url is None else public_url + RECEIVER_PATH


class RefoldClient:
    """Refold's webhook API for one environment, with that environment's API key."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, environment: str, api_key: str
    ) -> None:
        self._session = session
        self._base_url = base_url
        self.environment = environment
        self._api_key = api_key  # sent as x-api-key only; never part of a message

    async def list(self) -> list[Subscription]:
        answer = await self._request("GET", WEBHOOK_PATH)
        if not isinstance(answer, list):
            raise RefoldError(
                f"Refold's {self.environment} list of subscriptions is not a list; "
                "check PROJECTOR_REFOLD_API names Refold's API"
            )
        return [Subscription.from_answer(item, self.environment) for item in answer]

    async def create(self, url: str, events: tuple[str, ...]) -> Subscription:
        body = {"webhook_url": url, "webhook_events": list(events), "is_enabled": True}
        answer = await self._request("POST", WEBHOOK_PATH, body)
        return Subscription.from_answer(answer, self.environment)

    async def update(self, subscription_id: str, url: str, events: tuple[str, ...]) -> None:
        body = {"webhook_url": url, "webhook_events": list(events), "is_enabled": True}
        await self._request("PUT", f"{WEBHOOK_PATH}/{subscription_id}", body)

    async def delete(self, subscription_id: str) -> None:
        await self._request("DELETE", f"{WEBHOOK_PATH}/{subscription_id}")

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        where = f"{method} {self._base_url}{path} ({self.environment})"
        try:
            async with self._session.request(
                method, self._base_url + path, json=body, headers={"x-api-key": self._api_key}
            ) as response:
                text = await response.text(errors="replace")
                if response.status >= 400:
                    raise RefoldError(self._refusal(where, response.status, text))
                try:
                    return await response.json(content_type=None)
                except ValueError:
                    raise RefoldError(
                        f"{where}: Refold answered HTTP {response.status} with something that "
                        "is not JSON; check PROJECTOR_REFOLD_API names Refold's API"
                    ) from None
        except TimeoutError:
            seconds = self._session.timeout.total
            raise RefoldError(
                f"{where}: Refold did not answer within {seconds:g} s; try again later, or "
                "check PROJECTOR_REFOLD_API and PROJECTOR_REFOLD_TIMEOUT_SECONDS"
            ) from None
        except aiohttp.ClientError as exc:
            reason = self._redact(str(exc)) or type(exc).__name__
            raise RefoldError(
                f"{where}: cannot reach Refold ({reason}); check PROJECTOR_REFOLD_API "
                "and the network"
            ) from None

    def _refusal(self, where: str, status: int, text: str) -> str:
        if status in (401, 403):
            return (
                f"{where}: Refold refused the {self.environment} API key (HTTP {status}); "
                f"put the {self.environment} environment's API key from Refold's console "
                f"first among the {self.environment} keys of PROJECTOR_SIGNING_KEYS"
            )
        detail = self._redact(" ".join(text.split()))[:200]
        detail = f": {detail}" if detail else ""
        if status >= 500:
            return f"{where}: Refold failed (HTTP {status}{detail}); try again later"
        return f"{where}: Refold refused the request (HTTP {status}{detail})"

    def _redact(self, text: str) -> str:
        """Text that is shown: an echo of the key, however unlikely, is cut out of it."""
        return text.replace(self._api_key, "[key]")


def client_session(timeout_seconds: float) -> aiohttp.ClientSession:
    """A session whose every request is bounded by `timeout_seconds` in all."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds))


async def gather_lists(clients: list[RefoldClient]) -> list[list[Subscription]]:
    """Each environment's subscriptions, asked for at once."""
    return list(await asyncio.gather(*(client.list() for client in clients)))
