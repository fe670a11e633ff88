"""The route table: every served route, what it takes, what it answers and how it refuses.

A new route is one more `Route(...)` in ROUTES: the OpenAPI document is built from it, and
a test fails while the served routes and the table differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from projector import answers
from projector.events import ConnectionEventPayload, WorkflowEventPayload
from projector.openapi_params import (
    ACCOUNT,
    ACCOUNT_FILTER,
    AFTER,
    ANY_ENVIRONMENT,
    CONNECTION_STATUS,
    CURSOR,
    ENVIRONMENT,
    EVENT,
    FLAG,
    FLAGGED,
    INSTANCE,
    LAST_EVENT_ID,
    LIMIT,
    MINUTES,
    PROJECTION,
    RUN_STATUS,
    SEQ,
    SLUG,
    WORKFLOW_ID,
    Param,
)
from projector.signature import SIGNATURE_HEADER

PAGED = (LIMIT, CURSOR)
# How an error answer is documented: its meaning, and its model when not the error shape.
ErrorDoc = str | tuple[str, type[BaseModel]]


@dataclass(frozen=True)
class Route:
    """One operation: what it takes, what it answers, and how it is refused.

    `answer` is the 200's model; None documents any JSON object, or text for a text/* type.
    `errors` are this route's own refusals, each in the one error shape unless it names its
    own model; the read token's 401 comes with `auth="readToken"`, and the 400 for a bad or
    unknown query parameter with any query parameter. `auth` names a SECURITY_SCHEMES entry.
    `conditional`: a GET answered whole gets an ETag and honours If-None-Match (304); a
    streamed one does not. `retry_after`: its 503 says when to retry.
    """

    method: Literal["GET", "POST"]
    path: str
    operation_id: str
    summary: str
    answer: type[BaseModel] | None
    params: tuple[Param, ...] = ()
    errors: Mapping[int, ErrorDoc] = field(default_factory=dict)
    auth: Literal["readToken", "refoldSignature"] | None = "readToken"
    body: tuple[type[BaseModel], ...] = ()  # the request body's possible models
    media_type: str = "application/json"
    description: str = ""
    conditional: bool = True
    retry_after: bool = False

    @property
    def is_conditional(self) -> bool:
        return self.method == "GET" and self.conditional


_RECEIVER_ERRORS = {
    400: "incomplete_body: the connection closed before the whole body arrived.",
    401: f"invalid_signature: {SIGNATURE_HEADER} is missing, malformed or matches no key; "
    "nothing is stored.",
    413: "body_too_large: the body is over PROJECTOR_MAX_BODY_BYTES.",
    415: "unsupported_encoding: a Content-Encoding other than identity.",
    503: "overloaded (over PROJECTOR_MAX_PENDING deliveries in progress) or storage_unavailable "
    "(the commit failed); nothing is stored: retry after Retry-After seconds.",
}

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/webhooks/refold",
        "receiveDelivery",
        "Receive a Refold webhook delivery",
        answers.DeliveryAccepted,
        errors=_RECEIVER_ERRORS,
        auth="refoldSignature",
        retry_after=True,
        body=(ConnectionEventPayload, WorkflowEventPayload),
        description="Verifies the signature, appends the raw body to the log, and answers 200 "
        "once the commit is durable. A signed body that is not a valid payload is still "
        "stored, and flagged.",
    ),
    Route("GET", "/healthz", "liveness", "Liveness", answers.Health, auth=None),
    Route(
        "GET",
        "/readyz",
        "readiness",
        "Readiness: the log takes writes and the projector keeps up",
        answers.Ready,
        errors={503: ("not_ready: the reasons say what is wrong.", answers.NotReady)},
        auth=None,
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics of this process, in the text exposition format",
        None,
        media_type="text/plain",
    ),
    Route("GET", "/openapi.json", "openapiDocument", "This document", None, auth=None),
    Route(
        "GET",
        "/docs",
        "apiDocs",
        "This document, for people",
        None,
        auth=None,
        media_type="text/html",
    ),
    Route(
        "GET",
        "/ui",
        "operatorPage",
        "The operator page (it asks for a read token, then reads /v1)",
        None,
        auth=None,
        media_type="text/html",
    ),
    Route(
        "GET",
        "/ui/ui.js",
        "operatorPageScript",
        "The operator page's script",
        None,
        auth=None,
        media_type="text/javascript",
    ),
    Route(
        "GET",
        "/ui/ui.css",
        "operatorPageStyle",
        "The operator page's style",
        None,
        auth=None,
        media_type="text/css",
    ),
    Route(
        "GET",
        "/v1/accounts/{linked_account_id}/connections",
        "accountConnections",
        "Reconnect banner: an account's connections",
        answers.AccountConnections,
        (ACCOUNT, ENVIRONMENT),
    ),
    Route(
        "GET",
        "/v1/accounts/{linked_account_id}/workflow-runs",
        "accountRuns",
        "An account's workflow runs",
        answers.WorkflowRunList,
        (ACCOUNT, ENVIRONMENT, RUN_STATUS, WORKFLOW_ID, *PAGED),
    ),
    Route(
        "GET",
        "/v1/connections",
        "listConnections",
        "Connections by account then app (who must reconnect?)",
        answers.ConnectionList,
        (ENVIRONMENT, CONNECTION_STATUS, SLUG, *PAGED),
    ),
    Route(
        "GET",
        "/v1/workflow-runs/{instance_id}",
        "workflowRun",
        "How a run ended, with a page of its deliveries",
        answers.WorkflowRunAnswer,
        (INSTANCE, ENVIRONMENT, *PAGED),
        {404: "run_not_found: no run with this instance_id in this environment."},
    ),
    Route(
        "GET",
        "/v1/events",
        "auditEvents",
        "The audit trail: every verified delivery, in log order",
        answers.AuditEventList,
        (ENVIRONMENT, ACCOUNT_FILTER, EVENT, AFTER, *PAGED, FLAGGED, FLAG),
    ),
    Route(
        "GET",
        "/v1/events/{seq}",
        "auditEvent",
        "One delivery, with its headers and exact bytes",
        answers.AuditEventDetail,
        (SEQ, ENVIRONMENT),
        {404: "event_not_found: no delivery at this seq in this environment."},
    ),
    Route(
        "GET",
        "/v1/changes",
        "changes",
        "Changes pushed live: a Server-Sent Events stream of the read models' changes",
        None,
        (ENVIRONMENT, ACCOUNT_FILTER, LAST_EVENT_ID),
        {
            400: "invalid_last_event_id: Last-Event-ID is not a seq, or is past the log's head.",
            503: "too_many_streams: PROJECTOR_MAX_STREAMS streams are open; retry after "
            "Retry-After seconds.",
        },
        media_type="text/event-stream",
        conditional=False,
        retry_after=True,
        description="Never ends by itself. One event per folded delivery, `id:` its seq: "
        "`event: connection` with the account's AccountConnections as data, or "
        "`event: workflow_run` with the run's WorkflowRunSummary; `: heartbeat` comments "
        "while idle. See the README's 'Changes pushed live'.",
    ),
    Route(
        "GET",
        "/v1/projections",
        "projections",
        "The log head and each projection's position",
        answers.Projections,
        (ANY_ENVIRONMENT,),
    ),
    Route(
        "GET",
        "/v1/stats",
        "processStats",
        "This process's deliveries per minute (the last hour) and each projection's lag now",
        answers.ProcessStats,
        (ANY_ENVIRONMENT, MINUTES),
        description="Counted by the process that answers, since it started: refused deliveries "
        "are never stored, so no other count exists. Both environments together. Unlike the "
        "other /v1 answers it depends on the clock.",
    ),
    Route(
        "GET",
        "/v1/projections/{name}/errors",
        "foldErrors",
        "Dead letters: the events a projection's fold raised on",
        answers.FoldErrorList,
        (PROJECTION, *PAGED),
        {404: "projection_not_found: no projection of this name."},
        description="Both environments at once: this list takes no environment.",
    ),
)
