"""Fuzzing a real `projector serve`: no request gets a 5xx, kills it, or changes the log unsigned.

One process per module, on a temporary database seeded with data/'s sample stream. Each test
compares the log before and after its own requests, so they hold in any order; the last one
fuzzes the receiver itself, then checks what that left behind. Plain functions drive the
service over http.client (or a raw socket, for bytes http.client refuses to send).
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import socket
import sqlite3
import string
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from projector.events import CONNECTION_STATUS_BY_EVENT, WORKFLOW_STATUS_BY_EVENT
from projector.sender import environment_of
from projector.signature import SIGNATURE_HEADER, sign_body
from projector.storage.queries import encode_cursor
from tests.support import (
    KEY_BY_ENVIRONMENT,
    LIVE_KEY,
    LIVE_OLD_KEY,
    READ_TOKEN,
    TEST_KEY,
    Service,
    sample_bodies,
    signed,
    wait_projected_http,
)

pytestmark = pytest.mark.e2e

# Small, so that 413 and the bodies either side of the limit are cheap to reach.
MAX_BODY_BYTES = 4096
RECEIVER = "/webhooks/refold"
UNKNOWN_KEY = "pk_nobody_knows_this_key"
TIMEOUT = 10.0
# Encodings aiohttp itself decodes: it may refuse a body it cannot decode (400) first.
DECODED_BY_AIOHTTP = frozenset({"gzip", "deflate", "br", "zstd"})

SAMPLE = sample_bodies()


def _sample_values(*names: str) -> list[str]:
    found: set[str] = set()
    for body in SAMPLE:
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        found.update(str(payload[name]) for name in names if name in payload)
    return sorted(found)


ACCOUNTS = _sample_values("linked_account_id")
INSTANCES = _sample_values("instance_id")
SLUGS = _sample_values("slug")
WORKFLOWS = _sample_values("workflow_id")


# --- talking to the service ---------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def low_level(self) -> bool:
        """aiohttp's own 400 for bytes it cannot parse: text/plain, before the app runs."""
        return self.status == 400 and (self.header("Content-Type") or "").startswith("text/plain")

    def json(self) -> Any:
        return json.loads(self.body)


def _reply(response: http.client.HTTPResponse) -> Reply:
    body = response.read()
    return Reply(response.status, tuple(response.getheaders()), body)


class CutOff(Exception):
    """The server closed the connection while the request was being sent, and no answer came."""


class Client:
    """One keep-alive connection to the service, opened again whenever the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        """The kept-alive connection if the server has not closed it meanwhile, else a new one."""
        if self._conn is not None and self._conn.sock is not None:
            readable, _, _ = select.select([self._conn.sock], [], [], 0)
            if readable:  # an idle connection has nothing to say unless it was closed
                self.close()
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        return self._conn

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        chunks: Sequence[bytes] | None = None,
    ) -> Reply:
        """Send one request; `chunks` sends the body with Transfer-Encoding: chunked."""
        conn = self._connection()
        sent = True
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value.encode("latin-1"))
            try:
                if chunks is not None:
                    conn.putheader("Transfer-Encoding", "chunked")
                    conn.endheaders(iter(chunks), encode_chunked=True)
                elif body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                else:
                    conn.endheaders()
            except (BrokenPipeError, ConnectionResetError):
                sent = False  # it answered before the body was all sent; read that answer
            response = conn.getresponse()
            reply = _reply(response)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not sent:
                raise CutOff(f"{method} {target}: {exc!r}") from exc
            raise
        except BaseException:
            self.close()
            raise
        if not sent or response.will_close or reply.status >= 400:
            self.close()  # an error may leave an unread body behind: start clean
        return reply


def raw_request(port: int, data: bytes, method: bytes) -> Reply:
    """Send exact bytes on a new connection (they end with Connection: close); read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method.decode("latin-1"))
        response.begin()
        return _reply(response)


# --- the service under test ---------------------------------------------------------------


