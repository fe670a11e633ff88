"""The parameters the OpenAPI document describes, each once, shared by the routes taking it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from projector.flags import FIELD_FLAG_KINDS, WHOLE_FLAGS
from projector.readmodels import READ_MODELS
from projector.storage.queries import RUN_STATUS_FILTERS

JsonObject = dict[str, Any]
_SEQ_MAX = 10**18 - 1  # what the API's seq check accepts: 1 to 18 digits


@dataclass(frozen=True)
class Param:
    """One path or query parameter, as documented."""

    name: str
    where: Literal["path", "query", "header"]
    schema: JsonObject
    description: str
    example: Any = None

    def document(self) -> JsonObject:
        doc: JsonObject = {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "description": self.description,
            "schema": self.schema,
        }
        if self.example is not None:
            doc["example"] = self.example
        return doc


def _text(name: str, where: Literal["path", "query"], description: str, example: str = "") -> Param:
    # A path segment cannot be empty (the route would not match); a filter may be, and then
    # matches nothing.
    schema: JsonObject = (
        {"type": "string", "minLength": 1} if where == "path" else {"type": "string"}
    )
    return Param(name, where, schema, description, example or None)


ENVIRONMENT = Param(
    "environment",
    "query",
    {"type": "string", "enum": ["live", "test", "production"], "default": "live"},
    "Which environment's data: live (default; production is an alias) or test; any case.",
)
ANY_ENVIRONMENT = Param(
    "environment",
    "query",
    {"type": "string", "enum": ["live", "test", "production"], "default": "live"},
    "Checked like everywhere else, but the answer is the same: positions cover both.",
)
LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "Page size.",
)
CURSOR = Param(
    "cursor",
    "query",
    {"type": "string"},
    "Opaque: the next_cursor of the previous page of the same list (anything else is a 400).",
)
CONNECTION_STATUS = Param(
    "status",
    "query",
    {"type": "string", "enum": ["connected", "expired", "deleted"]},
    "Only connections with this status.",
)
RUN_STATUS = Param(
    "status",
    "query",
    {"type": "string", "enum": list(RUN_STATUS_FILTERS)},
    "Only runs with this status; other: a status beyond Refold's four.",
)
SLUG = _text("slug", "query", "Only this app (e.g. gmail).", "gmail")
WORKFLOW_ID = _text("workflow_id", "query", "Only runs of this workflow.")
ACCOUNT_FILTER = _text("linked_account_id", "query", "Only this account's deliveries.")
EVENT = _text("event", "query", "Only this Refold event, e.g. Connection Expired.")
AFTER = Param(
    "after",
    "query",
    {"type": "integer", "minimum": 0, "maximum": _SEQ_MAX, "default": 0},
    "Only deliveries with a greater seq.",
)
FLAGGED = Param(
    "flagged",
    "query",
    {"type": "string", "enum": ["true", "false"]},
    "true: flagged deliveries only; false: clean ones only; absent: both.",
)
_FLAG_PATTERN = f"^({'|'.join(WHOLE_FLAGS)}|({'|'.join(FIELD_FLAG_KINDS)}):[A-Za-z0-9_.]{{1,100}})$"
FLAG = Param(
    "flag",
    "query",
    {"type": "string", "pattern": _FLAG_PATTERN},
    "Only deliveries carrying this one flag, compared whole (e.g. missing_field:slug).",
    "missing_field:slug",
)
ACCOUNT = _text("linked_account_id", "path", "Refold's linked account id.", "12345")
INSTANCE = _text(
    "instance_id", "path", "The workflow run's instance id.", "1899cf32fe971155daaa2cd2"
)
SEQ = Param(
    "seq",
    "path",
    {"type": "integer", "minimum": 0, "maximum": _SEQ_MAX},
    "A delivery's position in the log.",
    3,
)
MINUTES = Param(
    "minutes",
    "query",
    {"type": "integer", "minimum": 1, "maximum": 60, "default": 60},
    "How many minutes back, the current one included (1..60, default 60).",
)
PROJECTION = Param(
    "name",
    "path",
    {"type": "string", "minLength": 1},
    f"A projection: {', '.join(model.name for model in READ_MODELS)} (else 404).",
    READ_MODELS[0].name,
)
IF_NONE_MATCH = Param(
    "If-None-Match",
    "header",
    {"type": "string"},
    "ETags of answers you hold (or *): a 304 without a body when the answer is unchanged.",
)

LAST_EVENT_ID = Param(
    "Last-Event-ID",
    "header",
    {"type": "string", "pattern": "^[0-9]{0,18}$"},
    "The id of the last event received: every change after that seq is replayed from the "
    "log first. Absent or empty: the stream starts after what is folded now.",
    "536",
)
