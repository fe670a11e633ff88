"""Refold's `x-cobalt-signature`: HMAC-SHA256 of the body, keyed on the org's API key."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from projector.config import SigningKey

SIGNATURE_HEADER = "x-cobalt-signature"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class SignatureMatch:
    """Which key verified a delivery, and over which bytes."""

    key: SigningKey
    # "raw": the body as received; "compact": its compact JSON re-serialisation, which an
    # old Refold sample signed. Recorded so an operator can see which deliveries needed it.
    signed_as: Literal["raw", "compact"]


def sign_body(body: bytes, secret: bytes) -> str:
    """The lowercase hex signature Refold sends for `body`."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def header_problem(headers: Sequence[bytes]) -> str | None:
    """Why these signature headers cannot be checked at all, or None if they are well formed."""
    if not headers or not any(h.strip() for h in headers):
        return f"the {SIGNATURE_HEADER} header is missing or empty"
    if len(headers) > 1:
        return f"{len(headers)} {SIGNATURE_HEADER} headers were sent; send exactly one"
    if _decode_header(headers[0].strip()) is None:
        return f"the {SIGNATURE_HEADER} header is not 64 hexadecimal digits"
    return None


def _decode_header(header: bytes) -> bytes | None:
    """The 32 digest bytes a header names, or None if it is not 64 hex digits."""
    if len(header) != 64 or not _HEX_DIGITS.issuperset(header):
        return None
    return bytes.fromhex(header.decode("ascii"))


def _compact_form(body: bytes) -> bytes | None:
    try:
        parsed = json.loads(body)
        compact = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # not JSON, or a lone surrogate that cannot be UTF-8
        return None
    return None if compact == body else compact


def verify_signature(
    body: bytes, headers: Sequence[bytes], keys: Sequence[SigningKey]
) -> SignatureMatch | None:
    """The key whose signature matches, or None; exactly one well-formed header is required."""
    if len(headers) != 1:
        return None
    claimed = _decode_header(headers[0].strip())
    if claimed is None:
        return None
    match = _first_match(body, claimed, keys)
    if match is not None:
        return SignatureMatch(match, "raw")
    compact = _compact_form(body)
    if compact is not None:
        match = _first_match(compact, claimed, keys)
        if match is not None:
            return SignatureMatch(match, "compact")
    return None


def _first_match(body: bytes, claimed: bytes, keys: Sequence[SigningKey]) -> SigningKey | None:
    found = None
    # Every key is tried, so the time taken does not tell which key (if any) was close.
    for key in keys:
        digest = hmac.new(key.secret, body, hashlib.sha256).digest()
        if hmac.compare_digest(digest, claimed) and found is None:
            found = key
    return found
