"""`POST /webhooks/refold`: verify, parse, append durably, then answer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog
from aiohttp import web

from projector import log
from projector.answers import DeliveryAccepted
from projector.config import SigningKey
from projector.events import format_instant, parse_delivery
from projector.http import ApiError, Handler, json_answer
from projector.signature import SIGNATURE_HEADER, header_problem, verify_signature
from projector.writer import Overloaded, StorageUnavailable, WriteLane

logger = structlog.get_logger("projector.receiver")

# Headers kept with each delivery for the audit trail; nothing that could hold a secret.
KEPT_HEADERS = ("content-type", "user-agent", SIGNATURE_HEADER)
RETRY_AFTER = {"Retry-After": "5"}


def _unauthorised(reason: str) -> ApiError:
    return ApiError(
        401,
        "invalid_signature",
        f"{reason}: sign the raw body with HMAC-SHA256 keyed on the environment's API key and "
        f"send it as lowercase hex in the {SIGNATURE_HEADER} header",
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the body is larger than {limit} bytes; Refold deliveries are far smaller, so this is "
        "not a Refold delivery (or PROJECTOR_MAX_BODY_BYTES is set too low)",
    )


async def read_bounded_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` without reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
    except ConnectionResetError:
        # The sender hung up before its body was complete: nothing is stored and no one is left
        # to answer. That is the network's doing, so it is not logged as an unexpected error.
        logger.info("delivery_incomplete", received_bytes=len(body))
        raise ApiError(
            400, "incomplete_body", "the connection closed before the whole body arrived"
        ) from None
    return bytes(body)


def _kept_headers(request: web.Request) -> dict[str, str]:
    headers = request.headers
    return {name: log.header_text(headers[name]) for name in KEPT_HEADERS if name in headers}


def _overloaded() -> ApiError:
    return ApiError(
        503,
        "overloaded",
        "too many deliveries are being received or stored; retry after a few seconds",
        RETRY_AFTER,
    )


def make_receiver(
    lane: WriteLane,
    keys: tuple[SigningKey, ...],
    max_body_bytes: int,
    max_pending: int,
    clock: Callable[[], datetime],
) -> Handler:
    """The receiver handler, bound to its write lane, keys, limits and clock."""
    in_progress = 0

    async def receive_delivery(request: web.Request) -> web.Response:
        nonlocal in_progress
        # Counted from the request's start to its answer, not just while queued for the
        # writer: bodies being read and verified are memory too, so this bounds it at about
        # max_pending x max_body_bytes however many connections arrive.
        if in_progress >= max_pending:
            logger.warning("delivery_refused_overloaded", in_progress=in_progress)
            raise _overloaded()
        in_progress += 1
        try:
            return await _receive(request)
        finally:
            in_progress -= 1

    async def _receive(request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding!r} is not accepted: Refold sends plain JSON bodies",
            )
        body = await read_bounded_body(request, max_body_bytes)
        try:
            claimed = [
                v.encode("utf-8", "surrogateescape")
                for v in request.headers.getall(SIGNATURE_HEADER, [])
            ]
        except UnicodeEncodeError:
            raise _unauthorised(f"the {SIGNATURE_HEADER} header is not ASCII hex") from None
        problem = header_problem(claimed)
        if problem is not None:
            raise _unauthorised(problem)
        match = verify_signature(body, claimed, keys)
        if match is None:
            raise _unauthorised("the signature does not match any configured key")
        environment = match.key.environment
        parsed = parse_delivery(body, environment)
        delivery = log.NewDelivery.verified(
            body,
            parsed,
            environment=environment,
            received_at=format_instant(clock()),
            key_id=match.key.key_id,
            signed_as=match.signed_as,
            headers=_kept_headers(request),
        )
        # Not logger.bind(): binding costs every delivery; these lines are the rare ones.
        context = {"environment": environment, "refold_event": parsed.event}
        try:
            appended = await lane.append(delivery)
        except Overloaded as exc:
            logger.warning("delivery_refused_overloaded", reason=str(exc), **context)
            raise _overloaded() from None
        except StorageUnavailable as exc:
            logger.error("delivery_not_stored", reason=str(exc), **context)
            raise ApiError(
                503,
                "storage_unavailable",
                "the delivery could not be stored durably; nothing was kept, retry later",
                RETRY_AFTER,
            ) from None
        # Debug, not info: one rendered line per delivery would cost more CPU than storing it,
        # and the log itself (GET /v1/events) is the audit trail of every delivery.
        logger.debug(
            "delivery_stored",
            seq=appended.seq,
            duplicate=appended.duplicate_of is not None,
            flags=list(parsed.flags),
            signed_as=match.signed_as,
            key_id=match.key.key_id,
            **context,
        )
        # model_construct: every field is ours and already typed; validating costs each 200.
        return json_answer(
            DeliveryAccepted.model_construct(
                seq=appended.seq,
                environment=environment,
                duplicate=appended.duplicate_of is not None,
            )
        )

    return receive_delivery
