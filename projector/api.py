"""The JSON query API: bearer-token reads of the read models and the audit trail."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from projector import answers
from projector.answercache import AnswerCache, CachedAnswer
from projector.config import normalise_environment
from projector.cursors import InvalidCursor
from projector.flags import FLAGGED_CHOICES, flag_problem
from projector.http import ApiError, Handler, error_response, json_answer
from projector.readmodels import READ_MODELS
from projector.storage.port import Reads, StorageUnavailable
from projector.storage.queries import RUN_STATUS_FILTERS

logger = structlog.get_logger("projector.api")

READS = web.AppKey("reads", Reads)
_SEQ_VALUE = re.compile(r"[0-9]{1,18}")
_LIMIT_VALUE = re.compile(r"[0-9]{1,4}")


# --- parameters -------------------------------------------------------------------------


def query_params(
    request: web.Request, allowed: Iterable[str], *, environment: bool = True
) -> dict[str, str]:
    """The query parameters, refusing unknown or repeated ones (a typo must not widen a list)."""
    allowed = {"environment", *allowed} if environment else set(allowed)
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown query parameter(s) {', '.join(unknown)}; this endpoint takes "
            f"{', '.join(sorted(allowed))}",
        )
    repeated = sorted(k for k in request.query if len(request.query.getall(k)) > 1)
    if repeated:
        raise ApiError(400, "repeated_parameter", f"give {', '.join(repeated)} only once")
    return dict(request.query)


def environment_param(params: dict[str, str]) -> str:
    raw = params.get("environment", "live")
    environment = normalise_environment(raw)
    if environment is None:
        raise ApiError(
            400, "invalid_environment", f"environment {raw[:40]!r} is unknown; use test or live"
        )
    return environment


def _limit(params: dict[str, str]) -> int:
    raw = params.get("limit", "100")
    # ASCII digits only: str.isdigit() would also take '²', which int() refuses.
    if not _LIMIT_VALUE.fullmatch(raw) or not 1 <= int(raw) <= 1000:
        raise ApiError(400, "invalid_limit", "limit must be a whole number from 1 to 1000")
    return int(raw)


def _seq(raw: str, name: str) -> int:
    if not _SEQ_VALUE.fullmatch(raw):
        raise ApiError(400, f"invalid_{name}", f"{name} must be a log position (0 or more)")
    return int(raw)


def _status(params: dict[str, str], allowed: Sequence[str]) -> str | None:
    status = params.get("status")
    if status is not None and status not in allowed:
        choices = ", ".join(allowed)
        raise ApiError(400, "invalid_status", f"status {status[:40]!r} is not one of {choices}")
    return status


@contextmanager
def _cursor_checked() -> Iterator[None]:
    """Turn a cursor the queries cannot read into a 400."""
    try:
        yield
    # A forged cursor can decode to a lone surrogate ("\ud800"), which passes the cursor's type
    # checks but which no engine can bind: that is a bad cursor too, not a 500. (Path and query
    # values cannot hold one: aiohttp refuses raw non-ASCII and yarl leaves bad escapes as is.)
    except (InvalidCursor, UnicodeEncodeError):
        raise ApiError(
            400, "invalid_cursor", "cursor was not issued by this list; start again without it"
        ) from None


# --- handlers ---------------------------------------------------------------------------


async def account_connections(request: web.Request) -> web.Response:
    params = query_params(request, ())
    body = await request.app[READS].account_connections_json(
        environment_param(params),
        request.match_info["linked_account_id"],
    )
    return web.Response(body=body, content_type="application/json")


async def list_connections(request: web.Request) -> web.Response:
    params = query_params(request, ("status", "slug", "limit", "cursor"))
    environment, limit = environment_param(params), _limit(params)
    status = _status(params, ("connected", "expired", "deleted"))
    with _cursor_checked():
        answer = await request.app[READS].list_connections(
            environment, status, params.get("slug"), limit, params.get("cursor")
        )
    return json_answer(answer)


async def workflow_run(request: web.Request) -> web.Response:
    params = query_params(request, ("limit", "cursor"))
    environment, limit = environment_param(params), _limit(params)
    instance_id = request.match_info["instance_id"]
    with _cursor_checked():
        answer = await request.app[READS].workflow_run(
            environment, instance_id, limit, params.get("cursor")
        )
    if answer is None:
        raise ApiError(
            404,
            "run_not_found",
            "no workflow run with this instance_id in this environment (check ?environment=)",
        )
    return json_answer(answer)


async def account_runs(request: web.Request) -> web.Response:
    params = query_params(request, ("status", "workflow_id", "limit", "cursor"))
    environment, limit = environment_param(params), _limit(params)
    status = _status(params, RUN_STATUS_FILTERS)
    with _cursor_checked():
        answer = await request.app[READS].account_runs(
            environment,
            request.match_info["linked_account_id"],
            status,
            params.get("workflow_id"),
            limit,
            params.get("cursor"),
        )
    return json_answer(answer)


def _flagged(params: dict[str, str]) -> bool | None:
    raw = params.get("flagged")
    if raw is not None and raw not in ("true", "false"):
        message = f"flagged {raw[:40]!r} is not true or false: {FLAGGED_CHOICES}"
        raise ApiError(400, "invalid_flagged", message)
    return None if raw is None else raw == "true"


def _flag(params: dict[str, str]) -> str | None:
    flag = params.get("flag")
    problem = None if flag is None else flag_problem(flag)
    if problem is not None:
        raise ApiError(400, "invalid_flag", problem)
    return flag


async def audit_events(request: web.Request) -> web.Response:
    params = query_params(
        request, ("linked_account_id", "event", "after", "limit", "cursor", "flagged", "flag")
    )
    environment, limit = environment_param(params), _limit(params)
    after = _seq(params.get("after", "0"), "after")
    flagged, flag = _flagged(params), _flag(params)
    with _cursor_checked():
        answer = await request.app[READS].audit_events(
            environment,
            params.get("linked_account_id"),
            params.get("event"),
            after,
            limit,
            params.get("cursor"),
            flagged=flagged,
            flag=flag,
        )
    return json_answer(answer)


async def audit_event(request: web.Request) -> web.Response:
    params = query_params(request, ())
    seq = _seq(request.match_info["seq"], "seq")
    answer = await request.app[READS].audit_event(environment_param(params), seq)
    if answer is None:
        raise ApiError(
            404,
            "event_not_found",
            "no delivery at this seq in this environment (check ?environment=)",
        )
    return json_answer(answer)


async def projections(request: web.Request) -> web.Response:
    # The answer covers both environments; a given one is still checked, never ignored.
    environment_param(query_params(request, ()))
    answer = await request.app[READS].projection_states()
    return json_answer(answer)


PROJECTION_NAMES = tuple(model.name for model in READ_MODELS)


async def fold_errors(request: web.Request) -> web.Response:
    if "environment" in request.query:  # like the counts in /v1/projections: both at once
        message = "fold errors of both environments are listed together, each naming its own"
        raise ApiError(400, "unknown_parameter", f"{message}; this endpoint takes cursor, limit")
    params = query_params(request, ("limit", "cursor"), environment=False)
    name = request.match_info["name"]
    if name not in PROJECTION_NAMES:
        raise ApiError(
            404,
            "projection_not_found",
            f"no projection named {name[:60]!r}; the projections are "
            f"{', '.join(PROJECTION_NAMES)} (see /v1/projections)",
        )
    limit = _limit(params)
    with _cursor_checked():
        answer = await request.app[READS].fold_errors(name, limit, params.get("cursor"))
    return json_answer(answer)


async def healthz(request: web.Request) -> web.Response:
    return json_answer(answers.Health(status="ok"))


def add_query_routes(app: web.Application) -> None:
    """Register every GET route of the query API."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/accounts/{linked_account_id}/connections", account_connections)
    app.router.add_get("/v1/accounts/{linked_account_id}/workflow-runs", account_runs)
    app.router.add_get("/v1/connections", list_connections)
    app.router.add_get("/v1/workflow-runs/{instance_id}", workflow_run)
    app.router.add_get("/v1/events", audit_events)
    app.router.add_get("/v1/events/{seq}", audit_event)
    app.router.add_get("/v1/projections", projections)
    app.router.add_get("/v1/projections/{name}/errors", fold_errors)


