"""The OpenAPI 3.1 document of every route, built from the route table (projector.routes)."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from projector import __version__, answers
from projector.events import ConnectionEventPayload, WorkflowEventPayload
from projector.openapi_params import IF_NONE_MATCH, JsonObject
from projector.routes import ROUTES, ErrorDoc, Route
from projector.signature import SIGNATURE_HEADER

REF = "#/components/schemas/{model}"
COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    *answers.ANSWERS,
    ConnectionEventPayload,
    WorkflowEventPayload,
)

_BAD_PARAMETER = (
    "A parameter is unknown, repeated or out of range (unknown_parameter, repeated_parameter, "
    "invalid_environment, invalid_limit, invalid_cursor, invalid_status, ...); the message "
    "says what to send."
)
_UNAUTHORISED = "unauthorised: no valid 'Authorization: Bearer <token>' (PROJECTOR_READ_TOKENS)."


SECURITY_SCHEMES: JsonObject = {
    "readToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "Every /v1 read: one of the tokens in PROJECTOR_READ_TOKENS.",
    },
    "refoldSignature": {
        "type": "apiKey",
        "in": "header",
        "name": SIGNATURE_HEADER,
        "description": "HMAC-SHA256 of the raw body, keyed on the environment's Refold API key "
        "(one of PROJECTOR_SIGNING_KEYS), as 64 hex digits; the key that matches decides the "
        "environment. A signature over the body's compact JSON form is also accepted.",
    },
}


# Lists keep their order in the document (only keys are sorted): /docs shows groups in this order.
TAGS = [
    {"name": "receiver", "description": "Refold's deliveries in: signed, not token-protected."},
    {"name": "query", "description": "The read models and the log, behind a read token."},
    {"name": "service", "description": "The service itself."},
]


def _tag(route: Route) -> str:
    if route.auth == "refoldSignature":
        return "receiver"
    return "query" if route.path.startswith("/v1/") else "service"


def _ref(model: type[BaseModel]) -> JsonObject:
    return {"$ref": REF.format(model=model.__name__)}


def _header(description: str) -> JsonObject:
    return {"description": description, "required": True, "schema": {"type": "string"}}


_ETAG = {"ETag": _header("A hash of the answer; send it back in If-None-Match.")}
_ANSWER_HEADERS = {**_ETAG, "Cache-Control": _header("private, no-cache")}


def _error(answer: ErrorDoc, headers: JsonObject | None = None) -> JsonObject:
    description, model = answer if isinstance(answer, tuple) else (answer, answers.ErrorAnswer)
    doc: JsonObject = {
        "description": description,
        "content": {"application/json": {"schema": _ref(model)}},
    }
    if headers:
        doc["headers"] = headers
    return doc


def _answer_schema(route: Route) -> JsonObject:
    if route.answer is not None:
        return _ref(route.answer)
    return {"type": "string"} if route.media_type.startswith("text/") else {"type": "object"}


def _responses(route: Route) -> JsonObject:
    ok: JsonObject = {
        "description": "OK",
        "content": {route.media_type: {"schema": _answer_schema(route)}},
    }
    responses: JsonObject = {"200": ok}
    if route.is_conditional:  # the etag middleware tags every whole GET answer
        ok["headers"] = _ANSWER_HEADERS
        responses["304"] = {"description": "Not Modified: If-None-Match holds its ETag.",
                            "headers": _ETAG}  # fmt: skip
    errors: dict[int, ErrorDoc] = dict(route.errors)
    if any(param.where == "query" for param in route.params):
        errors[400] = _BAD_PARAMETER
    if route.auth == "readToken":
        errors[401] = _UNAUTHORISED
    reads_storage = route.path.startswith("/v1/")
    if reads_storage:  # every /v1 answer is read from the database, which may be away
        own = errors.get(503)
        errors[503] = _STORAGE_UNAVAILABLE if own is None else _either(own, _STORAGE_UNAVAILABLE)
    for status in sorted(errors):
        headers: JsonObject | None = None
        if status == 401 and route.auth == "readToken":
            headers = {"WWW-Authenticate": _header('Bearer realm="refold-projector"')}
        elif status == 503 and (route.retry_after or reads_storage):
            headers = {"Retry-After": _header("Seconds to wait before retrying: 5.")}
        responses[str(status)] = _error(errors[status], headers)
    responses["default"] = _error("internal_error (500): an unexpected error; it is logged.")
    return responses


_STORAGE_UNAVAILABLE = (
    "storage_unavailable: the database could not be read just now (restarting, or a "
    "connection was cut); retry after Retry-After seconds."
)


def _either(own: ErrorDoc, shared: str) -> ErrorDoc:
    """A route's own 503 text with the shared one added (its own model, if any, kept)."""
    if isinstance(own, str):
        return f"{own.rstrip('.')}; or {shared}"
    text, model = own
    return (f"{text.rstrip('.')}; or {shared}", model)


def _operation(route: Route) -> JsonObject:
    params = list(route.params)
    if route.is_conditional:
        params.append(IF_NONE_MATCH)
    operation: JsonObject = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [_tag(route)],
        "parameters": [param.document() for param in params],
        "responses": _responses(route),
        "security": [] if route.auth is None else [{route.auth: []}],
    }
    if route.description:
        operation["description"] = route.description
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "description": "The delivery exactly as Refold sends it; its bytes are what is "
            "signed and stored.",
            "content": {"application/json": {"schema": {"anyOf": [_ref(m) for m in route.body]}}},
        }
    return operation


def component_schemas() -> JsonObject:
    """The JSON Schema of every answer and payload model, as OpenAPI components."""
    _, top = models_json_schema(
        [(model, "serialization") for model in COMPONENT_MODELS], ref_template=REF
    )
    return dict(top["$defs"])


def openapi_document() -> JsonObject:
    """The whole OpenAPI 3.1 document, deterministic to the byte once serialised."""
    paths: JsonObject = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "refold-projector",
            "version": __version__,
            "description": "Refold webhooks in, a durable event log, read models out. Every "
            'error answers {"error": {"code", "message"}}.',
        },
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": component_schemas(), "securitySchemes": SECURITY_SCHEMES},
    }