@dataclass
class Fuzzed:
    """The running service, a client to it, and its answer to an unauthenticated read."""

    service: Service
    client: Client
    unauthorised: Reply

    @property
    def db(self) -> Path:
        return self.service.db

    def log_tail(self) -> str:
        """The end of the service's own log, for a failure message."""
        return self.service.logs()[-3000:]

    def assert_alive(self) -> None:
        assert self.service.process is not None
        code = self.service.process.poll()
        assert code is None, f"projector serve died (exit {code}):\n{self.log_tail()}"


def _seed(port: int, bodies: Sequence[bytes]) -> None:
    client = Client(port)
    try:
        for body in bodies:
            key = KEY_BY_ENVIRONMENT[environment_of(body, "test")]
            reply = client.request("POST", RECEIVER, list(signed(body, key).items()), body)
            assert reply.status == 200, reply
    finally:
        client.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    db = tmp_path_factory.mktemp("fuzz") / "projector.sqlite3"
    service = Service(db, extra_env={"PROJECTOR_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}).start()
    client = Client(service.port)
    try:
        lanes = 4
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(_seed, [service.port] * lanes, [SAMPLE[i::lanes] for i in range(lanes)]))
        wait_projected_http(service.url)
        unauthorised = client.request("GET", "/v1/projections")
        assert unauthorised.status == 401, unauthorised
        yield Fuzzed(service, client, unauthorised)
    finally:
        client.close()
        service.kill()


@dataclass(frozen=True)
class LogState:
    count: int
    head: int


def log_state(db: Path) -> LogState:
    """Row count and head of the log, read through a read-only connection of our own."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, head = conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM deliveries"
        ).fetchone()
        return LogState(int(count), int(head))
    finally:
        conn.close()


def stored(db: Path, seq: int) -> tuple[str, bytes]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        environment, body = conn.execute(
            "SELECT environment, body FROM deliveries WHERE seq = ?", (seq,)
        ).fetchone()
        return str(environment), bytes(body)
    finally:
        conn.close()


def assert_json_answer(reply: Reply) -> Any:
    """The app's answer is JSON, and an error has the one error shape."""
    try:
        document = reply.json()
    except ValueError:
        raise AssertionError(f"{reply.status} answer is not JSON: {reply.body[:300]!r}") from None
    if reply.status >= 400:
        assert set(document) == {"error"}, document
        assert isinstance(document["error"]["code"], str), document
        assert isinstance(document["error"]["message"], str), document
    return document


# --- strategies: deliveries ---------------------------------------------------------------

EVENT_NAMES = sorted(
    {
        *CONNECTION_STATUS_BY_EVENT,
        *WORKFLOW_STATUS_BY_EVENT,
        "Connection Refreshed",
        "Workflow Paused",
    }
)
# Header text http.client can send: visible Latin-1, space and tab (no CR, LF or controls).
header_text = st.text(
    st.characters(codec="latin-1", exclude_categories=["Cc"], include_characters="\t"),
    max_size=40,
)
# Headers that frame the request or that a test sets on purpose; random ones leave them be.
FRAMING_HEADERS = frozenset(
    "content-length transfer-encoding connection expect upgrade te trailer keep-alive host"
    f" content-encoding authorization {SIGNATURE_HEADER}".split()
)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,24}", fullmatch=True).filter(
    lambda name: name.lower() not in FRAMING_HEADERS
)

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.one_of(st.sampled_from(ACCOUNTS + INSTANCES), st.text(max_size=30), st.integers())
instants = st.one_of(
    st.sampled_from(
        [
            "Tue, 02 Jun 2026 14:34:30 GMT",
            "2026-06-02T14:34:30Z",
            "2026-06-02T14:34:30",
            "Mon, 01 Jan 0001 00:00:00 +1400",
            "Fri, 31 Dec 9999 23:59:59 -1200",
            "Sun, 31 Feb 2026 25:61:61 GMT",
            "not a date",
            "",
        ]
    ),
    st.datetimes().map(lambda moment: format_datetime(moment)),
    st.text(max_size=30),
)
payloads = st.builds(
    lambda extra, fields: {**extra, **fields},
    st.dictionaries(st.text(max_size=12), json_values, max_size=3),
    st.fixed_dictionaries(
        {"event": st.sampled_from(EVENT_NAMES) | json_values},
        optional={
            "linked_account_id": ids | json_values,
            "org_id": st.just("645270e37917442c4307297a") | json_values,
            "environment": st.sampled_from(["live", "test", "production", "LIVE", "staging"])
            | json_values,
            "type": st.just("General") | json_values,
            "slug": st.sampled_from(SLUGS) | st.text(max_size=20) | json_values,
            "createdAt": instants | json_values,
            "instance_id": ids | json_values,
            "workflow_id": st.sampled_from(WORKFLOWS) | json_values,
            "config_id": st.text(max_size=24) | json_values,
            "workflow_name": st.text(max_size=24) | json_values,
            "status": st.sampled_from(["COMPLETED", "ERRORED", "errored", "TIMED_OUT", "PAUSED"])
            | json_values,
        },
    ),
)