# --- middlewares ------------------------------------------------------------------------


class _ReadTokens:
    """The configured read tokens; its repr names none, as logged tracebacks print locals."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        self._tokens = tokens

    def __repr__(self) -> str:
        return f"<{len(self._tokens)} read tokens>"

    def admit(self, authorization: str) -> bool:
        """True for `Bearer <a configured token>` (the scheme in any case)."""
        scheme, _, token = authorization.partition(" ")
        offered = token.strip().encode("utf-8", "surrogateescape")
        # compare_digest against every token: the time taken does not say which was near.
        valid = [hmac.compare_digest(offered, t) for t in self._tokens]
        return scheme.lower() == "bearer" and any(valid)


def bearer_auth(tokens: tuple[bytes, ...]) -> Middleware:
    """Refuse /v1 reads without a valid token, before routing, so a 401 reveals nothing."""
    # The middleware's frame is in the traceback of every failing read, and JSON logs print
    # each frame's locals: so the frame holds neither the tokens nor the offered one.
    read_tokens = _ReadTokens(tokens)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needs_token = request.path.startswith("/v1/") or request.path in ("/v1", "/metrics")
        if needs_token and not read_tokens.admit(request.headers.get("Authorization", "")):
            return error_response(
                401,
                "unauthorised",
                "send a valid read token as 'Authorization: Bearer <token>' "
                "(tokens are set in PROJECTOR_READ_TOKENS)",
                {"WWW-Authenticate": 'Bearer realm="refold-projector"'},
            )
        return await handler(request)

    return middleware


# Answers that depend on the read models only; the log's (/v1/events) and the projectors'
# own state (/v1/projections) change with every delivery and are always read.
CACHED_PREFIXES = ("/v1/accounts/", "/v1/connections", "/v1/workflow-runs")
CACHE_CONTROL = {"Cache-Control": "private, no-cache"}


def _matches(request: web.Request, tag: str) -> bool:
    offered = {
        t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")
    }
    return tag in offered or "*" in offered


def _not_modified(tag: str) -> web.Response:
    return web.Response(status=304, headers={"ETag": tag, **CACHE_CONTROL})


def _from_cache(request: web.Request, answer: CachedAnswer) -> web.Response:
    if _matches(request, answer.etag):
        return _not_modified(answer.etag)
    return web.Response(
        body=answer.body,
        content_type="application/json",
        headers={"ETag": answer.etag, **CACHE_CONTROL},
    )


def etag(cache: AnswerCache) -> Middleware:
    """Tag every successful read with a hash of its body; honour If-None-Match with a 304.

    Read-model answers are kept in `cache` until the read models change: a repeated read,
    conditional (If-None-Match) or not, then costs no database read at all.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        cacheable = request.method == "GET" and request.path.startswith(CACHED_PREFIXES)
        if cacheable and (kept := cache.get(request.path_qs)) is not None:
            return _from_cache(request, kept)
        version = cache.version  # before the read: an answer read across a change is not kept
        response = await handler(request)
        if request.method != "GET" or response.status != 200:
            return response
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        tag = '"' + hashlib.sha256(response.body).hexdigest()[:32] + '"'
        if cacheable:
            cache.put(request.path_qs, CachedAnswer(version, tag, response.body))
        if _matches(request, tag):
            return _not_modified(tag)
        response.headers["ETag"] = tag
        response.headers.update(CACHE_CONTROL)
        return response

    return middleware


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON: ours, aiohttp's (404, 405, 413) and unexpected ones (500)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}  # 405 names them
        return error_response(
            exc.status, code, f"{exc.reason}: {request.method} {request.path[:200]}", kept
        )
    except StorageUnavailable as exc:
        # The database is down or cut the connection: expected, and over once it is back, so
        # a 503 the client may retry, not a 500 (the pools reconnect by themselves).
        logger.warning(
            "read_unavailable", method=request.method, path=request.path[:200], detail=str(exc)
        )
        return error_response(
            503,
            "storage_unavailable",
            "the database could not be read just now; retry after Retry-After seconds",
            {"Retry-After": "5"},
        )
    except Exception:
        logger.exception("unexpected_error", method=request.method, path=request.path[:200])
        return error_response(500, "internal_error", "an unexpected error; it has been logged")
