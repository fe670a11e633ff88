"""HTTP plumbing shared by the receiver and the query API: JSON answers and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from projector.answers import Answer, ErrorAnswer, ErrorDetail

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def header_text(value: str) -> str:
    """A header value as UTF-8 text, a byte that is not UTF-8 written as `\\xff`."""
    # aiohttp hands such a byte over as a lone surrogate, which no JSON answer can carry.
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate aiohttp never makes: keep it, as its UTF-8 bytes
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def json_answer(answer: Answer, status: int = 200) -> web.Response:
    """An answer model as a JSON response."""
    return web.Response(
        body=answer.model_dump_json().encode(), status=status, content_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The one error shape: {"error": {"code", "message"}}."""
    response = json_answer(ErrorAnswer(error=ErrorDetail(code=code, message=message)), status)
    response.headers.update(headers or {})
    return response


class ApiError(Exception):
    """Raised by a handler to answer with an error; the middleware renders it.

    `context` is for the operator's log line about the error only; it is never sent.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        context: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.context = dict(context or {})

    def response(self) -> web.Response:
        """This error as a JSON response."""
        return error_response(self.status, self.code, self.message, self.headers)
