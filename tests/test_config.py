"""projector.config: signing keys, read tokens and settings, read once and validated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from projector.config import (
    ConfigError,
    Settings,
    SigningKey,
    fingerprint,
    load_settings,
    parse_read_tokens,
    parse_signing_keys,
)

SECRET = "pk_very_secret_value_42"
TOKEN = "read-token-very-secret-42"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop PROJECTOR_* variables (`make` exports some) so each test sets its own."""
    for name in list(os.environ):
        if name.startswith("PROJECTOR_"):
            monkeypatch.delenv(name)


# --- parse_signing_keys -------------------------------------------------------------------


def test_several_keys_per_environment_are_kept_in_order() -> None:
    keys = parse_signing_keys("test:tk_a,live:pk_new,live:pk_old")
    assert [(k.environment, k.secret) for k in keys] == [
        ("test", b"tk_a"),
        ("live", b"pk_new"),
        ("live", b"pk_old"),
    ]


def test_production_is_an_alias_of_live() -> None:
    (key,) = parse_signing_keys("production:pk_a")
    assert key.environment == "live"


def test_environment_names_are_case_insensitive() -> None:
    keys = parse_signing_keys("TEST:tk_a,Live:pk_b")
    assert [k.environment for k in keys] == ["test", "live"]


def test_whitespace_around_pairs_names_and_keys_is_ignored() -> None:
    keys = parse_signing_keys("  test : tk_a ,\n live:pk_b  , ")
    assert [(k.environment, k.secret) for k in keys] == [("test", b"tk_a"), ("live", b"pk_b")]


def test_key_id_is_the_fingerprint_of_environment_and_secret() -> None:
    (key,) = parse_signing_keys(f"live:{SECRET}")
    assert key.key_id == fingerprint("live", SECRET)
    assert key.key_id.startswith("live:")
    assert SECRET not in key.key_id


def test_different_keys_of_one_environment_have_different_key_ids() -> None:
    new, old = parse_signing_keys("live:pk_new,live:pk_old")
    assert new.key_id != old.key_id


def test_a_key_may_contain_a_colon() -> None:
    (key,) = parse_signing_keys("live:pk:with:colons")
    assert key.secret == b"pk:with:colons"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("test:", id="empty-key"),
        pytest.param("test:   ", id="blank-key"),
        pytest.param("tk_no_environment", id="missing-colon"),
        pytest.param("staging:pk_a", id="unknown-environment"),
        pytest.param("", id="empty-string"),
        pytest.param(" , ,", id="only-separators"),
        pytest.param("test:tk_a,live:", id="second-entry-empty-key"),
    ],
)
def test_malformed_signing_keys_raise_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS") as raised:
        parse_signing_keys(raw)
    message = str(raised.value)
    # Every message says what to write instead: an example pair or the allowed names.
    assert "e.g. 'test:tk_abc,live:pk_xyz'" in message or "use one of test, live" in message


def test_missing_colon_error_says_where_the_colon_goes() -> None:
    with pytest.raises(ConfigError, match="no ':'") as raised:
        parse_signing_keys("test:tk_a,pk_b")
    assert "entry 2" in str(raised.value)


def test_unknown_environment_error_names_it_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'staging'.*test, live.*production"):
        parse_signing_keys("staging:pk_a")


def test_signing_key_errors_never_echo_the_secret() -> None:
    for raw in (f"staging:{SECRET}", f"{SECRET}", f"live:{SECRET},test:"):
        with pytest.raises(ConfigError) as raised:
            parse_signing_keys(raw)
        assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "raw",
    [
        f"test:{SECRET},live:{SECRET}",
        f"live:pk_other,production:{SECRET}, test : {SECRET} ",
        f"TEST:{SECRET},live:pk_other,Live:{SECRET}",
    ],
)
def test_one_key_listed_for_two_environments_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS: entries") as raised:
        parse_signing_keys(raw)
    message = str(raised.value)
    assert "same key" in message
    assert "one environment only" in message
    assert SECRET not in message


def test_same_key_two_environments_error_names_both_entries_by_position() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_signing_keys(f"live:pk_a,,test:{SECRET},live:{SECRET}")
    assert "entries 3 (test) and 4 (live)" in str(raised.value)


def test_one_key_listed_twice_for_the_same_environment_is_accepted() -> None:
    keys = parse_signing_keys(f"live:{SECRET},production:{SECRET}")
    assert [(k.environment, k.secret) for k in keys] == [("live", SECRET.encode())] * 2


# --- parse_read_tokens --------------------------------------------------------------------


