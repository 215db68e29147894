"""The hot read path: the most frequent DICOMweb reads answered without FastAPI's routing and
dependency solving (the lean read path of docs/benchmarks.md).

A viewer opening a study and a consumer DRIMbox pulling one sends hundreds of QIDO-RS
searches, one-instance WADO-RS and one-frame requests; for each, Starlette's middleware
stack, the walk over every route's pattern and FastAPI's dependency solving cost about a
quarter of a millisecond of CPU (measured in bench/RESULTS.md, "The hot read path"), a tenth
of the whole answer. :class:`HotRoutes` answers these requests by calling **the same route
functions with the same dependencies** (the access gate that decides and queues the R15 audit
row, the runtime), in the same order FastAPI would, and hands their errors to the
application's own exception handlers; what the request may see (R10), what it is answered and
what the audit trail records are therefore those of the routed request. Only the way there is
shorter:

* only ``GET`` (``HEAD`` keeps :class:`dicomweb.http_methods.HeadWithoutBody`), only the paths
  of :data:`HOT_ENDPOINTS` under ``/dicom-web``, matched segment by segment as Starlette's
  ``{name}`` does (one non-empty segment each, already percent-decoded); anything else,
  a trailing slash or a ``root_path`` included, goes the routed way;
* the table is built from the modules' routers when the app is made
  (:meth:`HotRoutes.from_app`): a route function whose parameters are not path
  parameters, the ``Request`` or ``async`` dependencies of the request alone is refused
  there, not at the first request.

``tests/test_hot_path.py`` checks that the router chooses the same route function for every
hot path, and that answers and audit rows are the same either way.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.routing import APIRoute
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from dicomweb import qido, wado
from gateway.imaging.locations import DICOMWEB_PREFIX

HOT_ENDPOINTS: tuple[Callable[..., Awaitable[Response]], ...] = (
    qido.search_studies, qido.search_series, qido.search_instances,
    qido.search_study_series, qido.search_study_instances, qido.search_series_instances,
    wado.retrieve_instance, wado.retrieve_frames,
)
"""The route functions answered on the hot path: every QIDO-RS search, one instance, frames."""

_PATH = "path"
_REQUEST = "request"
_DEPENDENCY = "dependency"


@dataclass(frozen=True, slots=True)
class HotRoute:
    """One route: its path as segments (``None`` where a path parameter goes), the route
    function and how to fill each of its parameters."""

    segments: tuple[str | None, ...]
    names: tuple[str, ...]  # the path parameters, in path order
    endpoint: Callable[..., Awaitable[Response]]
    arguments: tuple[tuple[str, str, Any], ...]  # (parameter, kind, dependency)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params = {}
        names = iter(self.names)
        for part, segment in zip(parts, self.segments, strict=True):
            if segment is None:
                if not part:
                    return None
                params[next(names)] = part
            elif part != segment:
                return None
        return params


def _route_segments(path: str) -> tuple[tuple[str | None, ...], tuple[str, ...]]:
    segments: list[str | None] = []
    names = []
    for part in path.removeprefix(DICOMWEB_PREFIX).strip("/").split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if ":" in name:
                raise ValueError(f"{path}: only plain {{name}} parameters go on the hot path")
            segments.append(None)
            names.append(name)
        else:
            segments.append(part)
    return tuple(segments), tuple(names)


def _arguments(endpoint: Callable[..., Any], path_names: tuple[str, ...]
               ) -> tuple[tuple[str, str, Any], ...]:
    hints = typing.get_type_hints(endpoint, include_extras=True)
    arguments = []
    for name in inspect.signature(endpoint).parameters:
        hint = hints.get(name)
        if name in path_names and hint is str:
            arguments.append((name, _PATH, None))
        elif hint is Request:
            arguments.append((name, _REQUEST, None))
        elif typing.get_origin(hint) is typing.Annotated and isinstance(
                hint.__metadata__[-1], Depends):
            dependency = hint.__metadata__[-1].dependency
            parameters = list(inspect.signature(dependency).parameters.values())
            if not (inspect.iscoroutinefunction(dependency) and len(parameters) == 1
                    and typing.get_type_hints(dependency).get(parameters[0].name) is Request):
                raise ValueError(f"{endpoint.__name__}: dependency {dependency!r} is not an "
                                 "async function of the request alone")
            arguments.append((name, _DEPENDENCY, dependency))
        else:
            raise ValueError(f"{endpoint.__name__}: parameter {name!r} cannot be filled on "
                             "the hot path")
    if not inspect.iscoroutinefunction(endpoint):
        raise ValueError(f"{endpoint.__name__} is not async")
    return tuple(arguments)


class HotRoutes:
    """The hot routes of one application (see the module docstring)."""

    def __init__(self, app: FastAPI, routes: list[HotRoute]) -> None:
        self.app = app
        self.routes = routes
        self._prefix = DICOMWEB_PREFIX + "/"

    @classmethod
    def from_app(cls, app: FastAPI,
                 endpoints: tuple[Callable[..., Any], ...] = HOT_ENDPOINTS) -> HotRoutes:
        """The hot routes, taken from the routers of :mod:`dicomweb.qido` and
        :mod:`dicomweb.wado` as ``create_app`` includes them (under ``/dicom-web``)."""
        routes = []
        for router in (qido.router, wado.router):
            for route in router.routes:
                if isinstance(route, APIRoute) and route.endpoint in endpoints \
                        and "GET" in route.methods:
                    segments, names = _route_segments(route.path)
                    routes.append(HotRoute(segments, names, route.endpoint,
                                           _arguments(route.endpoint, names)))
        missing = set(endpoints) - {route.endpoint for route in routes}
        if missing:
            raise ValueError(f"no GET route for {sorted(e.__name__ for e in missing)}")
        return cls(app, routes)

    def find(self, scope: Scope) -> tuple[HotRoute, dict[str, str]] | None:
        """The hot route for this request and its path parameters, or None (routed way)."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(self._prefix):
            return None
        parts = path[len(self._prefix):].split("/")
        for route in self.routes:
            params = route.match(parts)
            if params is not None:
                return route, params
        return None

    async def answer(self, route: HotRoute, params: dict[str, str], scope: Scope,
                     receive: Receive, send: Send) -> None:
        scope["path_params"] = params
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            kwargs = {}
            for name, kind, dependency in route.arguments:
                if kind == _PATH:
                    kwargs[name] = params[name]
                elif kind == _REQUEST:
                    kwargs[name] = request
                else:
                    kwargs[name] = await dependency(request)
            response = await route.endpoint(**kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to the app's handlers, as routed
            response = await self._handled(request, exc, scope, receive, send)
        await response(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception, scope: Scope, receive: Receive,
                       send: Send) -> Response:
        """What Starlette's exception middlewares would answer: the app's handler for the
        exception's class, else 500 ``Internal Server Error`` and the exception re-raised
        for the server to log."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None and cls is not Exception:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        handler = handlers.get(500) or handlers.get(Exception)
        if handler is not None:
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        else:
            response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)
        raise exc


class GatewayApp(FastAPI):
    """The FastAPI application with :class:`HotRoutes` in front of its middleware stack."""

    hot_routes: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot_routes
        if hot is not None:
            found = hot.find(scope)
            if found is not None:
                scope["app"] = self
                await hot.answer(*found, scope, receive, send)
                return
        await super().__call__(scope, receive, send)
