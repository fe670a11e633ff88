"""`GET /ui`: the operator page, three files shipped in the package; its data comes from /v1."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from aiohttp import web

from projector.http import Handler

# Path -> (package file, content type). Shipped as package data: no CDN, no build step.
ASSETS = {
    "/ui": ("ui.html", "text/html"),
    "/ui/ui.js": ("ui.js", "text/javascript"),
    "/ui/ui.css": ("ui.css", "text/css"),
}
# Only this page's own files run, and it talks only to this service: an escaping mistake
# in the page could not load or send anything elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def asset(name: str) -> bytes:
    return files("projector").joinpath(name).read_bytes()


def _serve(name: str, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=asset(name),
            content_type=content_type,
            charset="utf-8",
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    return handler


def add_ui_routes(app: web.Application) -> None:
    """Register the page and its assets (no token: the page asks for one, and holds no data)."""
    for path, (name, content_type) in ASSETS.items():
        app.router.add_get(path, _serve(name, content_type))
