"""projector.signature: x-cobalt-signature verification over raw or compact bodies."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from projector.config import parse_signing_keys
from projector.signature import sign_body, verify_signature
from tests.support import LIVE_KEY, LIVE_OLD_KEY, SIGNING_KEYS, TEST_KEY

KEYS = parse_signing_keys(SIGNING_KEYS)
TEST, LIVE_NEW, LIVE_OLD = KEYS
BODY = (
    b'{"linked_account_id":"12345","org_id":"645270e37917442c4307297a","environment":"live",'
    b'"type":"General","event":"Connection Expired","slug":"pipedrive",'
    b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}'
)


def header(body: bytes, key: str) -> bytes:
    return sign_body(body, key.encode()).encode()


def test_sign_body_is_lowercase_hex_hmac_sha256_of_the_body() -> None:
    expected = hmac.new(LIVE_KEY.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign_body(BODY, LIVE_KEY.encode()) == expected
    assert expected == expected.lower()
    assert len(expected) == 64


def test_a_signature_made_with_sign_body_verifies_over_the_raw_body() -> None:
    match = verify_signature(BODY, [header(BODY, LIVE_KEY)], KEYS)
    assert match is not None
    assert match.key == LIVE_NEW
    assert match.signed_as == "raw"


def test_an_upper_case_hex_signature_verifies() -> None:
    match = verify_signature(BODY, [header(BODY, LIVE_KEY).upper()], KEYS)
    assert match is not None
    assert match.key == LIVE_NEW


def test_surrounding_whitespace_in_the_header_is_ignored() -> None:
    match = verify_signature(BODY, [b"  " + header(BODY, LIVE_KEY) + b"\t"], KEYS)
    assert match is not None


def test_the_test_key_verifies_as_the_test_environment() -> None:
    match = verify_signature(BODY, [header(BODY, TEST_KEY)], KEYS)
    assert match is not None
    assert match.key.environment == "test"
    assert match.key == TEST


def test_during_rotation_old_and_new_live_keys_both_verify_and_report_which_matched() -> None:
    new = verify_signature(BODY, [header(BODY, LIVE_KEY)], KEYS)
    old = verify_signature(BODY, [header(BODY, LIVE_OLD_KEY)], KEYS)
    assert new is not None
    assert old is not None
    assert new.key.environment == old.key.environment == "live"
    assert new.key.key_id == LIVE_NEW.key_id
    assert old.key.key_id == LIVE_OLD.key_id
    assert new.key.key_id != old.key.key_id


def test_the_order_of_configured_keys_does_not_change_which_key_matches() -> None:
    reversed_keys = tuple(reversed(KEYS))
    match = verify_signature(BODY, [header(BODY, LIVE_OLD_KEY)], reversed_keys)
    assert match is not None
    assert match.key == LIVE_OLD


def test_no_configured_keys_verifies_nothing() -> None:
    assert verify_signature(BODY, [header(BODY, LIVE_KEY)], ()) is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([header(BODY, "pk_someone_else")], id="wrong-key"),
        pytest.param([header(BODY + b" ", LIVE_KEY)], id="signature-of-other-bytes"),
        pytest.param([header(BODY, LIVE_KEY)[:-1]], id="odd-length-63"),
        pytest.param([header(BODY, LIVE_KEY) + b"0"], id="65-chars"),
        pytest.param([header(BODY, LIVE_KEY)[:62]], id="62-chars"),
        pytest.param([header(BODY, LIVE_KEY) * 2], id="128-chars"),
        pytest.param([b"g" + header(BODY, LIVE_KEY)[1:]], id="non-hex"),
        pytest.param([b"sha256=" + header(BODY, LIVE_KEY)], id="prefixed"),
        pytest.param([b""], id="empty"),
        pytest.param([b"   "], id="blank"),
        pytest.param([], id="no-header"),
        pytest.param([header(BODY, LIVE_KEY), header(BODY, LIVE_KEY)], id="two-headers"),
        pytest.param([header(BODY, LIVE_KEY), b"garbage"], id="two-headers-one-good"),
        pytest.param(["é".encode() * 32], id="non-ascii-64-bytes"),
        pytest.param([b"\xff" * 64], id="non-ascii-high-bytes"),
        pytest.param([header(BODY, LIVE_KEY)[:32] + "é".encode() * 16], id="non-ascii-tail"),
    ],
)
def test_bad_signature_headers_verify_nothing(headers: list[bytes]) -> None:
    assert verify_signature(BODY, headers, KEYS) is None


def test_a_correct_signature_over_a_non_json_body_verifies_raw() -> None:
    body = b"not json at all \xff"
    match = verify_signature(body, [header(body, LIVE_KEY)], KEYS)
    assert match is not None
    assert match.signed_as == "raw"


def test_a_wrong_signature_over_a_non_json_body_is_none() -> None:
    body = b"[[[" * 50_000
    assert verify_signature(body, [header(b"other", LIVE_KEY)], KEYS) is None


def test_a_spaced_body_signed_over_its_compact_form_verifies_as_compact() -> None:
    spaced, compact = b'{"a": 1}', b'{"a":1}'
    match = verify_signature(spaced, [header(compact, LIVE_KEY)], KEYS)
    assert match is not None
    assert match.signed_as == "compact"
    assert match.key == LIVE_NEW


def test_compact_fallback_keeps_non_ascii_characters_unescaped() -> None:
    spaced = '{"name": "Zoë"}'.encode()
    compact = '{"name":"Zoë"}'.encode()
    match = verify_signature(spaced, [header(compact, LIVE_OLD_KEY)], KEYS)
    assert match is not None
    assert match.signed_as == "compact"
    assert match.key == LIVE_OLD


def test_a_compact_body_signed_raw_is_reported_as_raw() -> None:
    compact = b'{"a":1}'
    match = verify_signature(compact, [header(compact, LIVE_KEY)], KEYS)
    assert match is not None
    assert match.signed_as == "raw"


def test_a_spaced_body_signed_as_received_is_reported_as_raw() -> None:
    spaced = b'{"a": 1}'
    match = verify_signature(spaced, [header(spaced, LIVE_KEY)], KEYS)
    assert match is not None
    assert match.signed_as == "raw"


def test_compact_fallback_with_a_wrong_key_is_none() -> None:
    assert verify_signature(b'{"a": 1}', [header(b'{"a":1}', "pk_other")], KEYS) is None


def test_a_body_with_a_lone_surrogate_escape_and_a_wrong_signature_is_none() -> None:
    """A bad body and a bad signature must be a plain 401, not an exception."""
    body = b'{"a": "\\ud800"}'
    assert verify_signature(body, [header(b"other", LIVE_KEY)], KEYS) is None
