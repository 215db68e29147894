"""HTTP method semantics the routers do not give by themselves: ``405`` with a complete
``Allow`` and ``HEAD`` without producing a body.

* **405** (RFC 9110 15.5.6): the ``Allow`` header must list *every* method the target
  resource supports. FastAPI answers with the methods of the first route whose path matches,
  so ``DELETE /dicom-web/studies`` said ``Allow: GET, HEAD`` although STOW-RS answers
  ``POST`` there. :func:`install` registers a handler that, for a 405, lists every method
  some route accepts for that path (``Allow: GET, HEAD, POST``), in a fixed order.
* **HEAD** (RFC 9110 9.3.2): the routes registered with :func:`get_and_head` (QIDO-RS,
  WADO-RS, WADO-URI) answer the same status and headers as GET. For a streamed body (a study retrieved as
  ``multipart/related``), :class:`HeadWithoutBody` stops the stream after its first chunk
  instead of letting the server read, transcode and discard the whole study.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send



def get_and_head(router: APIRouter, path: str) -> Callable[[Endpoint], Endpoint]:
    """Register a read-only resource: ``GET`` (in the OpenAPI schema) and ``HEAD`` (the same
    endpoint, left out of the schema: one operation, one operation id per resource)."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(path, endpoint, methods=["GET"])
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
        return endpoint

    return register

Endpoint = Callable[..., Any]
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method (of the usual ones) some route of ``app`` fully matches for the scope's
    path: each is tried through the routes' own ``matches``, so included routers, path
    converters and mounts answer for themselves."""
    allowed = []
    for method in _ORDER:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


async def _http_exception(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request.scope)
        # A route matching every method (a mount) would claim the refused one: keep the
        # router's own answer then.
        if allowed and request.method not in allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


class _HeadSent(Exception):
    """The status line and headers of a HEAD response have gone out: stop the body."""


class HeadWithoutBody:
    """ASGI middleware: a HEAD response's body is cut at its first chunk (its headers are
    those of GET; the server sends no body to a HEAD anyway)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_headers_only(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                await send(message)
            elif message["type"] == "http.response.body":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                if message.get("more_body", False):
                    raise _HeadSent
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_headers_only)
        except _HeadSent:
            pass


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_middleware(HeadWithoutBody)
