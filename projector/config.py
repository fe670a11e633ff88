"""Configuration: read once from the environment, validated, then handed down."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from projector.storage.location import Location, parse_location

ENVIRONMENTS = ("test", "live")
# Refold's pages say "live" in some places and "production" in others: one environment.
ENVIRONMENT_ALIASES = {"test": "test", "live": "live", "production": "live"}


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and says how to fix it."""


def normalise_environment(name: str) -> str | None:
    """Map `live`/`production`/`test` (any case) to the canonical name, or None."""
    return ENVIRONMENT_ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class SigningKey:
    """One org API key that may sign deliveries for one environment."""

    environment: str
    secret: bytes
    # A non-secret fingerprint, stored with each delivery to record which key matched.
    key_id: str

    def __repr__(self) -> str:  # never let a secret reach a log line or a traceback
        return f"SigningKey(environment={self.environment!r}, key_id={self.key_id!r})"


def fingerprint(environment: str, secret: str) -> str:
    """A short, non-reversible name for a key: `live:3f2a9c1e`."""
    return f"{environment}:{hashlib.sha256(secret.encode()).hexdigest()[:8]}"


def parse_signing_keys(raw: str) -> tuple[SigningKey, ...]:
    """Parse `test:tk_a,live:pk_new,live:pk_old` into keys, or raise ConfigError."""
    hint = "set it to comma-separated environment:api_key pairs, e.g. 'test:tk_abc,live:pk_xyz'"
    keys: list[SigningKey] = []
    seen: dict[str, tuple[int, str]] = {}  # key -> (entry, environment) that first listed it
    for position, pair in enumerate(raw.split(","), start=1):
        pair = pair.strip()
        if not pair:
            continue
        name, sep, secret = pair.partition(":")
        environment = normalise_environment(name)
        if not sep:
            raise ConfigError(
                f"PROJECTOR_SIGNING_KEYS: entry {position} has no ':' between environment "
                f"and key; {hint}"
            )
        if environment is None:
            raise ConfigError(
                f"PROJECTOR_SIGNING_KEYS: entry {position} names environment {name.strip()!r}; "
                f"use one of test, live (or production, an alias of live)"
            )
        secret = secret.strip()
        if not secret:
            raise ConfigError(f"PROJECTOR_SIGNING_KEYS: entry {position} has an empty key; {hint}")
        # The key that matched decides a delivery's environment: a key listed for both
        # environments could not decide it, so it is refused rather than tried in order.
        first_position, first_environment = seen.setdefault(secret, (position, environment))
        if first_environment != environment:
            raise ConfigError(
                f"PROJECTOR_SIGNING_KEYS: entries {first_position} ({first_environment}) and "
                f"{position} ({environment}) hold the same key; the key that matched decides "
                "a delivery's environment, so each key may be listed for one environment "
                "only: give each environment its own Refold API key"
            )
        keys.append(SigningKey(environment, secret.encode(), fingerprint(environment, secret)))
    if not keys:
        raise ConfigError(f"PROJECTOR_SIGNING_KEYS is empty or unset; {hint}")
    return tuple(keys)


def parse_read_tokens(raw: str) -> tuple[bytes, ...]:
    """Parse comma-separated bearer tokens, or raise ConfigError."""
    tokens = tuple(t.strip().encode() for t in raw.split(",") if t.strip())
    if not tokens:
        raise ConfigError(
            "PROJECTOR_READ_TOKENS is empty or unset; set it to one or more comma-separated "
            "bearer tokens, e.g. PROJECTOR_READ_TOKENS=$(openssl rand -hex 24)"
        )
    if any(len(t) < 8 for t in tokens):
        raise ConfigError("PROJECTOR_READ_TOKENS: every token must be at least 8 characters long")
    return tokens


