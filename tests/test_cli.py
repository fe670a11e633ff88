"""The `projector` command line, run as a user runs it: a subprocess with PROJECTOR_* set."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from projector.sender import environment_of
from tests.support import (
    AUTH,
    KEY_BY_ENVIRONMENT,
    LIVE_KEY,
    LIVE_OLD_KEY,
    READ_TOKEN,
    REPO,
    TEST_KEY,
    Service,
    free_port,
    run_cli,
    sample_bodies,
    service_env,
    signed,
    wait_projected,
)

COMMANDS = {
    "serve": "run the receiver",
    "rebuild": "replay the whole log",
    "copy": "copy the log row for row",
    "send": "sign each line",
    "events": "audit trail",
    "schemas": "JSON Schemas",
    "subscribe": "subscribe URL to Refold's webhooks",
    "subscriptions": "list Refold's webhook subscriptions",
    "unsubscribe": "delete every Refold webhook subscription to URL",
    "doctor": "check this deployment",
}


def env_for(db: Path, **changes: str | None) -> dict[str, str]:
    """A test service's environment with some PROJECTOR_* variables set or (None) unset."""
    env = service_env(db, PROJECTOR_PORT=str(free_port()))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def assert_plain_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("projector: ")
    assert len(stderr.strip().splitlines()) == 1


# --- help -------------------------------------------------------------------------------


def test_top_level_help_exits_0_and_lists_every_command(db_path: Path) -> None:
    result = run_cli("--help", env=env_for(db_path))
    assert result.returncode == 0
    assert result.stdout.startswith("usage: projector")
    assert "refold-projector" in result.stdout
    for command, summary in COMMANDS.items():
        assert command in result.stdout
        assert summary in result.stdout.replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_exits_0_with_its_usage(db_path: Path, command: str) -> None:
    result = run_cli(command, "--help", env=env_for(db_path))
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: projector {command}")
    assert result.stderr == ""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_says_what_the_command_does(db_path: Path, command: str) -> None:
    result = run_cli(command, "--help", env=env_for(db_path))
    assert result.returncode == 0
    assert COMMANDS[command].lower() in " ".join(result.stdout.split()).lower()


def test_no_command_is_a_usage_error(db_path: Path) -> None:
    result = run_cli(env=env_for(db_path))
    assert result.returncode == 2
    assert "usage: projector" in result.stderr
    assert "Traceback" not in result.stderr


# What each command's --help must name: the PROJECTOR_* variables it reads, its exit codes.
LOGS = {"PROJECTOR_LOG_FORMAT", "PROJECTOR_LOG_LEVEL"}
REFOLD = {"PROJECTOR_SIGNING_KEYS", "PROJECTOR_REFOLD_API", "PROJECTOR_REFOLD_TIMEOUT_SECONDS"}
READS = {
    "serve": {
        "PROJECTOR_SIGNING_KEYS",
        "PROJECTOR_READ_TOKENS",
        "PROJECTOR_DB",
        "PROJECTOR_HOST",
        "PROJECTOR_PORT",
        "PROJECTOR_MAX_BODY_BYTES",
        "PROJECTOR_MAX_PENDING",
        *LOGS,
    },
    "rebuild": {"PROJECTOR_DB", *LOGS},
    "verify": {"PROJECTOR_DB"},
    "backup": {"PROJECTOR_DB"},
    "copy": LOGS,
    "send": {"PROJECTOR_SIGNING_KEYS", *LOGS},
    "events": {"PROJECTOR_DB", *LOGS},
    "schemas": set(),
    "subscribe": REFOLD,
    "subscriptions": {*REFOLD, "PROJECTOR_PUBLIC_URL"},
    "unsubscribe": REFOLD,
    "doctor": {
        *REFOLD,
        "PROJECTOR_READ_TOKENS",
        "PROJECTOR_DB",
        "PROJECTOR_PUBLIC_URL",
        "PROJECTOR_ALERT_URL",
        *LOGS,
    },
}
EXIT_CODES = {
    "serve": ["0", "2"],
    "rebuild": ["0", "1", "2"],
    "verify": ["0", "1", "2"],
    "backup": ["0", "2"],
    "copy": ["0", "1", "2"],
    "send": ["0", "1", "2"],
    "events": ["0", "2"],
    "schemas": ["0", "1", "2"],
    "subscribe": ["0", "1", "2"],
    "subscriptions": ["0", "1", "2"],
    "unsubscribe": ["0", "1", "2"],
    "doctor": ["0", "1", "2"],
}


