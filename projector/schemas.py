"""JSON Schemas of the payloads and answers, and the OpenAPI document, from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from projector.answers import ANSWERS
from projector.apidocs import openapi_text
from projector.events import ConnectionEventPayload, WorkflowEventPayload

EVENT_PAYLOADS: tuple[type[BaseModel], ...] = (ConnectionEventPayload, WorkflowEventPayload)
OPENAPI_FILE = "openapi.json"  # the same bytes GET /openapi.json serves


def render_schemas() -> dict[str, str]:
    """Relative path -> file text for every schema, deterministic to the byte."""
    files = {}
    for folder, models in (("events", EVENT_PAYLOADS), ("answers", ANSWERS)):
        for model in models:
            schema = model.model_json_schema(mode="serialization")
            text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            files[f"{folder}/{model.__name__}.json"] = text
    files[OPENAPI_FILE] = openapi_text()
    return files


def _on_disk(out: Path) -> list[Path]:
    """The schema files under `out`: the document at the top, schemas one folder down."""
    return sorted([*out.glob(OPENAPI_FILE), *out.glob("*/*.json")])


def write_schemas(out: Path) -> list[Path]:
    """Write every schema under `out`, removing stale ones; returns the files written."""
    written = []
    files = render_schemas()
    for stale in _on_disk(out):
        if stale.relative_to(out).as_posix() not in files:
            stale.unlink()
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(out: Path) -> list[str]:
    """The schema files under `out` that differ from what the models generate."""
    files = render_schemas()
    problems = [
        name
        for name, text in files.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    extra = [
        p.relative_to(out).as_posix()
        for p in _on_disk(out)
        if p.relative_to(out).as_posix() not in files
    ]
    return sorted(problems + extra)
