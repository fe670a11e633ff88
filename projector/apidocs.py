"""`GET /openapi.json` and `GET /docs`: the API described, for programs and for people."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

from aiohttp import web

from projector.openapi import openapi_document

# Shipped in the package (package data): the page works on a network with no way out.
DOCS_PAGE = "apidocs.html"


@cache
def openapi_text() -> str:
    """The document as served and as committed in schemas/openapi.json, byte for byte."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@cache
def docs_page() -> bytes:
    """The page that renders the document; it fetches openapi.json beside it."""
    return files("projector").joinpath(DOCS_PAGE).read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=openapi_text(), content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(body=docs_page(), content_type="text/html", charset="utf-8")


def add_document_routes(app: web.Application) -> None:
    """Register GET /openapi.json and GET /docs (no token: they describe, they hold no data)."""
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