@pytest.mark.parametrize("command", sorted(READS))
def test_each_command_help_names_the_variables_it_reads_its_exit_codes_and_an_example(
    db_path: Path, command: str
) -> None:
    result = run_cli(command, "--help", env=env_for(db_path))
    assert result.returncode == 0
    help_text = result.stdout
    reads = help_text[help_text.index("\nreads:\n") : help_text.index("\nexit codes:\n")]
    assert set(re.findall(r"PROJECTOR_[A-Z_]+", reads)) == READS[command]
    exits = help_text[help_text.index("\nexit codes:\n") : help_text.index("\nexample:\n")]
    assert re.findall(r"^  (\d)  ", exits, re.MULTILINE) == EXIT_CODES[command]
    example = help_text[help_text.index("\nexample:\n") :].strip().splitlines()[1:]
    assert len(example) == 1
    assert re.match(rf"  (PROJECTOR_\S+ )*projector {command}\b", example[0])


def test_version_prints_the_installed_package_version(db_path: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    result = run_cli("--version", env=env_for(db_path))
    assert result.returncode == 0
    assert result.stdout == f"projector {project['version']}\n"


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (("serve", "--port", "70000"), "argument --port: port must be a whole number from 1 to"),
        (("serve", "--port", "0"), "argument --port: port must be a whole number from 1 to"),
        (("serve", "--port", "http"), "argument --port: port must be a whole number from 1 to"),
        (("events", "--limit", "0"), "argument --limit: limit must be a whole number, 1 or more"),
        (("events", "--limit", "-3"), "argument --limit: limit must be a whole number, 1 or"),
        (("events", "--limit", "²"), "argument --limit: limit must be a whole number, 1 or more"),
        (("send", "f", "--url", "u", "--concurrency", "0"), "argument --concurrency: concurrency"),
    ],
)
def test_a_bad_option_value_exits_2_naming_the_option_typed(
    db_path: Path, args: tuple[str, ...], wanted: str
) -> None:
    result = run_cli(*args, env=env_for(db_path))
    assert result.returncode == 2
    assert wanted in result.stderr
    assert "PROJECTOR_" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not db_path.exists()


@pytest.mark.parametrize("after", ["-5", "x", "1.5", "99999999999999999999"])
async def test_events_after_is_refused_in_the_words_of_the_api(
    client: TestClient, db_path: Path, after: str
) -> None:
    answer = await client.get("/v1/events", params={"after": after}, headers=AUTH)
    assert answer.status == 400
    api_words = (await answer.json())["error"]["message"]
    result = await asyncio.to_thread(run_cli, "events", "--after", after, env=env_for(db_path))
    assert result.returncode == 2
    assert f"argument --after: {api_words}\n" in result.stderr
    assert "Traceback" not in result.stderr


async def test_events_limit_zero_is_refused_like_the_api_refuses_it(
    client: TestClient, db_path: Path
) -> None:
    answer = await client.get("/v1/events?limit=0", headers=AUTH)
    assert answer.status == 400
    api_words = (await answer.json())["error"]["message"]
    assert api_words.startswith("limit must be a whole number")
    result = await asyncio.to_thread(run_cli, "events", "--limit", "0", env=env_for(db_path))
    assert result.returncode == 2
    # The same rule from below; the CLI has no ceiling, as it pages through the API's 1000.
    assert "argument --limit: limit must be a whole number, 1 or more\n" in result.stderr


