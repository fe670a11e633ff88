"""The README works when pasted: each ```sh block runs in a fresh shell against `make run`."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from projector.integrity import HASHED_COLUMNS
from tests.support import REPO, Service, sample_bodies

README = REPO / "README.md"
MAKEFILE = REPO / "Makefile"
README_ADDRESS = "127.0.0.1:8080"  # where the README's examples expect `make run`
WELCOME = "refold-projector is listening on"
RECEIVER_PATH = "/webhooks/refold"
BASH = shutil.which("bash") or "/bin/bash"  # a reader's shell

# Values that differ on every run, each checked for its shape instead of its value: a row's
# arrival time, and the hash chain that covers it (README: "yours differs").
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
HASH = re.compile(r"[0-9a-f]{64}")
VARYING_FIELDS = {"received_at": TIMESTAMP, "log_head_hash": HASH}
VARYING_TEXT = re.compile(r"\bhash [0-9a-f]{64}\b")


@dataclass(frozen=True)
class Fence:
    """One fenced block of the README: its language tag, first line number and text."""

    language: str
    line: int
    text: str
    prose_before: str  # the README text between the previous block and this one


@dataclass(frozen=True)
class Example:
    """A ```sh block, and the plain ``` block right after it showing its output, if any."""

    commands: Fence
    output: Fence | None

    @property
    def where(self) -> str:
        return f"README.md line {self.commands.line}"


def fences(markdown: str) -> list[Fence]:
    """Every fenced block, in order."""
    found: list[Fence] = []
    lines = markdown.splitlines()
    index, prose_start = 0, 0
    while index < len(lines):
        if not lines[index].startswith("```"):
            index += 1
            continue
        closing = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        prose = "\n".join(lines[prose_start:index])
        body = "\n".join(lines[index + 1 : closing])
        found.append(Fence(lines[index][3:].strip(), index + 1, body, prose))
        index = prose_start = closing + 1
    return found


def examples(markdown: str) -> list[Example]:
    """The ```sh blocks, each with the output block that directly follows it."""
    blocks = fences(markdown)
    found = []
    for position, block in enumerate(blocks):
        if block.language != "sh":
            continue
        following = blocks[position + 1] if position + 1 < len(blocks) else None
        shows_output = following and following.language == "" and not following.prose_before.strip()
        found.append(Example(block, following if shows_output else None))
    return found


def is_make_commands(example: Example) -> bool:
    """The "Two commands" block: `make run` itself, which the test reproduces, not runs."""
    commands = [line.split("#")[0].strip() for line in example.commands.text.splitlines()]
    return "make run" in commands


def make_run_setup() -> tuple[dict[str, str], tuple[str, ...]]:
    """The demo PROJECTOR_* variables `make run` exports, and what it passes to `serve`."""
    makefile = MAKEFILE.read_text()
    variables = dict(re.findall(r"^export (PROJECTOR_\w+) \?= (\S+)$", makefile, re.MULTILINE))
    recipe = re.search(r"^run:.*\n\t\$\(BIN\)/projector serve(.*)$", makefile, re.MULTILINE)
    assert recipe, "Makefile: `run:` no longer runs `$(BIN)/projector serve`; update this test"
    return variables, tuple(recipe.group(1).split())


def masked(value: Any, where: str) -> Any:
    """`value` with the fields that vary per run replaced, after checking their shape."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if key in VARYING_FIELDS:
                assert isinstance(item, str), f"{where}: {key} is {item!r}"
                assert VARYING_FIELDS[key].fullmatch(item), f"{where}: {key} is {item!r}"
                item = "<varies>"
            result[key] = masked(item, where)
        return result
    if isinstance(value, list):
        return [masked(item, where) for item in value]
    return value


def assert_output_matches(example: Example, stdout: str) -> None:
    """Each line the README shows equals what the block printed, bar the varying values."""
    assert example.output is not None
    shown, printed = example.output.text.splitlines(), stdout.splitlines()
    assert len(printed) == len(shown), f"{example.where}: printed\n{stdout}"
    for expected_line, actual_line in zip(shown, printed, strict=True):
        if not expected_line.startswith("{"):
            assert VARYING_TEXT.sub("hash <varies>", actual_line) == VARYING_TEXT.sub(
                "hash <varies>", expected_line
            ), example.where
            continue
        expected = masked(json.loads(expected_line), f"{example.where} (README)")
        try:
            actual = masked(json.loads(actual_line), example.where)
        except ValueError:
            pytest.fail(f"{example.where}: printed a line that is not JSON: {actual_line!r}")
        assert actual == expected, example.where


@dataclass(frozen=True)
class Reader:
    """A reader's fresh shell in a checkout where `make run` is serving."""

    checkout: Path
    address: str

    def env(self) -> dict[str, str]:
        venv_bin = self.checkout / ".venv" / "bin"
        return {
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.checkout),
            "LANG": "C.UTF-8",
        }

    def paste(self, example: Example) -> str:
        """Run the block as pasted into a new bash (strict), on the test server; its stdout."""
        script = example.commands.text.replace(README_ADDRESS, self.address)
        result = subprocess.run(
            [BASH, "-euo", "pipefail", "-c", script],
            cwd=self.checkout,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (
            f"{example.where} exited {result.returncode} in a fresh shell; every block must run "
            f"on its own (define T and U in it):\n{example.commands.text}\n"
            f"stderr: {result.stderr}\nstdout: {result.stdout}"
        )
        return result.stdout


def get_json(base_url: str, path: str, token: str) -> Any:
    request = urllib.request.Request(
        f"{base_url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def logged_bodies(db: Path) -> list[bytes]:
    """Every delivery's body in seq order, straight from SQLite, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [bytes(body) for (body,) in conn.execute("SELECT body FROM deliveries ORDER BY seq")]
    finally:
        conn.close()


def wait_for_welcome(service: Service, timeout: float = 120) -> None:
    """Wait (bounded) until `serve` prints its welcome: the moment a reader starts pasting."""
    deadline = time.monotonic() + timeout
    while WELCOME not in service.logs():
        assert service.process is not None
        assert service.process.poll() is None, f"serve exited:\n{service.logs()}"
        assert time.monotonic() < deadline, f"no welcome in {timeout}s:\n{service.logs()}"
        time.sleep(0.05)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[Service, Reader, str]]:
    """`make run`'s server (its demo settings and arguments) on a free port and a temp log,
    in a checkout-like folder whose `.venv` is this venv and whose data/ holds that log."""
    variables, serve_args = make_run_setup()
    assert variables.get("PROJECTOR_DB") == "data/projector.sqlite3", variables
    checkout = tmp_path / "checkout"
    (checkout / "data").mkdir(parents=True)
    (checkout / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    assert (checkout / ".venv" / "bin" / "projector").exists(), "run the tests in the venv"
    demo = {name: value for name, value in variables.items() if name != "PROJECTOR_DB"}
    service = Service(
        checkout / "data" / "projector.sqlite3", extra_env=demo, serve_args=serve_args
    )
    service.start()
    try:
        wait_for_welcome(service)
        token = variables["PROJECTOR_READ_TOKENS"].split(",")[0]
        yield service, Reader(checkout, f"127.0.0.1:{service.port}"), token
    finally:
        service.kill()


def test_the_two_commands_block_is_what_the_test_reproduces() -> None:
    two_commands = [e for e in examples(README.read_text()) if is_make_commands(e)]
    assert len(two_commands) == 1
    lines = [line.split("#")[0].strip() for line in two_commands[0].commands.text.splitlines()]
    assert lines == ["make run", "make test"]
    variables, serve_args = make_run_setup()
    assert serve_args == ("--seed", "data/sample-deliveries.jsonl")
    assert variables == {
        "PROJECTOR_SIGNING_KEYS": "test:tk_demo_key,live:pk_demo_key",
        "PROJECTOR_READ_TOKENS": "demo-read-token",
        "PROJECTOR_DB": "data/projector.sqlite3",
    }


def test_shell_blocks_hold_only_commands_so_they_paste() -> None:
    for example in examples(README.read_text()):
        for line in example.commands.text.splitlines():
            assert not line.startswith(('{"', "sqlite ", "chain: ", "head: ", "log ")), (
                f"{example.where}: output {line!r} inside a ```sh block would run as a command; "
                "show it in a plain ``` block right after"
            )