content_encodings = st.one_of(
    st.sampled_from(["identity", "IDENTITY", " identity ", "", "gzip", "deflate", "br", "zstd"]),
    st.sampled_from(["x-gzip", "compress", "identity, gzip", "chunked"]),
    st.text(string.printable.strip(), max_size=12),
)


def _serialise(value: Any, how: str) -> bytes:
    if how == "compact":
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    if how == "spaced":
        return json.dumps(value).encode()
    if how == "indented":
        return json.dumps(value, indent=2, sort_keys=True).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-16")


def _nested(depth: int) -> bytes:
    return (
        b'{"event":"Workflow Completed","linked_account_id":"acct_deep","instance_id":"deep",'
        + (b'"x":' + b"[" * depth + b"]" * depth + b"}")
    )


TRICKY_BODIES = [
    b"",
    b"{}",
    b"[]",
    b"null",
    b'"text"',
    b'{"event":"Connection Created","slug":"\\ud800","linked_account_id":"a",'
    b'"createdAt":"Tue, 02 Jun 2026 14:34:30 GMT"}',
    b'{"event":NaN}',
    b'{"event":"Workflow Errored","linked_account_id":"a","instance_id":"i","attempts":1e400}',
    b'{"event":"Workflow Errored","linked_account_id":"a","instance_id":"i","n":'
    + b"9" * 4000
    + b"}",
    b"\xef\xbb\xbf" + SAMPLE[0],
    SAMPLE[0] + b"\x00",
    b'{"a":1,"a":2}',
    _nested(100),
    _nested(300),
    _nested(2000),
    b"[" * 4000,
]

bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(_serialise, payloads, st.sampled_from(["compact", "spaced", "indented", "utf-16"])),
    st.builds(_serialise, json_values, st.sampled_from(["compact", "spaced"])),
    st.sampled_from(SAMPLE),
    st.sampled_from(TRICKY_BODIES),
)
# Mostly as generated; sometimes padded with spaces (JSON stays JSON) to around the limit.
padded_lengths = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.integers(MAX_BODY_BYTES - 2, MAX_BODY_BYTES + 2),
    st.integers(MAX_BODY_BYTES + 3, 2 * MAX_BODY_BYTES),
)

SIGNATURE_MODES = (
    "test key",
    "live key",
    "old live key",
    "live key, upper case",
    "live key over the compact form",
    "unknown key",
    "random hex",
    "random text",
    "absent",
    "empty",
    "two valid headers",
    "valid and invalid headers",
)
COMPACT = "live key over the compact form"
VALID_MODES = {"test key": "test", "live key": "live", "old live key": "live"}
VALID_MODES |= {"live key, upper case": "live", COMPACT: "live"}


