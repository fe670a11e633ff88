"""PROJECTOR_DB: a file path (SQLite) or a postgresql:// URL, and how to show it safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
# libpq's URL parameters that a deployment sets; anything else is most likely a typo.
LIBPQ_PARAMETERS = frozenset(
    {
        "application_name",
        "channel_binding",
        "connect_timeout",
        "gssencmode",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "options",
        "passfile",
        "password",
        "port",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslpassword",
        "sslrootcert",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    }
)


@dataclass(frozen=True)
class PostgresUrl:
    """A PostgreSQL connection URL. str() and repr() never show its password."""

    url: str

    def __str__(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"PostgresUrl({redact(self.url)!r})"

    @property
    def database(self) -> str:
        return urlsplit(self.url).path.lstrip("/")


def redact(url: str) -> str:
    """`url` with any password (in the netloc or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        netloc = f"{user}:***@{host}" if has_password else netloc
    query = "&".join(
        f"{name}=***" if name == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


Location = Path | PostgresUrl


def parse_location(raw: str | Path, name: str = "PROJECTOR_DB") -> Location:
    """What PROJECTOR_DB (or `name`) names: a SQLite file, or a PostgreSQL database.

    Raises ValueError saying why not.
    """
    if isinstance(raw, Path):
        return raw
    text = raw.strip()
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if not scheme:
        return Path(text)
    if scheme not in POSTGRES_SCHEMES:
        raise ValueError(
            f"{name}: {scheme}:// is not a database this service can use; give a file "
            "path for SQLite, or postgresql://user:password@host:port/dbname for PostgreSQL"
        )
    parts = urlsplit(text)
    problems = []
    if not parts.path.lstrip("/"):
        problems.append("it names no database (add /dbname after the host)")
    unknown = sorted({n for n, _ in parse_qsl(parts.query)} - LIBPQ_PARAMETERS)
    if unknown:
        problems.append(f"unknown parameter(s) {', '.join(unknown)}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        problems.append("its port is not a number")
    if problems:
        raise ValueError(
            f"{name} ({redact(text)}): {'; '.join(problems)}; the form is "
            "postgresql://user:password@host:port/dbname[?sslmode=require&...]"
        )
    # libpq reads the scheme in lower case only.
    return PostgresUrl(scheme + text[len(scheme) :])