class Settings(BaseSettings):
    """Every setting of the service, from PROJECTOR_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="PROJECTOR_", extra="ignore")

    # A SQLite file, or a postgresql:// URL (projector.storage.location).
    db: Annotated[Location, NoDecode] = Path("data/projector.sqlite3")
    signing_keys: Annotated[tuple[SigningKey, ...], NoDecode] = Field(default=(), repr=False)
    read_tokens: Annotated[tuple[bytes, ...], NoDecode] = Field(default=(), repr=False)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Deliveries being received or waiting for the writer; beyond this the receiver answers
    # 503. Bodies in progress take at most about max_pending x max_body_bytes of memory.
    max_pending: int = Field(default=256, ge=1)
    # GET /v1/changes: open streams at most (the next gets 503), the idle comment's period,
    # and how long one write may wait on a client before the stream is cut off as too slow.
    max_streams: int = Field(default=100, ge=1, le=10_000)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    stream_write_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    # /readyz answers 503 once a projection's oldest unfolded delivery is older than this.
    ready_max_lag_seconds: float = 30.0
    access_log: bool = False  # one structured line per request
    # Where Refold reaches this service (for `projector subscriptions`), and Refold's API.
    public_url: str | None = None
    refold_api: str = "https://app.refold.ai"
    refold_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Alerting (projector.alerting): where alerts are POSTed (a secret, like a Slack webhook
    # URL: never logged whole), how many go one by one in a minute before a flood is summed
    # up, and the first retry's delay (each further retry waits twice as long).
    alert_url: str | None = Field(default=None, repr=False)
    alert_max_per_minute: int = Field(default=30, ge=1, le=10_000)
    alert_retry_seconds: float = Field(default=10.0, gt=0, le=600)
    # `projector serve --workers N`: processes sharing the port (projector.workers); 1 is
    # one ordinary process, with no supervisor.
    workers: int = 1

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> tuple[SigningKey, ...]:
        if isinstance(value, str):
            return parse_signing_keys(value)
        return tuple(value)

    @field_validator("db", mode="before")
    @classmethod
    def _db(cls, value: Any) -> Location:
        try:
            return parse_location(value)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @field_validator("ready_max_lag_seconds", mode="before")
    @classmethod
    def _max_lag(cls, value: Any) -> float:
        return parse_max_lag(value)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int:
        return parse_workers(value)

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log(cls, value: Any) -> bool:
        return parse_switch("PROJECTOR_ACCESS_LOG", value)

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: Any) -> str | None:
        text = str(value).strip() if value is not None else ""
        return parse_base_url("PROJECTOR_PUBLIC_URL", text, "https://projector.example.com") or None

    @field_validator("alert_url", mode="before")
    @classmethod
    def _alert_url(cls, value: Any) -> str | None:
        return parse_alert_url(str(value).strip() if value is not None else "") or None

    @field_validator("refold_api", mode="before")
    @classmethod
    def _refold_api(cls, value: Any) -> str:
        return parse_base_url("PROJECTOR_REFOLD_API", str(value).strip(), "https://app.refold.ai")

    @field_validator("read_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> tuple[bytes, ...]:
        if isinstance(value, str):
            return parse_read_tokens(value)
        return tuple(v.encode() if isinstance(v, str) else v for v in value)


_BASE_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


def parse_base_url(name: str, raw: str, example: str) -> str:
    """An http(s) address without query or fragment, without its trailing slash ('' stays '')."""
    if raw and not _BASE_URL.fullmatch(raw):
        raise ConfigError(
            f"{name} is {raw[:60]!r}; set it to an http:// or https:// address such as {example}"
        )
    return raw.rstrip("/")


_ALERT_URL = re.compile(r"(https?)://([^\s/?#@]+@)?([^\s/?#@]+)(/[^\s#]*)?(\?[^\s#]*)?")


def parse_alert_url(raw: str) -> str:
    """PROJECTOR_ALERT_URL: an http(s) address, path and query kept as given; '' stays ''."""
    if raw and not _ALERT_URL.fullmatch(raw):
        # The value is not echoed: a webhook URL carries its secret in the path.
        raise ConfigError(
            "PROJECTOR_ALERT_URL is not an http:// or https:// address (its value is not shown: "
            "it may hold a secret); set it to the full address alerts are POSTed to, such as "
            "a Slack incoming webhook's https://hooks.slack.com/services/..., without spaces "
            "or a #fragment"
        )
    return raw


def parse_max_lag(raw: object) -> float:
    """PROJECTOR_READY_MAX_LAG_SECONDS: a number of seconds above 0, at most a day."""
    try:
        seconds = float(str(raw).strip())
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 86400:  # also refuses nan
        raise ConfigError(
            f"PROJECTOR_READY_MAX_LAG_SECONDS is {str(raw)[:40]!r}; set it to a number of "
            "seconds above 0 and at most 86400 (default 30)"
        )
    return seconds


MAX_WORKERS = 64


def parse_workers(raw: object) -> int:
    """PROJECTOR_WORKERS / --workers: how many processes serve, a whole number 1..64."""
    text = str(raw).strip()
    if not re.fullmatch("[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_WORKERS:
        raise ConfigError(
            f"PROJECTOR_WORKERS (or --workers) is {text[:40]!r}; set it to a whole number from 1 "
            f"to {MAX_WORKERS}, such as the machine's number of cores (default 1: one process)"
        )
    return int(text)


def parse_switch(name: str, raw: object) -> bool:
    """A true/false setting; anything but the usual spellings is refused by name."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{name} is {str(raw)[:40]!r}; set it to true or false")


def load_settings(
    *, require_secrets: bool = True, require_read_tokens: bool | None = None, **overrides: Any
) -> Settings:
    """Read and validate the settings, raising ConfigError with a fix-it message.

    `require_secrets` needs signing keys and read tokens; `require_read_tokens=False` only keys.
    """
    try:
        settings = Settings(**overrides)
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, ConfigError):
                raise cause from None
            problems.append(f"PROJECTOR_{field.upper()}: {error['msg']}")
        raise ConfigError("; ".join(problems)) from None
    if require_secrets and not settings.signing_keys:
        parse_signing_keys("")
    if require_read_tokens is None:
        require_read_tokens = require_secrets
    if require_read_tokens and not settings.read_tokens:
        parse_read_tokens("")
    return settings