def compact_form(body: bytes) -> bytes | None:
    """The compact JSON re-serialisation the receiver also accepts a signature over."""
    try:
        return json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class DeliveryRequest:
    """One POST to the receiver, as generated."""

    body: bytes
    signature: str
    signature_values: tuple[str, ...]
    signature_name: str = SIGNATURE_HEADER
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    user_agent: str | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()
    chunk_sizes: tuple[int, ...] | None = None

    @property
    def environment(self) -> str | None:
        """The environment of the key that validly signed it, or None if nothing did."""
        if self.signature == "live key over the compact form" and compact_form(self.body) is None:
            return None
        return VALID_MODES.get(self.signature)

    def headers(self) -> list[tuple[str, str]]:
        headers = [(self.signature_name, value) for value in self.signature_values]
        for name, value in (
            ("Content-Type", self.content_type),
            ("Content-Encoding", self.content_encoding),
            ("User-Agent", self.user_agent),
        ):
            if value is not None:
                headers.append((name, value))
        return headers + list(self.extra_headers)

    def chunks(self) -> list[bytes] | None:
        if self.chunk_sizes is None:
            return None
        chunks, rest = [], self.body
        for size in self.chunk_sizes:
            chunks.append(rest[:size])
            rest = rest[size:]
        return [*chunks, rest]

    def expected_statuses(self) -> set[int]:
        encoding = (self.content_encoding or "").strip().lower()
        if encoding not in ("", "identity"):
            return {415, 400} if encoding in DECODED_BY_AIOHTTP else {415}
        if len(self.body) > MAX_BODY_BYTES:
            return {413}
        return {200} if self.environment else {401}


def signature_values(mode: str, body: bytes, noise: str, hex_noise: str) -> tuple[str, ...]:
    live = sign_body(body, LIVE_KEY.encode())
    compact = compact_form(body)
    return {
        "test key": (sign_body(body, TEST_KEY.encode()),),
        "live key": (live,),
        "old live key": (sign_body(body, LIVE_OLD_KEY.encode()),),
        "live key, upper case": (live.upper(),),
        "live key over the compact form": (
            sign_body(compact if compact is not None else body + b" ", LIVE_KEY.encode()),
        ),
        "unknown key": (sign_body(body, UNKNOWN_KEY.encode()),),
        "random hex": (hex_noise,),
        "random text": (noise,),
        "absent": (),
        "empty": ("",),
        "two valid headers": (live, live),
        "valid and invalid headers": (live, hex_noise),
    }[mode]


def delivery(body: bytes, signature: str = "live key", **fields: Any) -> DeliveryRequest:
    """A delivery request whose signature header(s) follow the `signature` mode."""
    values = signature_values(
        signature, body, fields.pop("noise", "x"), fields.pop("hex_noise", "0" * 64)
    )
    return DeliveryRequest(body, signature, values, **fields)


@st.composite
def delivery_requests(draw: st.DrawFn) -> DeliveryRequest:
    body = draw(bodies)
    length = draw(padded_lengths)
    if length is not None and length > len(body):
        body += b" " * (length - len(body))
    chunked = draw(st.booleans())
    return delivery(
        body,
        draw(st.sampled_from(SIGNATURE_MODES)),
        noise=draw(header_text),
        hex_noise=draw(st.text("0123456789abcdefABCDEF", min_size=60, max_size=66)),
        signature_name=draw(
            st.sampled_from([SIGNATURE_HEADER, "X-Cobalt-Signature", "X-COBALT-SIGNATURE"])
        ),
        content_type=draw(
            st.sampled_from(
                [
                    None,
                    "application/json",
                    "application/json; charset=utf-8",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=zz",
                    "",
                ]
            )
            | header_text
        ),
        content_encoding=draw(content_encodings) if draw(st.integers(0, 3)) == 0 else None,
        user_agent=draw(st.sampled_from([None, "Refold-Webhooks/1.0"]) | header_text),
        extra_headers=tuple(draw(st.lists(st.tuples(header_names, header_text), max_size=3))),
        chunk_sizes=tuple(draw(st.lists(st.integers(1, 700), max_size=6))) if chunked else None,
    )


# --- strategies: queries ------------------------------------------------------------------

# Every GET route of projector/api.py add_query_routes, with {} for a path segment, and more.
QUERY_ROUTES = (
    "/healthz",
    "/v1/accounts/{}/connections",
    "/v1/accounts/{}/workflow-runs",
    "/v1/connections",
    "/v1/workflow-runs/{}",
    "/v1/events",
    "/v1/events/{}",
    "/v1/projections",
)
OTHER_PATHS = (
    "/v1",
    "/v1/",
    "/v1/{}",
    "/v1/{}/{}",
    "/v1/accounts/{}/{}",
    "/{}",
    RECEIVER,
    RECEIVER + "/{}",
)
# Every query parameter some endpoint of projector/api.py takes.
PARAMETERS = ["environment", "limit", "cursor", "status", "slug", "workflow_id"]
PARAMETERS += ["linked_account_id", "event", "after"]


