"""structlog set-up: JSON lines in production, readable lines in a terminal."""

from __future__ import annotations

import logging
import sys

import structlog
import structlog.tracebacks


def configure_logging(log_format: str = "auto", log_level: str = "info") -> None:
    """Route every log line through structlog, as JSON unless stderr is a terminal."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(
            event_key="message", exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            # structlog calls its message "event"; in this domain `event` is the Refold event
            # (bound as refold_event), so the message moves to "message".
            structlog.processors.EventRenamer("message", replace_by="refold_event"),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without frame locals: a local can hold a signing key or a read token.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if as_json
            else structlog.dev.set_exc_info,
            renderer,
        ],
        # One write per line (print() writes the newline apart): the processes of
        # `serve --workers N` share stderr, and their lines must not run into each other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # Lines below the level cost one method call: no event dict is built or rendered.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[log_level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own warnings (bad requests it refuses itself) still reach stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