def test_read_tokens_are_split_on_commas_and_stripped() -> None:
    assert parse_read_tokens(" token-one-1 , token-two-2 ,") == (b"token-one-1", b"token-two-2")


@pytest.mark.parametrize("raw", ["", "  ", ", ,"])
def test_empty_read_tokens_raise_a_config_error_saying_how_to_set_them(raw: str) -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_READ_TOKENS is empty or unset; set it"):
        parse_read_tokens(raw)


def test_a_read_token_shorter_than_eight_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"PROJECTOR_READ_TOKENS.*at least 8 characters"):
        parse_read_tokens("long-enough-token,short")


def test_a_read_token_of_exactly_eight_characters_is_accepted() -> None:
    assert parse_read_tokens("12345678") == (b"12345678",)


# --- load_settings ------------------------------------------------------------------------


def test_defaults_are_localhost_port_8080_and_one_mebibyte_bodies() -> None:
    settings = load_settings(require_secrets=False)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.signing_keys == ()
    assert settings.read_tokens == ()


def test_secrets_are_required_by_default() -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS"):
        load_settings()


def test_read_tokens_are_required_once_signing_keys_are_set() -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_READ_TOKENS"):
        load_settings(signing_keys="live:pk_a")


def test_signing_keys_alone_suffice_when_read_tokens_are_not_required() -> None:
    settings = load_settings(signing_keys="live:pk_a", require_read_tokens=False)
    assert [k.secret for k in settings.signing_keys] == [b"pk_a"]
    assert settings.read_tokens == ()
    with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS"):
        load_settings(require_read_tokens=False)


def test_overrides_are_parsed_like_environment_variables(tmp_path: Path) -> None:
    settings = load_settings(
        db=tmp_path / "x.sqlite3",
        signing_keys="test:tk_a,production:pk_b",
        read_tokens="token-one-1",
        port=9001,
        host="192.0.2.10",
    )
    assert settings.db == tmp_path / "x.sqlite3"
    assert [k.environment for k in settings.signing_keys] == ["test", "live"]
    assert settings.read_tokens == (b"token-one-1",)
    assert (settings.host, settings.port) == ("192.0.2.10", 9001)


def test_settings_are_read_from_projector_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROJECTOR_SIGNING_KEYS", "live:pk_new,live:pk_old")
    monkeypatch.setenv("PROJECTOR_READ_TOKENS", "token-one-1,token-two-2")
    monkeypatch.setenv("PROJECTOR_PORT", "9090")
    monkeypatch.setenv("PROJECTOR_HOST", "::1")
    monkeypatch.setenv("PROJECTOR_DB", str(tmp_path / "env.sqlite3"))
    monkeypatch.setenv("PROJECTOR_MAX_BODY_BYTES", "4096")
    settings = load_settings()
    assert [k.secret for k in settings.signing_keys] == [b"pk_new", b"pk_old"]
    assert settings.read_tokens == (b"token-one-1", b"token-two-2")
    assert (settings.host, settings.port) == ("::1", 9090)
    assert settings.db == tmp_path / "env.sqlite3"
    assert settings.max_body_bytes == 4096


def test_overrides_win_over_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTOR_PORT", "9090")
    assert load_settings(require_secrets=False, port=7000).port == 7000


def test_a_non_numeric_port_variable_is_a_config_error_naming_projector_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_PORT", "abc")
    with pytest.raises(ConfigError, match="PROJECTOR_PORT"):
        load_settings(require_secrets=False)


def test_a_port_out_of_range_is_a_config_error_naming_projector_port() -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_PORT"):
        load_settings(require_secrets=False, port=70000)


def test_a_malformed_signing_keys_variable_raises_the_parser_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_SIGNING_KEYS", "staging:pk_a")
    with pytest.raises(ConfigError, match="PROJECTOR_SIGNING_KEYS: entry 1 names environment"):
        load_settings(require_secrets=False)


def test_an_unknown_log_format_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="PROJECTOR_LOG_FORMAT"):
        load_settings(require_secrets=False)


def test_change_stream_settings_default_to_100_streams_15_s_heartbeats_30_s_writes() -> None:
    settings = load_settings(require_secrets=False)
    assert settings.max_streams == 100
    assert settings.stream_heartbeat_seconds == 15.0
    assert settings.stream_write_timeout_seconds == 30.0