def _cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


segments = st.one_of(
    st.text(max_size=30).map(lambda text: quote(text, safe="")),
    st.sampled_from(ACCOUNTS + INSTANCES + ["1", "536", "0", "-1", "01", "1e3", "9" * 30]),
    st.sampled_from([".", "..", "%2e%2e", "%2F", "%00", "%ff", "%", "%zz", ";", "~", "%20"]),
    st.integers().map(str),
)
parameter_values = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.sampled_from(["0", "1", "1000", "1001", "-1", " 5", "5 ", "\u0663", "\u00b2", "9" * 40]),
    st.sampled_from(["live", "test", "production", "LIVE", "connected", "expired", "errored"]),
    st.sampled_from(ACCOUNTS + SLUGS + WORKFLOWS + EVENT_NAMES),
    st.binary(max_size=40).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    # Cursors as the lists issue them, with real and with out-of-range sort keys.
    st.builds(encode_cursor, st.sampled_from(ACCOUNTS), st.sampled_from(SLUGS)),
    st.sampled_from(INSTANCES).map(encode_cursor),
    st.integers(-5, 2**64).map(encode_cursor),
    st.lists(
        st.one_of(
            st.integers(min_value=-(2**70), max_value=2**70),
            st.text(max_size=10),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
            st.none(),
        ),
        max_size=3,
    ).map(_cursor),
)
query_strings = st.one_of(
    st.just(""),
    st.lists(
        st.tuples(st.sampled_from(PARAMETERS) | st.text(max_size=8), parameter_values), max_size=5
    ).map(lambda pairs: urlencode(pairs, quote_via=quote)),
    st.text(string.ascii_letters + string.digits + "=&%+;-_.~!$'()*,/:@?", max_size=40),
)
path_templates = st.sampled_from(QUERY_ROUTES + QUERY_ROUTES + OTHER_PATHS)
# Authorization headers the bearer check must accept, and ones it must refuse.
GOOD_AUTHORISATIONS = [f"Bearer {READ_TOKEN}", f"bearer {READ_TOKEN}", f"BEARER   {READ_TOKEN}  "]
BAD_AUTHORISATIONS = ["", "Bearer", "Bearer ", f"Bearer {READ_TOKEN}x", f"Bearer {READ_TOKEN[:-1]}"]
BAD_AUTHORISATIONS += [f"Basic {READ_TOKEN}", READ_TOKEN, f"Bearer\t{READ_TOKEN}"]
authorisations = st.one_of(
    st.sampled_from(GOOD_AUTHORISATIONS).map(lambda header: (header, True)),
    st.sampled_from([None, *BAD_AUTHORISATIONS]).map(lambda header: (header, False)),
    header_text.map(lambda header: (header, False)),
)


@dataclass(frozen=True)
class QueryRequest:
    """One request to the query API, as generated."""

    target: str
    method: str = "GET"
    authorization: str | None = None
    authorised: bool = False
    if_none_match: str | None = None

    def headers(self) -> list[tuple[str, str]]:
        headers = []
        if self.authorization is not None:
            headers.append(("Authorization", self.authorization))
        if self.if_none_match is not None:
            headers.append(("If-None-Match", self.if_none_match))
        return headers


@st.composite
def query_requests(draw: st.DrawFn) -> QueryRequest:
    template = draw(path_templates)
    path = template.format(*(draw(segments) for _ in range(template.count("{}"))))
    query = draw(query_strings)
    authorization, authorised = draw(authorisations)
    return QueryRequest(
        target=f"{path}?{query}" if query else path,
        method=draw(st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])),
        authorization=authorization,
        authorised=authorised,
        if_none_match=draw(
            st.sampled_from([None, None, "*", '"x"', 'W/"abc"', '"y", *', ""]) | header_text
        ),
    )


def protected(target: str) -> bool:
    """Whether the path is a /v1 read: the server decodes, but never rewrites, this prefix."""
    return target.startswith("/v1/") or target.split("?")[0] == "/v1"


