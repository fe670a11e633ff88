"""projector.schemas: committed JSON Schemas match the pydantic models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from projector.apidocs import openapi_text
from projector.schemas import OPENAPI_FILE, render_schemas, stale_schemas, write_schemas
from tests.support import REPO

COMMITTED = REPO / "schemas"


def test_committed_schemas_are_exactly_what_the_models_generate() -> None:
    stale = stale_schemas(COMMITTED)
    assert stale == [], (
        f"schemas/ is out of date ({', '.join(stale)}); "
        "run `projector schemas` (or `make schemas`) and commit the result"
    )


def test_committed_schema_files_are_exactly_the_rendered_set() -> None:
    on_disk = sorted(
        p.relative_to(COMMITTED).as_posix() for p in COMMITTED.glob("**/*.json") if p.is_file()
    )
    assert on_disk == sorted(render_schemas()), (
        "schemas/ holds a different set of files; run `projector schemas` (or `make schemas`)"
    )


def test_render_schemas_covers_both_event_payloads() -> None:
    rendered = render_schemas()
    assert "events/ConnectionEventPayload.json" in rendered
    assert "events/WorkflowEventPayload.json" in rendered
    assert all(name.startswith(("events/", "answers/")) for name in set(rendered) - {OPENAPI_FILE})


def test_render_schemas_includes_the_openapi_document_as_served() -> None:
    assert render_schemas()[OPENAPI_FILE] == openapi_text()
    assert json.loads(render_schemas()[OPENAPI_FILE])["openapi"] == "3.1.0"


def test_render_schemas_is_deterministic() -> None:
    assert render_schemas() == render_schemas()


def test_stale_schemas_reports_a_changed_and_an_extra_file(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(COMMITTED, copy)
    changed = copy / "events" / "ConnectionEventPayload.json"
    changed.write_text(changed.read_text(encoding="utf-8") + " ", encoding="utf-8")
    (copy / "answers" / "Obsolete.json").write_text("{}", encoding="utf-8")
    assert stale_schemas(copy) == ["answers/Obsolete.json", "events/ConnectionEventPayload.json"]


def test_stale_schemas_reports_a_changed_or_missing_openapi_document(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(COMMITTED, copy)
    document = copy / OPENAPI_FILE
    document.write_text(document.read_text(encoding="utf-8").replace("3.1.0", "3.0.0"))
    assert stale_schemas(copy) == [OPENAPI_FILE]
    document.unlink()
    assert stale_schemas(copy) == [OPENAPI_FILE]


def test_write_schemas_leaves_other_files_beside_the_document_alone(tmp_path: Path) -> None:
    unrelated = tmp_path / "package.json"
    unrelated.write_text("{}", encoding="utf-8")
    write_schemas(tmp_path)
    assert unrelated.read_text(encoding="utf-8") == "{}"
    assert (tmp_path / OPENAPI_FILE).read_text(encoding="utf-8") == openapi_text()


def test_stale_schemas_reports_a_missing_file(tmp_path: Path) -> None:
    copy = tmp_path / "schemas"
    shutil.copytree(COMMITTED, copy)
    (copy / "events" / "WorkflowEventPayload.json").unlink()
    assert stale_schemas(copy) == ["events/WorkflowEventPayload.json"]


def test_stale_schemas_of_an_empty_folder_lists_every_schema(tmp_path: Path) -> None:
    assert stale_schemas(tmp_path) == sorted(render_schemas())


def test_write_schemas_produces_parseable_json_schemas_with_properties(tmp_path: Path) -> None:
    written = write_schemas(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(render_schemas())
    for path in written:
        if path.name == OPENAPI_FILE:  # a document, not one schema
            continue
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert "properties" in schema, path
        assert schema["type"] == "object", path
    assert stale_schemas(tmp_path) == []


def test_write_schemas_removes_stale_files_and_fixes_changed_ones(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    obsolete = tmp_path / "answers" / "Obsolete.json"
    obsolete.write_text("{}", encoding="utf-8")
    (tmp_path / "events" / "WorkflowEventPayload.json").write_text("{}", encoding="utf-8")
    write_schemas(tmp_path)
    assert not obsolete.exists()
    assert stale_schemas(tmp_path) == []


def test_event_schemas_allow_unknown_fields() -> None:
    for name in ("events/ConnectionEventPayload.json", "events/WorkflowEventPayload.json"):
        assert json.loads(render_schemas()[name]).get("additionalProperties") is True, name
