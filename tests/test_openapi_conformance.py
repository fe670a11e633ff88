"""Schemathesis drives a real `projector serve` from the OpenAPI document: answers conform.

Every operation gets generated requests, valid and invalid, and hand-made ones for what
generation cannot reach (a known run, a matching ETag, a missing token, a valid signature,
a full receiver); every answer is checked against the document (status documented, body
matching its schema, required headers present, no 5xx), and every documented status must
have been seen here or be explained in UNREACHED.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.generation import GenerationMode

from projector.openapi import openapi_document
from projector.signature import SIGNATURE_HEADER, sign_body
from tests.storage_support import populated_log
from tests.support import AUTH, LIVE_KEY, READ_TOKEN, Service

DOCUMENT = openapi_document()
# The token as an auth setting, not a header forced onto every request: schemathesis then
# sends it with valid requests and knows when an invalid one leaves it out or spoils it.
AUTH_CONFIG = {"auth": {"openapi": {"readToken": {"bearer": READ_TOKEN}}}}
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(AUTH_CONFIG))
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}
RECEIVER = "POST /webhooks/refold"
# Never answered whole, so no generated request to it could be read to its end: the change
# stream gets hand-made requests of its own (test_the_change_stream_answers_as_documented).
STREAM = "GET /v1/changes"
# Bounded: 13 operations x 2 modes x this many requests takes seconds on a 2-core machine.
EXAMPLES_PER_MODE = 25
MAX_BODY_BYTES = 1024 * 1024  # the default: generated bodies stay under it
# Documented statuses no request of this test can provoke, and why.
UNREACHED = {
    "GET /readyz": {
        "503": "not ready needs a log that refuses writes or a stopped projector, which this "
        "healthy server never has; tests/test_health.py provokes each reason",
    },
    STREAM: {
        "503": "too_many_streams needs PROJECTOR_MAX_STREAMS streams held open; "
        "tests/test_changes.py provokes it with PROJECTOR_MAX_STREAMS=1",
    },
    RECEIVER: {
        "400": "incomplete_body answers a sender that has already hung up, so no client is "
        "left to read it; tests/test_receiver.py checks it and its log line",
    },
}
# Every /v1 read documents storage_unavailable: the database gone mid-read, which this
# healthy server never is; tests/test_postgres_e2e.py cuts PostgreSQL's connections and
# stops the server under reads, and tests/test_api.py checks the answer's shape.
for _label in OPERATIONS:
    if _label.startswith("GET /v1/") and _label != STREAM:
        UNREACHED.setdefault(_label, {})["503"] = "storage_unavailable: the database away"


@SCHEMA.hook
def filter_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    """Leave out queries holding an empty list or object: requests sends nothing for those,
    so a parameter meant to be unknown or wrong would silently not be sent at all."""
    return all(value not in ([], {}) for value in (query or {}).values())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The sample, projected, served by a real process that lets one delivery in at a time."""
    db = populated_log(tmp_path_factory.mktemp("openapi") / "projector.sqlite3")
    running = Service(db, extra_env={"PROJECTOR_MAX_PENDING": "1"}).start()
    yield running
    running.kill()


def _checked(
    case: schemathesis.Case,
    response: Any,  # requests' or schemathesis' own
    seen: Counter[str],
    *,
    provoked_503: bool = False,
) -> None:
    """Validate one answer against the document, counting its status."""
    seen[str(response.status_code)] += 1
    excluded = []
    if provoked_503:  # the one 5xx this test causes on purpose; still checked against its schema
        excluded.append(checks.not_a_server_error)
    if "cursor" in (case.query or {}):
        # A cursor is opaque: only next_cursor values are valid, which no schema can say, so
        # a generated "valid" cursor is rightly refused with 400 invalid_cursor.
        excluded.append(checks.positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)


def _fuzz(operation: Any, mode: GenerationMode, url: str, seen: Counter[str]) -> None:
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        database=None,  # one inner test serves every operation: nothing to replay by name
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def generated(case: schemathesis.Case) -> None:
        _checked(case, case.call(base_url=url, timeout=10), seen)

    generated()


def _takes_input(label: str) -> bool:
    """False when the only thing to get wrong is If-None-Match, a header any text may fill."""
    method, path = label.split(" ", 1)
    operation = DOCUMENT["paths"][path][method.lower()]
    return "requestBody" in operation or any(p["in"] != "header" for p in operation["parameters"])


def _examples(label: str) -> dict[str, Any]:
    method, path = label.split(" ", 1)
    parameters = DOCUMENT["paths"][path][method.lower()]["parameters"]
    return {p["name"]: p["example"] for p in parameters if p["in"] == "path"}


def _get(
    operation: Any, url: str, headers: dict[str, str], query: dict[str, str] | None = None
) -> tuple[schemathesis.Case, requests.Response]:
    """A hand-made GET of the documented example, sent as is (no auth setting applied)."""
    path = _examples(operation.label)
    case = operation.Case(path_parameters=path, headers=headers, query=query)
    target = url + operation.path.format(**path)
    return case, requests.get(target, params=query, headers=headers, timeout=10)


