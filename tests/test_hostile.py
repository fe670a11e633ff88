"""Hostile and malformed requests against one real `projector serve`, table-driven.

Each case sends exact bytes over a raw socket to 127.0.0.1 and states the answer's status,
whether the request is stored in the log (counted in SQLite, read-only, before and after) and
the flags a stored delivery carries. Throughout: no answer is a 5xx, nothing unsigned is
stored, a validly signed delivery is never lost (malformed ones are stored and flagged), and
the last test sends the whole table to a server of its own, then proves it still serves,
stores and projects.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from projector.signature import SIGNATURE_HEADER, sign_body
from tests.support import LIVE_KEY, READ_TOKEN, TEST_KEY, Service, wait_projected_http

pytestmark = pytest.mark.e2e

LIMIT = 8192  # PROJECTOR_MAX_BODY_BYTES of the service under test
WEBHOOK = "/webhooks/refold"
EXISTING = "hostile-existing"  # an account the fixture creates before the table runs
UNAUTHORISED = "unauthorised"  # the group of answers that must be byte-identical


@dataclass(frozen=True)
class Case:
    """One hostile request and what the server must do with it."""

    id: str
    request: bytes
    # The first answer's status; several where TCP segmentation decides; None: no answer.
    status: int | tuple[int, ...] | None
    stored: bool = False
    flags: tuple[str, ...] = ()
    environment: str = "live"  # of a stored delivery: the key's, whatever the payload says
    # aiohttp's own HTTP parser refuses the request before the app sees it: a text 400.
    parser_refuses: bool = False
    # Send the request, then end the write side (EOF) although the body is incomplete.
    hang_up: bool = False
    # Answers of one group must be byte-identical (they may reveal nothing).
    same_as: str | None = None
    # Fields the JSON answer must hold.
    answer: Mapping[str, Any] = field(default_factory=dict)
    allow: str | None = None  # the Allow header a 405 must name


def hostile_requests() -> list[Case]:
    """The table. Stored deliveries name their own account, so each is easy to find."""
    body = delivery("hostile-unsigned")
    valid = sign_body(body, LIVE_KEY.encode())
    spaced = json.dumps(json.loads(delivery("hostile-compact")), indent=2).encode()
    with_bom = b"\xef\xbb\xbf" + delivery("hostile-bom")
    duplicated = delivery("hostile-dup").replace(b"{", b'{"slug":"other",', 1)
    nested_duplicate = delivery("hostile-dup-nested", extra={"a": 1}).replace(
        b'{"a"', b'{"a":0,"a"'
    )
    bomb = gzip.compress(bytes(10_000_000))  # 10 MB of zeros in about 10 KB
    garbage_cursor = cursor(b'{"seq":')
    events_cursor = cursor(b"[3]")  # the shape of a /v1/events cursor: [seq]
    surrogate_cursor = cursor(b'["\\ud800","x"]')
    multipart = (
        b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n'
        + delivery("m")
        + b"\r\n--x--\r\n"
    )
    return [
        # --- signature faults: 401 and nothing stored, unless README says the header is good
        Case("sig-absent", post(body, JSON), 401),
        Case("sig-empty", post(body, JSON, (SIGNATURE_HEADER, "")), 401),
        Case("sig-odd-length-hex", post(body, JSON, (SIGNATURE_HEADER, valid[:63])), 401),
        Case("sig-65-hex-digits", post(body, JSON, (SIGNATURE_HEADER, valid + "0")), 401),
        Case("sig-non-hex", post(body, JSON, (SIGNATURE_HEADER, "g" * 64)), 401),
        Case("sig-non-ascii-bytes", post(body, JSON, (SIGNATURE_HEADER, b"\xff\xfe")), 401),
        Case("sig-64-non-ascii-bytes", post(body, JSON, (SIGNATURE_HEADER, b"\xff" * 64)), 401),
        Case("sig-unknown-key", post(body, JSON, signature(body, "pk_someone_else")), 401),
        Case("sig-of-other-bytes", post(body, JSON, signature(body + b" ")), 401),
        Case("sig-sha256-prefix", post(body, JSON, (SIGNATURE_HEADER, "sha256=" + valid)), 401),
        # README: exactly one header. Two, even two valid ones, are refused, not guessed at.
        Case("sig-two-valid-headers", post(body, JSON, signature(body), signature(body)), 401),
        Case("sig-valid-then-invalid", post(body, JSON, signature(body), signature(b"x")), 401),
        Case("sig-invalid-then-valid", post(body, JSON, signature(b"x"), signature(body)), 401),
        Case(
            "sig-comma-joined-pair", post(body, JSON, (SIGNATURE_HEADER, f"{valid},{valid}")), 401
        ),
        # README: "64 hex digits (any case)"; HTTP strips the whitespace around a header value.
        Case(
            "sig-uppercase-hex",
            post(delivery("hostile-upper"), JSON, signature(delivery("hostile-upper"), upper=True)),
            200,
            stored=True,
        ),
        Case(
            "sig-whitespace-around",
            post(delivery("hostile-ws"), JSON, signature(delivery("hostile-ws"), padded=True)),
            200,
            stored=True,
        ),
        # The key decides the environment; a payload naming the other one is kept, flagged.
        Case(
            "sig-test-key-live-payload",
            post(delivery("hostile-env"), JSON, signature(delivery("hostile-env"), TEST_KEY)),
            200,
            stored=True,
            flags=("environment_mismatch",),
            environment="test",
        ),
        # README: a signature over the compact JSON form is accepted (Refold's old samples).
        Case(
            "sig-over-compact-form",
            post(spaced, JSON, signature(delivery("hostile-compact"))),
            200,
            stored=True,
        ),
        # --- body size and framing
        Case("body-empty-unsigned", post(b"", JSON), 401),
        Case("body-empty-signed", signed_post(b""), 200, stored=True, flags=("not_json",)),
        Case("body-exactly-the-limit", signed_post(padded(LIMIT)), 200, stored=True),
        Case("body-one-byte-over-the-limit", signed_post(padded(LIMIT + 1)), 413),
        Case(
            "body-gigabyte-content-length",
            request("POST", WEBHOOK, JSON, ("Content-Length", "1000000000"), body=b"{}"),
            413,  # refused from the header alone, before a byte of the body is read
        ),
        # Content-Length: 10, then 100 KB: the server reads 10 bytes as the body (a bad
        # signature: 401) and the rest as the next request, which is not HTTP (400, and the
        # connection closes). Both arrive in one read, so aiohttp answers only the 400.
        Case(
            "body-content-length-lie",
            request(
                "POST",
                WEBHOOK,
                JSON,
                signature(bytes(100 * 1024)),
                ("Content-Length", "10"),
                body=bytes(100 * 1024),
                close=False,
            ),
            (400, 401),
            parser_refuses=True,
        ),
        Case(
            "body-shorter-than-content-length-then-eof",
            request("POST", WEBHOOK, JSON, signature(body), ("Content-Length", "500"), body=body),
            None,  # the sender left: nothing to answer, and nothing stored
            hang_up=True,
        ),
        Case("chunked-small-signed", chunked_post(delivery("hostile-chunked")), 200, stored=True),
        Case("chunked-small-unsigned", chunked_post(body, signed=False), 401),
        Case("chunked-a-megabyte", chunked_post(padded(1024 * 1024)), 413),
        Case(
            "chunked-invalid-chunk-size",
            request(
                "POST", WEBHOOK, ("Transfer-Encoding", "chunked"), body=b"zz\r\nab\r\n0\r\n\r\n"
            ),
            400,
            parser_refuses=True,
        ),
        # Request smuggling shapes: refused by the parser, never reinterpreted.
        Case(
            "content-length-and-chunked",
            request(
                "POST",
                WEBHOOK,
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked"),
                body=b"0\r\n\r\n",
            ),
            400,
            parser_refuses=True,
        ),
        Case(
            "two-content-lengths",
            request("POST", WEBHOOK, ("Content-Length", "2"), ("Content-Length", "3"), body=b"{}x"),
            400,
            parser_refuses=True,
        ),
        # --- encodings: README says any Content-Encoding but identity is a 415
        Case(
            "gzip-bomb-validly-signed",
            signed_post(bomb, ("Content-Encoding", "gzip")),
            415,
        ),
        Case(
            "deflate-validly-signed",
            signed_post(zlib.compress(body), ("Content-Encoding", "deflate")),
            415,
        ),
        # The server never inflates bodies (auto_decompress off): encodings aiohttp cannot
        # decode get the same JSON 415 as the ones it could.
        Case("br-validly-signed", signed_post(body, ("Content-Encoding", "br")), 415),
        Case("zstd-validly-signed", signed_post(body, ("Content-Encoding", "zstd")), 415),
        Case(
            "gzip-broken-validly-signed",
            signed_post(b"not gzip at all", ("Content-Encoding", "gzip")),
            415,
        ),
        Case(
            "identity-encoding-is-plain",
            signed_post(delivery("hostile-identity"), ("Content-Encoding", "identity")),
            200,
            stored=True,
        ),
        # --- malformed bodies, validly signed: kept in the log, flagged, not projected
        Case(
            "invalid-utf8", signed_post(b'{"event":"\xff"}'), 200, stored=True, flags=("not_json",)
        ),
        Case("json-array", signed_post(b"[1,2]"), 200, stored=True, flags=("not_an_object",)),
        Case("json-string", signed_post(b'"x"'), 200, stored=True, flags=("not_an_object",)),
        Case("json-number", signed_post(b"42"), 200, stored=True, flags=("not_an_object",)),
        # Nested far past Python's recursion limit (1000), as deep as the body limit allows.
        Case("nested-8000-arrays", signed_post(b"[" * 8000), 200, stored=True, flags=("not_json",)),
        Case(
            "nested-1600-objects",
            signed_post(b'{"a":' * 1600),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # Python's parser takes 300 levels, but no answer could show them (was a 500 on read).
        Case(
            "nested-300-objects",
            signed_post(b'{"a":' * 299 + b"{}" + b"}" * 299),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # int() refuses more than 4300 digits (a ValueError): not JSON to us, and no 500.
        Case(
            "integer-of-5001-digits",
            signed_post(
                delivery("hostile-bigint").replace(b"{", b'{"n":1' + b"0" * 5000 + b",", 1)
            ),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # 1e999 is valid JSON that Python reads as inf; the event itself is intact.
        Case(
            "number-1e999",
            signed_post(delivery("hostile-1e999").replace(b"{", b'{"n":1e999,', 1)),
            200,
            stored=True,
        ),
        Case("nan", signed_post(b'{"n":NaN}'), 200, stored=True, flags=("not_json",)),
        Case("infinity", signed_post(b'{"n":-Infinity}'), 200, stored=True, flags=("not_json",)),
        # Parsers disagree on which value of a repeated key counts: ambiguous, not projected.
        Case(
            "duplicate-keys", signed_post(duplicated), 200, stored=True, flags=("duplicate_keys",)
        ),
        Case(
            "duplicate-keys-nested",
            signed_post(nested_duplicate),
            200,
            stored=True,
            flags=("duplicate_keys",),
        ),
        Case(
            "nul-byte-raw",
            signed_post(b'{"event":"a\x00b"}'),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # An escaped NUL is valid JSON and Unicode, but no text column can hold it (PostgreSQL's
        # cannot): kept byte for byte, flagged, not folded.
        Case(
            "nul-escaped",
            signed_post(delivery("hostile\\u0000nul")),
            200,
            stored=True,
            flags=("not_json",),
        ),
        Case(
            "lone-surrogate-escaped",
            signed_post(b'{"event":"\\ud800"}'),
            200,
            stored=True,
            flags=("not_json",),
        ),
        Case(
            "surrogate-utf8-encoded",
            signed_post(b'{"event":"\xed\xa0\x80"}'),
            200,
            stored=True,
            flags=("not_json",),
        ),
        Case(
            "trailing-garbage",
            signed_post(delivery("hostile-trailing") + b"}garbage"),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # RFC 8259 section 8.1 lets a parser ignore a UTF-8 BOM, and Python's does.
        Case("utf8-bom", signed_post(with_bom), 200, stored=True),
        Case("not-json-unsigned", post(b"not json", JSON), 401),
        # --- methods and content types
        Case("get-on-webhook", get(WEBHOOK), 405, allow="POST"),
        Case("put-on-webhook", post(body, JSON, signature(body), method="PUT"), 405, allow="POST"),
        Case("delete-on-webhook", request("DELETE", WEBHOOK), 405, allow="POST"),
        Case(
            "post-to-unknown-path", post(body, JSON, signature(body), path="/webhooks/other"), 404
        ),
        # The signature covers the body: refusing a validly signed delivery for its label
        # would lose a Refold event, so the content type is not checked.
        Case(
            "text-plain-signed",
            post(
                delivery("hostile-text"),
                ("Content-Type", "text/plain"),
                signature(delivery("hostile-text")),
            ),
            200,
            stored=True,
        ),
        Case(
            "no-content-type-signed",
            post(delivery("hostile-no-type"), signature(delivery("hostile-no-type"))),
            200,
            stored=True,
        ),
        Case(
            "multipart-signed",
            post(
                multipart, ("Content-Type", "multipart/form-data; boundary=x"), signature(multipart)
            ),
            200,
            stored=True,
            flags=("not_json",),
        ),
        # A header byte that is not UTF-8 is kept as "\\xff" (its audit read was a 500).
        Case(
            "user-agent-not-utf8",
            signed_post(delivery("hostile-agent"), ("User-Agent", b"Refold \xff")),
            200,
            stored=True,
        ),
        Case("text-plain-unsigned", post(body, ("Content-Type", "text/plain")), 401),
        # --- the query API: SQL-looking values are values; the answers reveal nothing
        Case(
            "sql-in-account-path",
            read("/v1/accounts/'%20OR%201=1%20--/connections"),
            200,
            answer={"linked_account_id": "' OR 1=1 --", "connections": []},
        ),
        Case(
            "sql-drop-table-in-slug",
            read("/v1/connections?slug=%22%3B%20DROP%20TABLE%20deliveries%3B%20--"),
            200,
            answer={"connections": [], "next_cursor": None},
        ),
        Case(
            "sql-in-audit-account",
            read("/v1/events?linked_account_id=%27%20OR%201%3D1%20--"),
            200,
            answer={"events": [], "next_cursor": None},
        ),
        Case("sql-in-run-id", read("/v1/workflow-runs/'%20OR%201=1%20--"), 404),
        Case("sql-in-seq", read("/v1/events/1%20OR%201=1"), 400),
        Case("sql-in-status", read("/v1/connections?status=%27%20OR%201%3D1%20--"), 400),
        Case("sql-in-environment", read("/v1/connections?environment=live%27--"), 400),
        # Percent-escapes: decoded when valid (%00, %2F), kept as they are when not.
        Case(
            "pct-nul-in-path",
            read("/v1/accounts/a%00b/connections"),
            200,
            answer={"linked_account_id": "a\x00b", "connections": []},
        ),
        Case(
            "pct-slash-in-path",
            read("/v1/accounts/a%2Fb/connections"),
            200,
            answer={"linked_account_id": "a/b", "connections": []},
        ),
        Case(
            "pct-invalid-escape",
            read("/v1/accounts/a%zzb/connections"),
            200,
            answer={"linked_account_id": "a%zzb", "connections": []},
        ),
        # An overlong "/" must not become a path separator (or anything else).
        Case(
            "pct-overlong-utf8-slash",
            read("/v1/accounts/%C0%AF/connections"),
            200,
            answer={"linked_account_id": "%C0%AF", "connections": []},
        ),
        Case("pct-ff-in-query", read("/v1/connections?slug=%FF"), 200, answer={"connections": []}),
        Case(
            "raw-non-ascii-in-path",
            read(b"/v1/accounts/\xff/connections"),
            400,
            parser_refuses=True,
        ),
        Case("limit-huge", read("/v1/connections?limit=99999999999999999999"), 400),
        Case("limit-negative", read("/v1/connections?limit=-1"), 400),
        Case("limit-non-numeric", read("/v1/events?limit=ten"), 400),
        Case("limit-zero", read("/v1/events?limit=0"), 400),
        Case("cursor-random-base64", read(f"/v1/connections?cursor={CURSOR_OF_RANDOM}"), 400),
        Case("cursor-garbage-json", read(f"/v1/events?cursor={garbage_cursor}"), 400),
        Case("cursor-not-base64", read("/v1/events?cursor=!!!***"), 400),
        # A cursor of /v1/events ([seq]) does not fit /v1/connections ([account, slug]).
        Case("cursor-from-another-list", read(f"/v1/connections?cursor={events_cursor}"), 400),
        # The right types, but a lone surrogate that SQLite cannot bind (was a 500).
        Case(
            "cursor-lone-surrogate",
            read(f"/v1/connections?cursor={surrogate_cursor}"),
            400,
        ),
        Case("unknown-parameter", read("/v1/connections?stauts=expired"), 400),
        Case("repeated-parameter", read("/v1/connections?limit=1&limit=1000"), 400),
        Case(
            "path-of-100-kb",
            read("/v1/accounts/" + "a" * 100_000 + "/connections"),
            400,
            parser_refuses=True,
        ),
        Case(
            "query-of-100-kb",
            read("/v1/connections?slug=" + "a" * 100_000),
            400,
            parser_refuses=True,
        ),
        Case(
            "query-long-but-under-the-line-limit",
            read("/v1/connections?slug=" + "a" * 7000),
            200,
            answer={"connections": []},
        ),
        Case(
            "header-of-20-kb",
            read("/v1/projections", ("X-Filler", "a" * 20_000)),
            400,
            parser_refuses=True,
        ),
        Case(
            "200-headers",
            read("/v1/projections", *[(f"X-{i}", "y") for i in range(200)]),
            400,
            parser_refuses=True,
        ),
        # The auth scheme is case-insensitive (RFC 9110 section 11.1).
        Case(
            "lower-case-bearer",
            get("/v1/projections", ("Authorization", f"bearer {READ_TOKEN}")),
            200,
        ),
        # --- unauthenticated reads: one answer, whatever exists and whatever was sent
        *[
            Case(
                f"{who}-{what}",
                get(path, *credentials),
                401,
                same_as=UNAUTHORISED,
            )
            for who, credentials in (
                ("no-token", ()),
                ("wrong-token", (("Authorization", "Bearer not-the-read-token"),)),
                ("basic-scheme", (("Authorization", f"Basic {READ_TOKEN}"),)),
                ("non-ascii-token", (("Authorization", b"Bearer \xff\xfe"),)),
            )
            for what, path in (
                ("existing-account", f"/v1/accounts/{EXISTING}/connections"),
                ("unknown-account", "/v1/accounts/no-such-account/connections"),
                ("unknown-route", "/v1/no-such-route"),
            )
        ],
        Case(
            "token-without-scheme",
            get("/v1/projections", ("Authorization", READ_TOKEN)),
            401,
            same_as=UNAUTHORISED,
        ),
        Case(
            "token-in-query",
            get(f"/v1/projections?access_token={READ_TOKEN}"),
            401,
            same_as=UNAUTHORISED,
        ),
    ]


# --- requests ---------------------------------------------------------------------------

Header = tuple[str, str | bytes]
JSON: Header = ("Content-Type", "application/json")
AUTHORISED: Header = ("Authorization", f"Bearer {READ_TOKEN}")
CURSOR_OF_RANDOM = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQ"  # 24 random bytes: not JSON at all


def delivery(account: str, **changes: Any) -> bytes:
    """A valid live `Connection Created` delivery for `account`, compact JSON."""
    payload = {
        "linked_account_id": account,
        "environment": "live",
        "event": "Connection Created",
        "slug": "slack",
        "createdAt": "Wed, 01 Jul 2026 12:00:00 GMT",
        **changes,
    }
    # The account may hold a JSON escape (\u0000), written as is.
    text = json.dumps(payload, separators=(",", ":"))
    return text.replace(json.dumps(account), f'"{account}"').encode()


def padded(size: int) -> bytes:
    """A valid delivery padded with an extra field to exactly `size` bytes."""
    empty = delivery("hostile-padded", padding="")
    return delivery("hostile-padded", padding="x" * (size - len(empty)))


def signature(
    body: bytes, key: str = LIVE_KEY, *, upper: bool = False, padded: bool = False
) -> Header:
    """The x-cobalt-signature header for `body` under `key`."""
    value = sign_body(body, key.encode())
    value = value.upper() if upper else value
    return (SIGNATURE_HEADER, f" \t{value} \t" if padded else value)


def cursor(raw: bytes) -> str:
    """A forged cursor: `raw` as unpadded URL-safe base64, as the API encodes its own."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def request(
    method: str, target: str | bytes, *headers: Header, body: bytes = b"", close: bool = True
) -> bytes:
    """The exact bytes of one HTTP/1.1 request."""
    path = target if isinstance(target, bytes) else target.encode()
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    if close:
        lines.append(b"Connection: close")
    for name, value in headers:
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(body: bytes, *headers: Header, path: str = WEBHOOK, method: str = "POST") -> bytes:
    """A POST (or another `method`) of `body` with its Content-Length."""
    return request(method, path, *headers, ("Content-Length", str(len(body))), body=body)


