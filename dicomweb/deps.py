"""Typed FastAPI dependencies shared by the DICOMweb routes.

``RuntimeDep`` gives a route the gateway's wiring (settings, index, file store, ingestor).
``ReaderDep`` is the access gate every route that reveals patient data must take: it resolves
the caller's :class:`~gateway.principal.Principal` (issue #6) through the resolvers registered
in ``app.state.principal_resolvers`` (viewer session, share link: ``dicomweb.session_cookies``).
With ``dicomweb_auth = none`` (accepted only while the HTTP side listens on a loopback
address, see ``Settings._derived``) a caller without one is anonymous; with ``psc`` it is 401.
"""

from __future__ import annotations

from typing import Annotated

from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request

from gateway.principal import ANONYMOUS, Principal
from gateway.runtime import Runtime


# Both dependencies are ``async def`` on purpose: they only read attributes, and FastAPI runs a
# plain ``def`` dependency in the thread pool, i.e. one thread hand-off per dependency per
# request on top of the route's own (measured on QIDO by PatientID, bench/RESULTS.md).
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class Reader:
    """Who is reading: the auth mode and the resolved :class:`Principal`."""

    def __init__(self, kind: str, principal: Principal = ANONYMOUS) -> None:
        self.kind = kind
        self.principal = principal


# --- Principal resolution (issue #6). Minimal version from the viewer-login branch: the
# bearer-token branch (and ``gateway.access``) replaces the policy below at merge. Order:
# ``Authorization: Bearer`` (not here yet) -> each of ``app.state.principal_resolvers``
# (viewer session cookie, share-link cookie) -> anonymous only when dicomweb_auth = none
# -> 401.

async def resolve_principal(request: Request) -> Principal | None:
    """The first principal a registered resolver proves, or None."""
    for resolve in getattr(request.app.state, "principal_resolvers", ()):
        principal = await resolve(request)
        if principal is not None:
            return principal
    return None


_STUDY_MATCH_KEYS = ("StudyInstanceUID", "0020000D")


def _limit_to_study(request: Request, principal: Principal) -> None:
    """A principal limited to one study (share link) reads that study only: a route naming
    another study is 403; a search across studies is narrowed to it."""
    study = request.path_params.get("study")
    if request.method not in ("GET", "HEAD"):
        raise HTTPException(403, "this session may only read its study")
    if study is not None:
        if study != principal.study_uid:
            raise HTTPException(403, "this session may only read its study")
        return
    asked = [v for k, v in request.query_params.multi_items() if k in _STUDY_MATCH_KEYS]
    if asked and asked != [principal.study_uid]:
        raise HTTPException(403, "this session may only read its study")
    if not asked:
        extra = urlencode({"StudyInstanceUID": principal.study_uid}).encode()
        query = request.scope.get("query_string", b"")
        request.scope["query_string"] = query + b"&" + extra if query else extra
        request.__dict__.pop("_query_params", None)


async def get_reader(request: Request, runtime: RuntimeDep) -> Reader:
    mode = runtime.settings.dicomweb_auth
    principal = await resolve_principal(request)
    if principal is None:
        if mode == "none":
            return Reader(mode)
        raise HTTPException(401, "authentication required",
                            headers={"WWW-Authenticate": 'Bearer realm="drimbox"'})
    if principal.study_uid is not None:
        _limit_to_study(request, principal)
    elif (principal.kind == "practitioner" and "viewer" not in principal.roles
          and mode != "none"):
        raise HTTPException(403, "no role allowing this centre's studies")
    return Reader(mode, principal)


ReaderDep = Annotated[Reader, Depends(get_reader)]