def _reach_read_statuses(operation: Any, url: str, seen: Counter[str]) -> None:
    """A known resource (200), then what the operation documents: its ETag sent back (304),
    no or a wrong token (401), an unknown parameter (400)."""
    documented = operation.definition.raw["responses"]
    case, answer = _get(operation, url, AUTH)
    assert answer.status_code == 200, (operation.label, answer.text)
    _checked(case, answer, seen)
    if "304" in documented:
        _checked(*_get(operation, url, {**AUTH, "If-None-Match": answer.headers["ETag"]}), seen)
    if "401" in documented:
        for authorization in ({}, {"Authorization": "Bearer not-a-read-token"}):
            _checked(*_get(operation, url, authorization), seen)
    if "400" in documented:
        _checked(*_get(operation, url, AUTH, {"limt": "5"}), seen)


def _post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{url}/webhooks/refold", data=body, headers=headers, timeout=10)


def _reach_receiver_statuses(operation: Any, url: str, seen: Counter[str]) -> None:
    """A signed delivery (200), bad signatures (401), too large (413), gzip (415), full (503)."""
    payload = {
        "linked_account_id": "acct_openapi",
        "org_id": "645270e37917442c4307297a",
        "environment": "live",
        "type": "General",
        "event": "Connection Created",
        "slug": "gmail",
        "createdAt": "Wed, 01 Jul 2026 09:15:00 GMT",
    }
    body = json.dumps(payload).encode()
    good = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign_body(body, LIVE_KEY.encode()),
    }
    attempts = [
        (body, good),
        (body, {"Content-Type": "application/json"}),
        (body, {**good, SIGNATURE_HEADER: "0" * 64}),
        (b" " * (MAX_BODY_BYTES + 1), good),
        (body, {**good, "Content-Encoding": "gzip"}),
    ]
    for sent, headers in attempts:
        case = operation.Case(body=payload, headers=headers, media_type="application/json")
        _checked(case, _post(url, sent, headers), seen)
    case = operation.Case(body=payload, headers=good, media_type="application/json")
    _checked(case, _refused_while_full(url, body, good), seen, provoked_503=True)


def _refused_while_full(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    """A delivery sent while another holds the one slot (PROJECTOR_MAX_PENDING=1): a 503."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        # Headers and a first byte: the receiver holds the slot waiting for the rest.
        slow.sendall(
            f"POST /webhooks/refold HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"{SIGNATURE_HEADER}: {headers[SIGNATURE_HEADER]}\r\n\r\n".encode()
            + body[:1]
        )
        deadline = time.monotonic() + 10
        while True:  # until the slow delivery has taken its slot (bounded)
            answer = _post(url, body, headers)
            if answer.status_code == 503 or time.monotonic() > deadline:
                assert answer.status_code == 503, answer.text
                return answer


@pytest.mark.e2e
@pytest.mark.parametrize("label", sorted(set(OPERATIONS) - {STREAM}))
def test_every_answer_conforms_and_every_documented_status_is_reached(
    label: str, service: Service
) -> None:
    operation, seen = OPERATIONS[label], Counter[str]()
    _fuzz(operation, GenerationMode.POSITIVE, service.url, seen)
    if _takes_input(label):
        _fuzz(operation, GenerationMode.NEGATIVE, service.url, seen)
    if label == RECEIVER:
        _reach_receiver_statuses(operation, service.url, seen)
    else:
        _reach_read_statuses(operation, service.url, seen)
    documented = set(operation.definition.raw["responses"]) - {"default"}
    unreached = documented - set(seen) - set(UNREACHED.get(label, {}))
    assert not unreached, f"{label}: documented but never answered: {sorted(unreached)} ({seen})"
    assert set(seen) <= documented, f"{label}: answered {seen}, documented {sorted(documented)}"


def test_unreached_statuses_are_documented_ones() -> None:
    """An explanation for a status the document does not list would hide a stale entry."""
    for label, statuses in UNREACHED.items():
        assert set(statuses) <= set(OPERATIONS[label].definition.raw["responses"]), label


@pytest.mark.e2e
def test_the_change_stream_answers_as_documented(service: Service) -> None:
    operation, seen = OPERATIONS[STREAM], Counter[str]()
    url = f"{service.url}/v1/changes"
    # 200: the documented media type, and its first block; then the client hangs up.
    with requests.get(url, headers=AUTH, stream=True, timeout=10) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "text/event-stream"
        assert next(answer.iter_content(chunk_size=None)).startswith(b": changes after seq ")
    seen["200"] += 1
    refusals: list[tuple[dict[str, str], dict[str, str] | None]] = [
        ({}, None),  # no token: 401
        ({"Authorization": "Bearer not-a-read-token"}, None),
        (AUTH, {"limt": "5"}),  # an unknown parameter: 400
        (AUTH, {"environment": "staging"}),
        ({**AUTH, "Last-Event-ID": "twelve"}, None),
        ({**AUTH, "Last-Event-ID": "999999999"}, None),  # past the log's head
    ]
    for headers, query in refusals:
        case = operation.Case(headers=headers, query=query)
        _checked(case, requests.get(url, params=query, headers=headers, timeout=10), seen)
    documented = set(operation.definition.raw["responses"]) - {"default"}
    unreached = documented - set(seen) - set(UNREACHED[STREAM])
    assert not unreached, f"documented but never answered: {sorted(unreached)} ({seen})"
    assert set(seen) <= documented, f"answered {seen}, documented {sorted(documented)}"