def assert_the_one_unauthorised_answer(fuzzed: Fuzzed, reply: Reply, method: str) -> None:
    assert reply.status == 401, reply
    assert reply.header("WWW-Authenticate") == fuzzed.unauthorised.header("WWW-Authenticate")
    if method != "HEAD":
        assert reply.body == fuzzed.unauthorised.body, reply


# --- the query API ------------------------------------------------------------------------


@given(request=query_requests())
def test_query_requests_never_get_a_5xx_and_unauthenticated_reads_all_get_the_same_401(
    fuzzed: Fuzzed, request: QueryRequest
) -> None:
    before = log_state(fuzzed.db)
    reply = fuzzed.client.request(request.method, request.target, request.headers())
    event(
        f"{request.method} {'authorised' if request.authorised else 'unauthorised'}: {reply.status}"
    )

    fuzzed.assert_alive()
    assert reply.status < 500, (request, reply, fuzzed.log_tail())
    assert log_state(fuzzed.db) == before
    if reply.low_level:
        return
    if protected(request.target) and not request.authorised:
        assert_the_one_unauthorised_answer(fuzzed, reply, request.method)
        return
    allowed = {200, 304, 400, 404, 405}
    if request.method == "POST" and request.target.startswith(RECEIVER):
        allowed.add(401)  # the receiver's own answer to an unsigned delivery
    assert reply.status in allowed, (request, reply)
    if reply.status in (200, 304) and request.method == "GET":
        assert reply.header("ETag"), reply
    if reply.status != 304 and request.method != "HEAD":
        assert_json_answer(reply)


raw_segments = st.one_of(
    st.binary(max_size=24),
    st.text(string.printable, max_size=24).map(str.encode),
    st.text(max_size=12).map(lambda text: text.encode("utf-8", "surrogatepass")),
).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
raw_header_lines = st.lists(
    st.tuples(
        st.one_of(
            st.binary(min_size=1, max_size=16),
            st.from_regex(rb"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
        ).filter(lambda name: name.strip().lower().decode("latin-1") not in FRAMING_HEADERS),
        st.binary(max_size=32) | st.text(string.printable, max_size=32).map(str.encode),
    ).map(lambda line: (line[0] + b": " + line[1]).replace(b"\r", b"").replace(b"\n", b"")),
    max_size=3,
)


@given(
    template=path_templates,
    parts=st.lists(raw_segments, min_size=2, max_size=2),
    method=st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"DELETE", b"G\x00T"]),
    authorised=st.booleans(),
    header_lines=raw_header_lines,
)
def test_raw_request_bytes_never_get_a_5xx_nor_change_the_log(
    fuzzed: Fuzzed,
    template: str,
    parts: list[bytes],
    method: bytes,
    authorised: bool,
    header_lines: list[bytes],
) -> None:
    target = template.encode().replace(b"{}", parts[0], 1).replace(b"{}", parts[1])
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *header_lines]
    if authorised:
        lines.append(f"Authorization: Bearer {READ_TOKEN}".encode())
    if method == b"POST":
        lines.append(b"Content-Length: 0")
    data = b"\r\n".join([*lines, b"Connection: close", b"", b""])
    before = log_state(fuzzed.db)

    reply = raw_request(fuzzed.service.port, data, method)
    event(f"{'low-level ' if reply.low_level else ''}{reply.status}")

    fuzzed.assert_alive()
    assert reply.status < 500, (data, reply, fuzzed.log_tail())
    assert log_state(fuzzed.db) == before
    if reply.low_level:
        return
    if protected(template) and not authorised:
        assert_the_one_unauthorised_answer(fuzzed, reply, method.decode("latin-1"))
    if reply.status != 304 and method != b"HEAD":
        assert_json_answer(reply)


# --- the receiver -------------------------------------------------------------------------


def assert_readable_back(fuzzed: Fuzzed, seq: int, environment: str, body: bytes) -> None:
    """The stored delivery reads back through the audit API, byte for byte."""
    auth = [("Authorization", f"Bearer {READ_TOKEN}")]
    detail = fuzzed.client.request("GET", f"/v1/events/{seq}?environment={environment}", auth)
    assert detail.status == 200, (seq, detail, fuzzed.log_tail())
    assert base64.b64decode(assert_json_answer(detail)["body_base64"]) == body
    listing = fuzzed.client.request(
        "GET", f"/v1/events?environment={environment}&after={seq - 1}&limit=1", auth
    )
    assert listing.status == 200, (seq, listing, fuzzed.log_tail())
    assert [e["seq"] for e in assert_json_answer(listing)["events"]] == [seq]


