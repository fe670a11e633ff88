"""projector.openapi: the document covers exactly the served routes, parameters and answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from projector.answers import ANSWERS
from projector.app import build_app
from projector.config import Settings
from projector.openapi import COMPONENT_MODELS, openapi_document
from projector.routes import ROUTES
from projector.schemas import EVENT_PAYLOADS
from tests.support import AUTH

DOCUMENT = openapi_document()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
]
READS = [(path, op) for method, path, op in OPERATIONS if path.startswith("/v1/")]
# Every query parameter name any route takes, and one no route takes.
QUERY_NAMES = sorted(
    {p["name"] for *_, op in OPERATIONS for p in op["parameters"] if p["in"] == "query"} | {"limt"}
)


def _served(path: str, operation: dict[str, Any]) -> str:
    """The path with each path parameter filled in with its documented example."""
    for param in operation["parameters"]:
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", str(param["example"]))
    return path


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    errors = [error.message for error in OPENAPI_31_VALIDATOR.iter_errors(DOCUMENT)]
    assert errors == []


def test_the_validator_catches_a_broken_document() -> None:
    broken = json.loads(json.dumps(DOCUMENT))
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = {"content": {}}  # no description
    assert list(OPENAPI_31_VALIDATOR.iter_errors(broken))


def test_every_served_route_is_in_the_table_and_every_table_route_is_served(
    settings: Settings,
) -> None:
    app = build_app(settings)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # add_get adds HEAD itself
    }
    documented = {(route.method, route.path) for route in ROUTES}
    assert served - documented == set(), "served but not in projector.routes.ROUTES"
    assert documented - served == set(), "in projector.routes.ROUTES but not served"
    assert {(method, path) for method, path, _ in OPERATIONS} == documented


@pytest.mark.parametrize(("path", "operation"), READS, ids=[path for path, _ in READS])
async def test_each_read_documents_exactly_the_query_parameters_it_accepts(
    client: TestClient, path: str, operation: dict[str, Any]
) -> None:
    documented = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    accepted = set()
    for name in QUERY_NAMES:
        answer = await client.get(_served(path, operation), params={name: "1"}, headers=AUTH)
        if answer.status == 200 or (await answer.json())["error"]["code"] != "unknown_parameter":
            accepted.add(name)
    assert accepted == documented


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=lambda v: str(v)[:40])
def test_every_error_answer_has_the_one_error_shape_unless_its_route_names_a_model(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    (route,) = [r for r in ROUTES if (r.method, r.path) == (method, path)]
    own = {str(s): doc[1].__name__ for s, doc in route.errors.items() if isinstance(doc, tuple)}
    errors = {s: r for s, r in operation["responses"].items() if s == "default" or int(s) >= 400}
    assert "default" in errors  # the unexpected 500
    for status, answer in errors.items():
        schema = answer["content"]["application/json"]["schema"]
        model = own.get(status, "ErrorAnswer")
        assert schema == {"$ref": f"#/components/schemas/{model}"}


def test_only_readyz_answers_an_error_status_in_a_model_of_its_own() -> None:
    """Every other refusal is the one error shape, so clients need one error parser."""
    own = {(r.path, s) for r in ROUTES for s, doc in r.errors.items() if not isinstance(doc, str)}
    assert own == {("/readyz", 503)}


@pytest.mark.parametrize(("path", "operation"), READS, ids=[path for path, _ in READS])
def test_every_v1_read_needs_the_read_token_and_documents_400_and_401(
    path: str, operation: dict[str, Any]
) -> None:
    assert operation["security"] == [{"readToken": []}]
    assert {"200", "400", "401"} <= set(operation["responses"])
    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


@pytest.mark.parametrize(("method", "path", "operation"), OPERATIONS, ids=lambda v: str(v)[:40])
def test_every_get_answered_whole_documents_its_etag_and_304(
    method: str, path: str, operation: dict[str, Any]
) -> None:
    (route,) = [r for r in ROUTES if (r.method, r.path) == (method, path)]
    if not route.is_conditional:  # a POST, or a stream that is never answered whole
        assert "304" not in operation["responses"]
        assert method == "POST" or route.media_type == "text/event-stream"
        return
    assert set(operation["responses"]["200"]["headers"]) == {"ETag", "Cache-Control"}
    assert operation["responses"]["304"]["headers"]["ETag"]["required"] is True
    assert "If-None-Match" in [p["name"] for p in operation["parameters"]]


def test_the_open_routes_need_no_token() -> None:
    open_routes = {path for _, path, op in OPERATIONS if op["security"] == []}
    assert open_routes == {
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/ui",
        "/ui/ui.js",
        "/ui/ui.css",
    }


def test_the_receiver_documents_its_signature_and_every_refusal() -> None:
    receiver = DOCUMENT["paths"]["/webhooks/refold"]["post"]
    assert receiver["security"] == [{"refoldSignature": []}]
    scheme = DOCUMENT["components"]["securitySchemes"]["refoldSignature"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == (
        "apiKey",
        "header",
        "x-cobalt-signature",
    )
    assert "HMAC-SHA256" in scheme["description"]
    assert set(receiver["responses"]) == {"200", "400", "401", "413", "415", "503", "default"}
    assert receiver["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert receiver["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeliveryAccepted"
    }


def test_components_are_the_models_that_generate_schemas_folder() -> None:
    components = DOCUMENT["components"]["schemas"]
    assert set(ANSWERS) | set(EVENT_PAYLOADS) <= set(COMPONENT_MODELS)
    for model in COMPONENT_MODELS:
        alone = json.dumps(model.model_json_schema(mode="serialization")["properties"])
        as_component = alone.replace("#/$defs/", "#/components/schemas/")
        assert json.dumps(components[model.__name__]["properties"]) == as_component, model


def test_every_reference_names_a_component() -> None:
    text = json.dumps(DOCUMENT)
    names = {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}
    assert names <= set(DOCUMENT["components"]["schemas"])


def test_the_document_is_deterministic() -> None:
    assert json.dumps(openapi_document(), sort_keys=True) == json.dumps(DOCUMENT, sort_keys=True)
