"""Logging set-up: JSON lines in production, and tracebacks that never print frame locals."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from projector.logs import configure_logging

SECRET = "pk_live_secret_in_a_local"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _fail_holding_a_secret() -> None:
    key = SECRET  # a local, as a signing key or read token is in real frames
    raise ValueError(f"failed with a key of {len(key)} characters")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_logged_traceback_names_the_error_but_no_local_variable(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tracebacks help debugging without leaking what frames held (keys, tokens)."""
    configure_logging(log_format)
    try:
        _fail_holding_a_secret()
    except ValueError:
        structlog.get_logger("test").exception("boom", seq=7)
    output = capsys.readouterr().err
    assert "ValueError" in output
    assert "_fail_holding_a_secret" in output
    assert SECRET not in output


def test_json_lines_carry_the_bound_context_and_the_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One JSON object per line; structlog's `event` is the message, `refold_event` the event."""
    configure_logging("json")
    structlog.get_logger("test").bind(seq=3, environment="live").info(
        "delivery_stored", refold_event="Connection Created"
    )
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "delivery_stored"
    assert (line["seq"], line["environment"]) == (3, "live")
    assert line["event"] == "Connection Created"


def test_lines_below_the_configured_level_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    """At info (the default) per-delivery debug lines cost nothing and print nothing."""
    configure_logging("json", "info")
    log = structlog.get_logger("test")
    log.debug("delivery_stored", seq=1)
    log.info("listening")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [line["message"] for line in lines] == ["listening"]