# Real bugs this test found (it fails until they are fixed), as minimal reproductions:
# 1. A User-Agent (or Content-Type) that is not UTF-8 (byte 0xff here) is kept with the
#    delivery as a lone surrogate; GET /v1/events/{seq} then answers 500 for ever.
@example(request=delivery(b"{}", user_agent="\xff"))
# 2. A body nested 256 or more levels deep is stored, then /v1/events/{seq} and every
#    /v1/events page that holds it answer 500 (pydantic's serialisation depth limit).
@example(request=delivery(b'{"x":' + b"[" * 256 + b"]" * 256 + b"}"))
@given(request=delivery_requests())
def test_receiver_never_answers_5xx_and_logs_exactly_the_validly_signed_deliveries(
    fuzzed: Fuzzed, request: DeliveryRequest
) -> None:
    deliver_and_check(fuzzed, request)


def deliver_and_check(fuzzed: Fuzzed, request: DeliveryRequest) -> bool:
    """Send one delivery and check the answer and the log against it; True if it was stored."""
    before = log_state(fuzzed.db)

    try:
        reply = fuzzed.client.request(
            "POST", RECEIVER, request.headers(), request.body, request.chunks()
        )
    except CutOff:
        # Refusing a body unread (encoding, size) may close the connection mid-send.
        event(f"{request.signature}: cut off while sending")
        assert request.expected_statuses() <= {400, 413, 415}, request
        fuzzed.assert_alive()
        assert log_state(fuzzed.db) == before
        return False

    event(f"{request.signature}: {reply.status}")
    fuzzed.assert_alive()
    assert reply.status < 500, (request, reply, fuzzed.log_tail())
    assert reply.status in request.expected_statuses(), (request, reply)
    after = log_state(fuzzed.db)
    if reply.status != 200:
        assert after == before
        if not reply.low_level:
            assert_json_answer(reply)
        return False
    answer = assert_json_answer(reply)
    assert after == LogState(before.count + 1, before.head + 1)
    assert answer["seq"] == after.head
    assert answer["environment"] == request.environment
    assert stored(fuzzed.db, after.head) == (request.environment, request.body)
    assert_readable_back(fuzzed, after.head, str(request.environment), request.body)
    return True


# --- what the fuzzing leaves behind -------------------------------------------------------


def test_after_fuzzing_the_receiver_the_service_is_alive_and_healthy_and_its_log_has_no_gaps(
    fuzzed: Fuzzed,
) -> None:
    before = log_state(fuzzed.db)
    stored: list[bool] = []

    # Its own fuzzing, so it checks what it saw happen, whatever ran before it. The examples
    # make sure some deliveries are stored: a flagged one, a sample one, a compact-signed one.
    @example(request=delivery(b"{}"))
    @example(request=delivery(SAMPLE[-1], "test key"))
    @example(request=delivery(json.dumps(json.loads(SAMPLE[0]), indent=1).encode(), COMPACT))
    @given(request=delivery_requests())
    def fuzz_the_receiver(request: DeliveryRequest) -> None:
        stored.append(deliver_and_check(fuzzed, request))

    fuzz_the_receiver()
    assert sum(stored) >= 3, f"{sum(stored)} of {len(stored)} fuzzed deliveries were stored"
    fuzzed.assert_alive()
    health = fuzzed.client.request("GET", "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})

    conn = sqlite3.connect(f"file:{fuzzed.db}?mode=ro", uri=True)
    try:
        count, first, last = conn.execute(
            "SELECT count(*), min(seq), max(seq) FROM deliveries"
        ).fetchone()
    finally:
        conn.close()
    assert (first, last) == (1, count)
    assert count == before.count + sum(stored)

    state = wait_projected_http(fuzzed.service.url)
    assert state["log_head"] == count
    projections = cast(list[dict[str, Any]], state["projections"])
    assert [p["errors"] for p in projections] == [0] * len(projections)