def test_readme_says_next_to_each_shown_log_hash_that_it_cannot_be_reproduced() -> None:
    assert "received_at" in HASHED_COLUMNS  # the reason the README gives must stay true
    showing_a_hash = [
        example
        for example in examples(README.read_text())
        if HASH.search(example.commands.text + (example.output.text if example.output else ""))
    ]
    assert len(showing_a_hash) >= 2  # /v1/projections and `projector verify`
    for example in showing_a_hash:
        last_paragraph = example.commands.prose_before.strip().split("\n\n")[-1]
        assert "received_at" in last_paragraph, example.where
        assert "differs" in last_paragraph, example.where


@pytest.mark.e2e
def test_every_shell_block_runs_as_pasted_after_make_run_and_prints_what_is_shown(
    make_run: tuple[Service, Reader, str],
) -> None:
    service, reader, token = make_run
    seeded = get_json(service.url, "/v1/projections", token)
    assert seeded["log_head"] == len(sample_bodies())  # the welcome comes after the seed
    # The seqs the README shows hold because the seed sends line n as seq n, in file order.
    assert logged_bodies(service.db) == sample_bodies()
    banner = get_json(service.url, "/v1/accounts/911775/connections", token)
    assert banner["needs_reconnect"] is False  # until the receiver's example expires Gmail

    pasted = [e for e in examples(README.read_text()) if not is_make_commands(e)]
    assert len(pasted) >= 8
    printed: dict[str, str] = {}
    for example in pasted:
        printed[example.where] = stdout = reader.paste(example)
        if example.output is not None:
            assert_output_matches(example, stdout)

    # The receiver's example stored a clean delivery that folded; pasting it again is harmless.
    (receiver,) = [e for e in pasted if RECEIVER_PATH in e.commands.text]
    first = json.loads(printed[receiver.where])
    again = json.loads(reader.paste(receiver))
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    stored = [get_json(service.url, f"/v1/events/{a['seq']}", token) for a in (first, again)]
    assert [event["flags"] for event in stored] == [[], []]
    assert [event["duplicate_of"] for event in stored] == [None, first["seq"]]
    banner = get_json(service.url, "/v1/accounts/911775/connections", token)
    assert banner["needs_reconnect"] is True
