"""`POST /webhooks/refold`: verify, parse, append durably, then answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import structlog
from aiohttp import web

from projector.answers import DeliveryAccepted
from projector.config import SigningKey
from projector.events import format_instant, parse_delivery
from projector.http import ApiError, Handler, header_text, json_answer
from projector.metrics import Metrics
from projector.signature import SIGNATURE_HEADER, header_problem, verify_signature
from projector.storage.port import EventLog, Overloaded, StorageUnavailable
from projector.storage.rows import NewDelivery

logger = structlog.get_logger("projector.receiver")

# Headers kept with each delivery for the audit trail; nothing that could hold a secret.
KEPT_HEADERS = ("content-type", "user-agent", SIGNATURE_HEADER)
RETRY_AFTER = {"Retry-After": "5"}
# A wrong key or no room to store may need the operator; a malformed request is the sender's.
_WARNING_STATUSES = frozenset({401, 503})


def log_refusal(request: web.Request, refusal: ApiError, metrics: Metrics) -> None:
    """The one log line (and count) of a refused delivery: why, who sent how much; no content."""
    metrics.refusal(refusal.status, refusal.code)
    log = logger.warning if refusal.status in _WARNING_STATUSES else logger.info
    log(
        "delivery_refused",
        reason=refusal.code,
        status=refusal.status,
        remote=request.remote,
        content_length=request.content_length,
        **refusal.context,
    )


def _unauthorised(reason: str) -> ApiError:
    return ApiError(
        401,
        "invalid_signature",
        f"{reason}: sign the raw body with HMAC-SHA256 keyed on the environment's API key and "
        f"send it as lowercase hex in the {SIGNATURE_HEADER} header",
        # The reason names what was wrong with the header, never its value.
        context={"detail": reason},
    )


def _too_large(limit: int, received_bytes: int | None = None) -> ApiError:
    read = {} if received_bytes is None else {"received_bytes": received_bytes}
    return ApiError(
        413,
        "body_too_large",
        f"the body is larger than {limit} bytes; Refold deliveries are far smaller, so this is "
        "not a Refold delivery (or PROJECTOR_MAX_BODY_BYTES is set too low)",
        context={"max_body_bytes": limit, **read},
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
                raise _too_large(limit, len(body))
    except ConnectionResetError:
        # The sender hung up before its body was complete: nothing is stored and no one is left
        # to answer. That is the network's doing: a refusal like the others, not an unexpected
        # error.
        raise ApiError(
            400, "incomplete_body", "the connection closed before the whole body arrived"
        ) from None
    return bytes(body)


def _kept_headers(request: web.Request) -> dict[str, str]:
    headers = request.headers
    return {name: header_text(headers[name]) for name in KEPT_HEADERS if name in headers}


def _overloaded(**context: object) -> ApiError:
    return ApiError(
        503,
        "overloaded",
        "too many deliveries are being received or stored; retry after a few seconds",
        RETRY_AFTER,
        context=context,
    )


def make_receiver(
    event_log: EventLog,
    keys: tuple[SigningKey, ...],
    max_body_bytes: int,
    max_pending: int,
    clock: Callable[[], datetime],
    metrics: Metrics,
) -> Handler:
    """The receiver handler, bound to its event log, keys, limits and clock."""
    in_progress = 0

    async def receive_delivery(request: web.Request) -> web.Response:
        nonlocal in_progress
        # Every refusal leaves here, so each is logged exactly once, whatever raised it.
        try:
            # Counted from the request's start to its answer, not just while queued for the
            # writer: bodies being read and verified are memory too, so this bounds it at
            # about max_pending x max_body_bytes however many connections arrive.
            if in_progress >= max_pending:
                raise _overloaded(in_progress=in_progress)
            in_progress += 1
            try:
                return await _receive(request)
            finally:
                in_progress -= 1
        except ApiError as refusal:
            log_refusal(request, refusal, metrics)
            raise

    async def _receive(request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding!r} is not accepted: Refold sends plain JSON bodies",
                context={"content_encoding": encoding[:40]},
            )
        body = await read_bounded_body(request, max_body_bytes)
        received = time.perf_counter()
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
        delivery = NewDelivery.verified(
            body,
            parsed,
            environment=environment,
            received_at=format_instant(clock()),
            key_id=match.key.key_id,
            signed_as=match.signed_as,
            headers=_kept_headers(request),
        )
        try:
            appended = await event_log.append(delivery)
        except Overloaded as exc:
            raise _overloaded(detail=str(exc), environment=environment) from None
        except StorageUnavailable as exc:
            # A failed commit is logged by the writer too, as append_failed, once per batch.
            raise ApiError(
                503,
                "storage_unavailable",
                "the delivery could not be stored durably; nothing was kept, retry later",
                RETRY_AFTER,
                context={"detail": str(exc), "environment": environment},
            ) from None
        metrics.append_seconds.observe(time.perf_counter() - received)
        duplicate = appended.duplicate_of is not None
        metrics.stored(environment, duplicate=duplicate, flagged=bool(parsed.flags))
        # Debug, not info: one rendered line per delivery would cost more CPU than storing it,
        # and the log itself (GET /v1/events) is the audit trail of every delivery.
        logger.debug(
            "delivery_stored",
            seq=appended.seq,
            duplicate=duplicate,
            flags=list(parsed.flags),
            signed_as=match.signed_as,
            key_id=match.key.key_id,
            environment=environment,
            refold_event=parsed.event,
        )
        # model_construct: every field is ours and already typed; validating costs each 200.
        return json_answer(
            DeliveryAccepted.model_construct(
                seq=appended.seq,
                environment=environment,
                duplicate=duplicate,
                flags=list(parsed.flags),
            )
        )

    return receive_delivery