async def test_send_needs_only_the_signing_keys_it_signs_with(
    client: TestClient, tmp_path: Path
) -> None:
    bodies = sample_bodies()[:5]
    deliveries = tmp_path / "deliveries.jsonl"
    deliveries.write_bytes(b"\n".join(bodies) + b"\n")
    env = env_for(tmp_path / "unused.sqlite3", PROJECTOR_READ_TOKENS=None)
    url = str(client.make_url("/webhooks/refold"))
    result = await asyncio.to_thread(run_cli, "send", str(deliveries), "--url", url, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "sent 5, accepted 5, duplicates 0, failed 0\n"
    events = await (await client.get("/v1/events?environment=test", headers=AUTH)).json()
    live = await (await client.get("/v1/events?environment=live", headers=AUTH)).json()
    assert len(events["events"]) + len(live["events"]) == 5


# --- configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize("keys", [None, "", "test", "staging:x", "test:", " , "])
def test_serve_with_missing_or_malformed_signing_keys_exits_2_naming_the_variable(
    db_path: Path, keys: str | None
) -> None:
    result = run_cli("serve", env=env_for(db_path, PROJECTOR_SIGNING_KEYS=keys), timeout=30)
    assert result.returncode == 2
    assert "PROJECTOR_SIGNING_KEYS" in result.stderr
    assert_plain_error(result.stderr)
    assert not db_path.exists()


@pytest.mark.parametrize("tokens", [None, "", "short"])
def test_serve_with_missing_or_weak_read_tokens_exits_2_naming_the_variable(
    db_path: Path, tokens: str | None
) -> None:
    result = run_cli("serve", env=env_for(db_path, PROJECTOR_READ_TOKENS=tokens), timeout=30)
    assert result.returncode == 2
    assert "PROJECTOR_READ_TOKENS" in result.stderr
    assert_plain_error(result.stderr)


@pytest.mark.parametrize(
    "keys", ["pk_secret_value_123", "staging:pk_secret_value_123", f"test:{TEST_KEY},pk_secret"]
)
def test_signing_key_config_error_does_not_echo_the_key(db_path: Path, keys: str) -> None:
    result = run_cli("serve", env=env_for(db_path, PROJECTOR_SIGNING_KEYS=keys), timeout=30)
    assert result.returncode == 2
    assert "pk_secret" not in result.stderr + result.stdout
    assert TEST_KEY not in result.stderr + result.stdout


def test_serve_with_one_key_for_two_environments_exits_2_without_printing_the_key(
    db_path: Path,
) -> None:
    keys = "test:pk_shared_secret_9,live:pk_shared_secret_9"
    result = run_cli("serve", env=env_for(db_path, PROJECTOR_SIGNING_KEYS=keys), timeout=30)
    assert result.returncode == 2
    assert "PROJECTOR_SIGNING_KEYS: entries 1 (test) and 2 (live) hold the same key" in (
        result.stderr
    )
    assert_plain_error(result.stderr)
    assert "pk_shared_secret_9" not in result.stderr + result.stdout
    assert not db_path.exists()


def test_serve_on_a_port_already_in_use_exits_with_an_error_instead_of_hanging(
    db_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = run_cli("serve", "--port", str(port), env=env_for(db_path), timeout=10)
        except subprocess.TimeoutExpired as hung:
            output = hung.stderr.decode() if isinstance(hung.stderr, bytes) else str(hung.stderr)
            pytest.fail(f"serve still ran 10 s after failing to bind:\n{output[-600:]}")
    assert result.returncode != 0
    assert str(port) in result.stderr
    assert "Traceback" not in result.stderr


# --- secrets stay out of the logs -------------------------------------------------------


@pytest.fixture(scope="module")
def service_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Start a service, send it deliveries signed with every key, read, stop; all output."""
    tmp_path = tmp_path_factory.mktemp("secrets")
    # Debug level: every delivery's own log line is checked for secrets too.
    debug = {"PROJECTOR_LOG_LEVEL": "debug"}
    service = Service(tmp_path / "projector.sqlite3", extra_env=debug).start()
    try:
        lines = []
        keys = (("test", TEST_KEY), ("live", LIVE_KEY), ("live", LIVE_OLD_KEY))
        for n, (environment, key) in enumerate(keys):
            body = json.dumps(
                {
                    "linked_account_id": f"acct-{n}",
                    "environment": environment,
                    "event": "Connection Created",
                    "slug": "slack",
                    "createdAt": "Wed, 01 Jul 2026 12:00:00 GMT",
                }
            ).encode()
            lines.append(body)
            request = urllib.request.Request(
                f"{service.url}/webhooks/refold", data=body, headers=signed(body, key)
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        deliveries = tmp_path / "deliveries.jsonl"
        deliveries.write_bytes(b"\n".join(lines) + b"\n")
        sent = run_cli(
            "send", str(deliveries), "--url", f"{service.url}/webhooks/refold", env=service.env
        )
        assert sent.returncode == 0, sent.stderr
        request = urllib.request.Request(f"{service.url}/v1/events", headers=AUTH)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        exit_code = service.stop()
    finally:
        service.kill()
    assert exit_code == 0
    return service.logs() + sent.stdout + sent.stderr


@pytest.mark.e2e
def test_signing_keys_never_appear_in_the_output_or_logs_of_a_running_service(
    service_output: str,
) -> None:
    assert service_output.count("delivery_stored") == 6
    assert "sent 3, accepted 3, duplicates 3, failed 0" in service_output
    for secret in (TEST_KEY, LIVE_KEY, LIVE_OLD_KEY):
        assert secret not in service_output


@pytest.mark.e2e
def test_read_token_never_appears_in_the_logs_of_a_running_service(service_output: str) -> None:
    assert READ_TOKEN not in service_output


# --- events -----------------------------------------------------------------------------


async def test_events_prints_one_json_line_per_delivery_of_the_environment_in_seq_order(
    client: TestClient, db_path: Path
) -> None:
    acks = []
    for body in sample_bodies()[:120]:
        environment = environment_of(body, "test")
        answer = await client.post(
            "/webhooks/refold", data=body, headers=signed(body, KEY_BY_ENVIRONMENT[environment])
        )
        assert answer.status == 200
        acks.append((await answer.json(), body))
    await wait_projected(client)
    env = env_for(db_path)

    for environment in ("live", "test"):
        result = await asyncio.to_thread(run_cli, "events", "--environment", environment, env=env)
        assert result.returncode == 0, result.stderr
        printed = [json.loads(line) for line in result.stdout.splitlines()]
        wanted = [(a["seq"], a["duplicate"]) for a, _ in acks if a["environment"] == environment]
        assert [(e["seq"], e["duplicate"]) for e in printed] == wanted
        assert {e["environment"] for e in printed} == {environment}

    default = await asyncio.to_thread(run_cli, "events", env=env)
    assert [json.loads(line)["environment"] for line in default.stdout.splitlines()] == [
        "live" for a, _ in acks if a["environment"] == "live"
    ]


async def test_events_filters_by_linked_account_id_and_stops_at_limit(
    client: TestClient, db_path: Path
) -> None:
    account = "cli-account"
    seqs = []
    expired_seqs = []  # of every account
    for n in range(6):
        for who in (account, "someone-else"):
            body = json.dumps(
                {
                    "linked_account_id": who,
                    "environment": "live",
                    "event": "Connection Created" if n % 2 == 0 else "Connection Expired",
                    "slug": "hubspot",
                    "createdAt": f"Wed, 01 Jul 2026 12:00:0{n} GMT",
                }
            ).encode()
            answer = await client.post("/webhooks/refold", data=body, headers=signed(body))
            assert answer.status == 200
            seq = (await answer.json())["seq"]
            if who == account:
                seqs.append(seq)
            if n % 2 == 1:
                expired_seqs.append(seq)
    env = env_for(db_path)

    result = await asyncio.to_thread(run_cli, "events", "--linked-account-id", account, env=env)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in printed] == seqs
    assert {e["linked_account_id"] for e in printed} == {account}

    limited = await asyncio.to_thread(
        run_cli, "events", "--linked-account-id", account, "--limit", "4", env=env
    )
    assert [json.loads(line)["seq"] for line in limited.stdout.splitlines()] == seqs[:4]

    expired = await asyncio.to_thread(
        run_cli, "events", "--event", "Connection Expired", "--after", str(seqs[2]), env=env
    )
    printed = [json.loads(line) for line in expired.stdout.splitlines()]
    assert [e["seq"] for e in printed] == [seq for seq in expired_seqs if seq > seqs[2]]
    assert {e["event"] for e in printed} == {"Connection Expired"}
    assert (await client.get("/v1/projections", headers=AUTH)).status == 200


async def test_events_filter_by_flagged_and_by_one_flag(client: TestClient, db_path: Path) -> None:
    def connection(account: str, **changes: str | None) -> bytes:
        payload: dict[str, str | None] = {
            "linked_account_id": account,
            "environment": "live",
            "event": "Connection Created",
            "slug": "hubspot",
            "createdAt": "Wed, 01 Jul 2026 12:00:00 GMT",
            **changes,
        }
        return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()

    bodies = {
        "clean": connection("a1"),
        "missing_field:slug": connection("a2", slug=None),
        "unknown_event": connection("a3", event="Connection Paused"),
        "two": connection("a4", slug=None, environment="test"),
        "clean again": connection("a5"),
    }
    seq = {}
    for name, body in bodies.items():
        answer = await client.post("/webhooks/refold", data=body, headers=signed(body))
        assert answer.status == 200
        seq[name] = (await answer.json())["seq"]
    env = env_for(db_path)

    async def printed(*options: str) -> list[int]:
        result = await asyncio.to_thread(run_cli, "events", *options, env=env)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    assert await printed("--flagged") == [
        seq["missing_field:slug"],
        seq["unknown_event"],
        seq["two"],
    ]
    assert await printed("--no-flagged") == [seq["clean"], seq["clean again"]]
    assert await printed("--flag", "missing_field:slug") == [seq["missing_field:slug"], seq["two"]]
    assert await printed("--flag", "environment_mismatch") == [seq["two"]]
    assert await printed("--flag", "unknown_event", "--limit", "1") == [seq["unknown_event"]]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (("--flag", "missing_field"), "must name the field, as in missing_field:slug"),
        (("--flag", "unknown_events"), "is not a flag deliveries carry; use one of not_json"),
        (("--flagged", "true"), "unrecognized arguments: true"),
    ],
)
def test_events_with_a_flag_no_delivery_can_carry_exits_2_saying_what_to_send(
    tmp_path: Path, options: tuple[str, ...], says: str
) -> None:
    result = run_cli("events", *options, env=env_for(tmp_path / "projector.sqlite3"))
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_events_on_a_missing_database_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "projector.sqlite3"
    result = run_cli("events", env=env_for(missing))
    assert result.returncode == 2
    assert "PROJECTOR_DB" in result.stderr
    assert_plain_error(result.stderr)
    assert not missing.exists()


# --- rebuild ----------------------------------------------------------------------------


def test_rebuild_on_a_missing_database_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "projector.sqlite3"
    result = run_cli("rebuild", env=env_for(missing))
    assert result.returncode == 2
    assert "PROJECTOR_DB" in result.stderr
    assert str(missing) in result.stderr
    assert_plain_error(result.stderr)
    assert not missing.exists()


# --- schemas ----------------------------------------------------------------------------


def test_schemas_check_passes_on_the_repository_schemas(db_path: Path) -> None:
    assert any((REPO / "schemas").glob("*/*.json")), "schemas/ is missing: run `make schemas`"
    result = run_cli("schemas", "--check", env=env_for(db_path))
    assert result.returncode == 0, result.stderr


def test_schemas_check_outside_the_project_says_there_is_no_schemas_folder(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "projector.cli", "schemas", "--check"],
        env=env_for(tmp_path / "db.sqlite3"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert_plain_error(result.stderr)
    assert f"no schemas folder at {tmp_path / 'schemas'} to check" in result.stderr
    assert "out of date" not in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_schemas_check_prints_one_line_when_every_file_is_current(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    env = env_for(tmp_path / "db.sqlite3")
    assert run_cli("schemas", "--out", str(out), env=env).returncode == 0
    result = run_cli("schemas", "--check", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    count = len(list(out.glob("**/*.json")))  # openapi.json, and the schemas one folder down
    assert result.stdout == f"all {count} schema files in {out} are current\n"
    assert result.stderr == ""


def test_schemas_check_passes_on_freshly_generated_schemas(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    env = env_for(tmp_path / "db.sqlite3")
    written = run_cli("schemas", "--out", str(out), env=env)
    assert written.returncode == 0, written.stderr
    files = sorted(out.glob("**/*.json"))
    assert out / "openapi.json" in files
    assert sorted(written.stdout.split()) == sorted(str(f) for f in files)
    for path in files:
        json.loads(path.read_text(encoding="utf-8"))
    assert run_cli("schemas", "--check", "--out", str(out), env=env).returncode == 0


def test_schemas_check_fails_with_exit_1_on_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    result = run_cli("schemas", "--check", "--out", str(out), env=env_for(tmp_path / "db"))
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert list(out.iterdir()) == []


def test_schemas_check_fails_with_exit_1_when_one_file_changed(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    env = env_for(tmp_path / "db")
    assert run_cli("schemas", "--out", str(out), env=env).returncode == 0
    changed = sorted(out.glob("*/*.json"))[0]
    changed.write_text(changed.read_text(encoding="utf-8") + " ", encoding="utf-8")
    result = run_cli("schemas", "--check", "--out", str(out), env=env)
    assert result.returncode == 1
    assert changed.name in result.stderr


@pytest.mark.parametrize("kind", ["a directory", "not a database"])
def test_serve_on_an_unusable_database_exits_2_naming_projector_db(
    tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "db.sqlite3"
    if kind == "a directory":
        db.mkdir()
    else:
        db.write_bytes(b"this is not SQLite\n" * 100)
    result = run_cli("serve", "--port", "1", env=env_for(db), timeout=30)
    assert result.returncode == 2
    assert "PROJECTOR_DB" in result.stderr
    assert "Traceback" not in result.stderr