def test_change_stream_settings_are_read_from_their_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_MAX_STREAMS", "3")
    monkeypatch.setenv("PROJECTOR_STREAM_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("PROJECTOR_STREAM_WRITE_TIMEOUT_SECONDS", "2")
    settings = load_settings(require_secrets=False)
    assert settings.max_streams == 3
    assert settings.stream_heartbeat_seconds == 0.5
    assert settings.stream_write_timeout_seconds == 2.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROJECTOR_MAX_STREAMS", "0"),
        ("PROJECTOR_MAX_STREAMS", "many"),
        ("PROJECTOR_STREAM_HEARTBEAT_SECONDS", "0"),
        ("PROJECTOR_STREAM_HEARTBEAT_SECONDS", "301"),
        ("PROJECTOR_STREAM_WRITE_TIMEOUT_SECONDS", "-1"),
    ],
)
def test_a_change_stream_setting_out_of_range_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(require_secrets=False)


# --- secrets stay out of repr and str -----------------------------------------------------


def test_settings_repr_and_str_never_contain_a_secret() -> None:
    settings = load_settings(signing_keys=f"live:{SECRET}", read_tokens=TOKEN)
    assert isinstance(settings, Settings)
    for text in (repr(settings), str(settings)):
        assert SECRET not in text
        assert TOKEN not in text


def test_signing_key_repr_and_str_never_contain_the_secret() -> None:
    (key,) = parse_signing_keys(f"live:{SECRET}")
    assert isinstance(key, SigningKey)
    for text in (repr(key), str(key)):
        assert SECRET not in text
        assert key.key_id in text


# --- readiness and access log ---------------------------------------------------------------


def test_ready_max_lag_defaults_to_30_seconds_and_the_access_log_to_off() -> None:
    settings = load_settings(require_secrets=False)
    assert settings.ready_max_lag_seconds == 30.0
    assert settings.access_log is False


def test_ready_max_lag_and_access_log_are_read_from_their_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_READY_MAX_LAG_SECONDS", "2.5")
    monkeypatch.setenv("PROJECTOR_ACCESS_LOG", "true")
    settings = load_settings(require_secrets=False)
    assert settings.ready_max_lag_seconds == 2.5
    assert settings.access_log is True


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "nan", "inf", "86401", ""])
def test_a_ready_max_lag_that_is_not_a_positive_number_of_seconds_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PROJECTOR_READY_MAX_LAG_SECONDS", raw)
    with pytest.raises(ConfigError, match=r"PROJECTOR_READY_MAX_LAG_SECONDS .* above 0"):
        load_settings(require_secrets=False)


def test_an_access_log_that_is_not_true_or_false_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_ACCESS_LOG", "maybe")
    with pytest.raises(ConfigError, match="PROJECTOR_ACCESS_LOG is 'maybe'; set it to true or"):
        load_settings(require_secrets=False)


# --- PROJECTOR_ALERT_URL ------------------------------------------------------------------


def test_alert_url_keeps_its_path_and_query_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://hooks.slack.com/services/T00/B00/xyz?channel=ops"
    monkeypatch.setenv("PROJECTOR_ALERT_URL", f"  {url}  ")
    assert load_settings(require_secrets=False).alert_url == url
    monkeypatch.setenv("PROJECTOR_ALERT_URL", "")
    assert load_settings(require_secrets=False).alert_url is None


@pytest.mark.parametrize(
    "value",
    ["ftp://hooks.example.com/secret-part", "hooks.example.com/secret-part",
     "https://hooks.example.com/secret-part#frag", "https:///secret-part"],
)  # fmt: skip
def test_alert_url_other_than_http_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PROJECTOR_ALERT_URL", value)
    with pytest.raises(ConfigError, match="PROJECTOR_ALERT_URL is not an http") as caught:
        load_settings(require_secrets=False)
    assert "secret-part" not in str(caught.value)


def test_alert_url_is_not_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTOR_ALERT_URL", "https://hooks.example.com/secret-part")
    assert "secret-part" not in repr(load_settings(require_secrets=False))


# --- PROJECTOR_WORKERS ----------------------------------------------------------------------


def test_one_worker_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROJECTOR_WORKERS", raising=False)
    assert load_settings(require_secrets=False).workers == 1


def test_workers_are_read_from_projector_workers_and_the_option_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_WORKERS", " 4 ")
    assert load_settings(require_secrets=False).workers == 4
    assert load_settings(require_secrets=False, workers="2").workers == 2


@pytest.mark.parametrize("raw", ["0", "-1", "65", "two", "1.5", "", "²", "1e3"])
def test_a_bad_worker_count_is_refused_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PROJECTOR_WORKERS", raw)
    with pytest.raises(ConfigError) as refused:
        load_settings(require_secrets=False)
    assert "PROJECTOR_WORKERS (or --workers)" in str(refused.value)
    assert "a whole number from 1 to 64" in str(refused.value)


def test_the_largest_worker_count_is_accepted() -> None:
    assert load_settings(require_secrets=False, workers=64).workers == 64