def signed_post(body: bytes, *headers: Header) -> bytes:
    """A POST as Refold sends it: JSON content type, signed with the live key."""
    return post(body, JSON, signature(body), *headers)


def chunked_post(body: bytes, *, signed: bool = True, size: int = 16 * 1024) -> bytes:
    """A POST without a length: the body in chunks of `size` bytes."""
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    headers = (JSON, ("Transfer-Encoding", "chunked"), *([signature(body)] if signed else []))
    return request("POST", WEBHOOK, *headers, body=framed)


def get(target: str | bytes, *headers: Header) -> bytes:
    return request("GET", target, *headers)


def read(target: str | bytes, *headers: Header) -> bytes:
    """A GET with the read token."""
    return get(target, AUTHORISED, *headers)


# --- answers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as received: status, headers (lower-case names), body bytes."""

    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        """Whether the server closes the connection after this answer."""
        return self.version == "HTTP/1.0" or self.headers.get("connection", "") == "close"


def parse_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """The complete answers at the start of `data` (100 Continue skipped), and the rest."""
    answers = []
    while True:
        head, found, rest = data.partition(b"\r\n\r\n")
        if not found:
            return answers, data
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status = status_line.split(" ")[:2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return answers, data
        if not 100 <= int(status) < 200:  # an interim answer, such as 100 Continue
            answers.append(Answer(version, int(status), headers, rest[:length]))
        data = rest[length:]


def exchange(port: int, raw: bytes, *, hang_up: bool = False, within: float = 20) -> list[Answer]:
    """Send `raw` on one connection to 127.0.0.1 and read answers until the server is done."""
    deadline = time.monotonic() + within
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        try:
            connection.sendall(raw)
            if hang_up:
                connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered early and closed; its answer is still readable
            pass
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(64 * 1024)
            except ConnectionResetError:  # it closed with our unread bytes in its buffer
                break
            received += chunk
            answers, _ = parse_answers(received)
            if not chunk or (answers and answers[-1].closes):
                break
        else:
            raise AssertionError(f"the server neither answered nor closed in {within}s")
    answers, rest = parse_answers(received)
    assert not rest, f"a partial answer: {rest[:300]!r}"
    return answers


def log_state(db: Path) -> tuple[int, int, list[str] | None]:
    """(row count, log head, flags of the last row) of the log, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, head = conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM deliveries"
        ).fetchone()
        last = conn.execute("SELECT flags FROM deliveries WHERE seq = ?", (head,)).fetchone()
    finally:
        conn.close()
    return int(count), int(head), json.loads(last[0]) if last else None


# --- the tests --------------------------------------------------------------------------

CASES = hostile_requests()
# For each same_as group, a plain request whose answer every case of the group must repeat.
REFERENCES = {UNAUTHORISED: get("/v1/projections")}


def hostile_service(db: Path) -> Service:
    """A real service with the table's body limit and the account that exists."""
    running = Service(db, extra_env={"PROJECTOR_MAX_BODY_BYTES": str(LIMIT)}).start()
    try:
        answers = exchange(running.port, signed_post(delivery(EXISTING)))
        assert [a.status for a in answers] == [200]
        wait_projected_http(running.url)
    except BaseException:
        running.kill()
        raise
    return running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real service for the whole table; each case compares the log before and after."""
    running = hostile_service(tmp_path_factory.mktemp("hostile") / "projector.sqlite3")
    yield running
    running.kill()


def shown(answer: Answer) -> tuple[object, ...]:
    """What an answer reveals: status, content type, challenge and body."""
    return (
        answer.status,
        answer.headers.get("content-type"),
        answer.headers.get("www-authenticate"),
        answer.body,
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_gets_its_status_and_only_signed_deliveries_are_stored(
    server: Service, case: Case
) -> None:
    count, head, _ = log_state(server.db)
    answers = exchange(server.port, case.request, hang_up=case.hang_up)
    count_after, head_after, flags = log_state(server.db)

    if case.status is None:
        assert answers == []
    else:
        assert answers, "no answer"
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        assert answers[0].status in expected, answers[0]
    for answer in answers:
        assert answer.status < 500, answer
        assert_error_shape(answer, case)

    stored = 1 if case.stored else 0
    assert (count_after, head_after) == (count + stored, head + stored)
    if case.stored:
        assert json.loads(answers[0].body) == {
            "seq": head_after,
            "environment": case.environment,
            "duplicate": False,
            "flags": list(case.flags),
        }
        assert flags == list(case.flags)
    if case.answer:
        document = json.loads(answers[0].body)
        assert {k: document.get(k) for k in case.answer} == dict(case.answer)
    if case.allow is not None:
        assert answers[0].headers.get("allow") == case.allow
    if case.same_as is not None:
        [reference] = exchange(server.port, REFERENCES[case.same_as])
        assert reference.status == 401, reference
        assert shown(answers[0]) == shown(reference)


def assert_error_shape(answer: Answer, case: Case) -> None:
    """An error from the app is {"error": {"code", "message"}}; aiohttp's parser's is text."""
    if answer.status < 400:
        return
    if answer.headers.get("content-type", "").startswith("application/json"):
        document = json.loads(answer.body)
        assert set(document) == {"error"}
        assert set(document["error"]) == {"code", "message"}
        assert document["error"]["message"]
    else:
        assert case.parser_refuses, answer
        assert answer.status in (400, 414, 431), answer


def test_after_the_table_the_server_is_alive_healthy_and_stores_and_projects(
    tmp_path: Path,
) -> None:
    assert len(CASES) >= 45
    assert len({case.id for case in CASES}) == len(CASES)
    # A server of its own, sent the whole table here, so this holds whatever ran before.
    server = hostile_service(tmp_path / "projector.sqlite3")
    try:
        for case in CASES:
            answers = exchange(server.port, case.request, hang_up=case.hang_up)
            assert [a.status for a in answers if a.status >= 500] == [], case.id
        check_the_server_after_the_table(server)
    finally:
        server.kill()


def check_the_server_after_the_table(server: Service) -> None:
    """Alive, healthy, storing and projecting; every stored case readable back."""
    assert server.process is not None
    assert server.process.poll() is None  # still the same process: it never crashed

    [health] = exchange(server.port, get("/healthz"))
    assert (health.status, json.loads(health.body)) == (200, {"status": "ok"})

    [stored] = exchange(server.port, signed_post(delivery("hostile-after")))
    assert stored.status == 200
    count, head, flags = log_state(server.db)
    assert json.loads(stored.body)["seq"] == head == count
    # The account that exists, every case the table stores, and the one just sent.
    assert count == 1 + sum(case.stored for case in CASES) + 1
    assert flags == []
    projections: Any = wait_projected_http(server.url)["projections"]
    assert [p["errors"] for p in projections] == [0, 0]
    [banner] = exchange(server.port, read("/v1/accounts/hostile-after/connections"))
    assert [c["status"] for c in json.loads(banner.body)["connections"]] == ["connected"]

    # Every stored hostile delivery can still be read back from the audit trail.
    listed = 0
    for environment in ("live", "test"):
        [audit] = exchange(server.port, read(f"/v1/events?environment={environment}&limit=1000"))
        assert audit.status == 200
        listed += len(json.loads(audit.body)["events"])
    assert listed == count
    # And each one's detail, with its kept headers: found in its environment, not the other.
    for seq in range(1, head + 1):
        statuses = [
            exchange(server.port, read(f"/v1/events/{seq}?environment={environment}"))[0].status
            for environment in ("live", "test")
        ]
        assert sorted(statuses) == [200, 404], seq
    # No request of the table reached the catch-all that answers 500.
    assert "unexpected_error" not in server.logs()
