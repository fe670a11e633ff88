"""projector.apidocs: GET /openapi.json and GET /docs, without a token, from the package."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from tests.support import REPO

COMMITTED = REPO / "schemas" / "openapi.json"
NODE = shutil.which("node")
DOM = Path(__file__).with_name("docs_page_dom.js")


async def test_openapi_json_is_served_without_a_token_as_committed(client: TestClient) -> None:
    answer = await client.get("/openapi.json")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    assert await answer.read() == COMMITTED.read_bytes()


async def test_openapi_json_honours_if_none_match(client: TestClient) -> None:
    first = await client.get("/openapi.json")
    again = await client.get("/openapi.json", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304


async def test_docs_is_a_page_that_renders_the_document_beside_it(client: TestClient) -> None:
    answer = await client.get("/docs")
    assert answer.status == 200
    assert answer.content_type == "text/html"
    page = await answer.text()
    # Relative, so the page works behind a proxy that serves the API under a prefix.
    assert 'fetch("openapi.json")' in page
    assert '<a href="openapi.json">' in page


async def test_docs_loads_nothing_from_another_host(client: TestClient) -> None:
    page = await (await client.get("/docs")).text()
    assert "<script src" not in page
    assert "<link" not in page
    assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.IGNORECASE) == []
    assert "@import" not in page
    assert "url(" not in page


def test_every_file_the_package_serves_is_in_its_package_data() -> None:
    """An installed wheel carries only what package-data names: /docs must not 404 there."""
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["projector"]
    shipped = [
        path.relative_to(REPO / "projector").as_posix()
        for path in (REPO / "projector").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    ]
    assert "apidocs.html" in shipped
    unlisted = [name for name in shipped if not any(fnmatch(name, g) for g in package_data)]
    assert unlisted == []


@pytest.mark.skipif(NODE is None, reason="no node to run the page's script: apt-get install nodejs")
async def test_the_docs_script_renders_every_operation_and_schema(
    client: TestClient, tmp_path: Path
) -> None:
    """The page's own script, run by Node.js on a minimal DOM, fetching from the server."""
    page = await (await client.get("/docs")).text()
    document = await (await client.get("/openapi.json")).json()
    inline = re.search(r"<script>(.*)</script>", page, re.DOTALL)
    assert inline is not None
    runner = tmp_path / "docs.js"
    base = f"const BASE_URL = {json.dumps(str(client.make_url('/docs')))};\n"
    runner.write_text(base + DOM.read_text() + inline.group(1), encoding="utf-8")
    assert NODE is not None
    node = await asyncio.create_subprocess_exec(
        NODE, str(runner), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, stderr.decode()
    shown = json.loads(stdout)
    assert shown["problem"] == ""
    assert shown["rendered"] is True
    assert shown["fetched"] == ["openapi.json"]
    operations = [
        f"{method.upper()} {path}"
        for path, methods in document["paths"].items()
        for method in methods
    ]
    assert sorted(shown["index"]) == sorted(operations)
    assert shown["index"][0] == "POST /webhooks/refold"  # the tags' order: the receiver first
    assert shown["schemas"] == [f"schema-{name}" for name in document["components"]["schemas"]]
    for words in ("x-cobalt-signature header", "Authorization: Bearer <token>", "304"):
        assert words in shown["routes"]
