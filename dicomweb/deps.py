"""Typed FastAPI dependencies shared by the DICOMweb routes: the wiring and the access gate.

``RuntimeDep`` gives a route the gateway's wiring (settings, index, file store, ingestor).

``PrincipalDep`` says who is asking (R10/R15), in this order:

1. ``Authorization: Bearer <token>``: a Pro Santé Connect access token (a consumer DRIMbox),
   checked by :class:`adapters.psc.bearer.BearerChecker` (JWT against PSC's JWKS, or RFC 7662
   introspection, ``psc_token_check``); a practitioner principal whose subject is the
   token's SubjectNameID and whose roles come from ``staff_roles``. A refused token is 401
   with ``WWW-Authenticate: Bearer error=...`` (``insufficient_user_authentication`` for a
   too low ``acr``, RFC 9470); PSC unreachable or not configured is 503.
2. Each async callable in ``request.app.state.principal_resolvers`` (the viewer's PSC login
   session, local staff, share links append theirs): the first ``Principal`` returned wins.
3. ``dicomweb_auth = none`` (loopback development only): :data:`~gateway.access.principal.ANONYMOUS`.
4. Otherwise 401 with ``WWW-Authenticate: Bearer realm="DRIMbox"``.

The access gates (``QidoAccess``, ``WadoAccess``, ``WadoUriAccess``, ``MetadataAccess``,
``RenderedAccess``, ``StowAccess``, ``AdminAccess``) then ask the policy
(:func:`gateway.access.policy.decide`) with the request's path UIDs (WADO-URI: its
``studyUID``, ``seriesUID``, ``objectUID`` query parameters) and its ``KOS-SOPInstanceUID``
header, record the decision, allowed or denied, in the audit trail (:mod:`gateway.access.audit`)
before the answer leaves, and either raise the denial (403, or 404 when the policy hides the
resource's existence) or hand the route a :class:`Granted` whose ``visible`` scope the route
applies to what it sends.
Tokens are never logged nor stored; the audit keeps the SubjectNameID.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from adapters.asgi_tls import client_certificate_name
from adapters.psc.bearer import BearerChecker, BearerConfig
from adapters.psc.client_auth import PscClientAuth
from adapters.psc.tokens import TokenRejected
from dicomweb.urls import client_address
from gateway.access.audit import (
    ALLOWED,
    DENIED,
    AccessRecord,
    AuditTicket,
    record_access,
    settle,
    submit_access,
)
from gateway.access.policy import KOS_HEADER, AccessRequest, Action, Decision, Visibility, decide
from gateway.access.principal import ANONYMOUS, Principal
from gateway.config import Settings
from gateway.index.manifests import manifest_scope
from gateway.ingest.uids import is_safe_uid
from gateway.runtime import Runtime

log = logging.getLogger("drimbox.access")

PrincipalResolver = Callable[[Request], Awaitable[Principal | None]]
REALM = "DRIMbox"


# Both dependencies are ``async def`` on purpose: they only read attributes, and FastAPI runs a
# plain ``def`` dependency in the thread pool, i.e. one thread hand-off per dependency per
# request on top of the route's own (measured on QIDO by PatientID, bench/RESULTS.md).
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# -- who is asking ---------------------------------------------------------------------------


def psc_client_auth(app: Any) -> PscClientAuth:
    """Our PSC client (R21): the one ``drimbox serve`` checked at start-up, else built from
    the settings on first use."""
    state = app.state
    client = getattr(state, "psc_client_auth", None)
    if client is None:
        runtime = state.runtime
        client = getattr(runtime, "psc_client", None) or PscClientAuth.from_settings(
            runtime.settings)
        state.psc_client_auth = client
    return client


def bearer_config(settings: Settings, client_auth: PscClientAuth | None = None) -> BearerConfig:
    return BearerConfig(
        issuer=settings.psc_issuer, discovery_path=settings.psc_discovery_path,
        client_id=settings.psc_client_id, mode=settings.psc_token_check,
        client_auth=client_auth, audiences=tuple(settings.psc_audiences),
        min_acr=settings.psc_min_acr,
        jwks_cache_seconds=settings.psc_jwks_cache_seconds,
        introspection_cache_seconds=settings.psc_introspection_cache_seconds,
    )


def bearer_checker(request: Request) -> BearerChecker:
    """The app's checker, made on first use (PSC may be down when the gateway starts)."""
    state = request.app.state
    checker = getattr(state, "bearer_checker", None)
    if checker is None:
        checker = state.bearer_checker = BearerChecker(
            bearer_config(state.runtime.settings, psc_client_auth(request.app)))
    return checker


def roles_of(settings: Settings, subject: str) -> frozenset[str]:
    return frozenset(settings.staff_roles.get(subject, ()))


class Unauthenticated(Exception):
    """No acceptable credentials; ``reason`` goes to the audit trail."""

    def __init__(self, reason: str, status: int, headers: dict[str, str], message: str,
                 via: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.headers = headers
        self.message = message
        self.via = via


def _bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _token_refusal(exc: TokenRejected, checker: BearerChecker) -> Unauthenticated:
    reason = f"token_{exc.reason}"
    via = checker.config.via
    if exc.reason in ("provider_unreachable", "not_configured"):
        message = ("Pro Santé Connect is not configured on this DRIMbox (DRIMBOX_PSC_ISSUER)"
                   if exc.reason == "not_configured" else "Pro Santé Connect cannot be reached")
        return Unauthenticated(reason, 503, {"Retry-After": "30"}, message, via)
    if exc.reason == "acr_too_low":
        header = (f'Bearer realm="{REALM}", error="insufficient_user_authentication", '
                  f'error_description="authentication level too low", '
                  f'acr_values="{checker.config.min_acr}"')
    else:
        header = (f'Bearer realm="{REALM}", error="invalid_token", '
                  f'error_description="{exc.reason}"')
    return Unauthenticated(reason, 401, {"WWW-Authenticate": header},
                           f"bearer token refused: {exc.reason}", via)


def _check_consumer_certificate(request: Request, via: str) -> None:
    """R11/R12 on the Source's side: a consumer DRIMbox (a bearer token) must present a TLS
    client certificate whose subject DN is an operator DN of the ANS whitelist
    (``consumer_client_certificate = whitelisted``). 403 otherwise, the DN in the audit."""
    subject = client_certificate_name(request.scope)
    if not subject:
        raise Unauthenticated("no_client_certificate", 403, {},
                              "a consumer DRIMbox must present its TLS client certificate "
                              "(mutual TLS)", via)
    keeper = request.app.state.runtime.whitelist
    decision = keeper.is_trusted_certificate(subject) if keeper is not None else None
    if decision is None or not decision:
        why = ("not on the whitelist" if decision is not None and keeper.current is not None
               else "not checked: no verified whitelist")
        raise Unauthenticated(f"client_certificate_not_whitelisted: {subject}"[:255], 403, {},
                              f"the client certificate {subject} is {why}", via)


async def resolve_principal(request: Request) -> Principal:
    """Who is asking (see the module docstring); raises :class:`Unauthenticated`."""
    settings: Settings = request.app.state.runtime.settings
    token = _bearer_token(request)
    if token is not None:
        checker = bearer_checker(request)
        if checker.configured or settings.dicomweb_auth == "psc":
            try:
                identity = await run_in_threadpool(checker.check, token)
            except TokenRejected as exc:
                raise _token_refusal(exc, checker) from None
            subject = identity.subject_name_id
            if settings.consumer_client_certificate == "whitelisted":
                _check_consumer_certificate(request, checker.config.via)
            return Principal(kind="practitioner", subject=subject,
                             roles=roles_of(settings, subject), via=checker.config.via)
    for resolver in getattr(request.app.state, "principal_resolvers", ()):
        principal = await resolver(request)
        if principal is not None:
            return principal
    if settings.dicomweb_auth == "none":
        return ANONYMOUS
    raise Unauthenticated("no_credentials", 401, {"WWW-Authenticate": f'Bearer realm="{REALM}"'},
                          "authentication required: a Pro Santé Connect bearer token")


async def principal_or_none(request: Request) -> Principal | None:
    """The proven principal, or None when the caller proved nothing (no or refused
    credentials, or anonymous in ``none`` mode): for pages that send a browser to the login
    instead of answering 401 (the viewer) and routes that do their own checks (share admin)."""
    try:
        principal = await resolve_principal(request)
    except Unauthenticated:
        return None
    return None if principal.is_anonymous else principal


async def get_principal(request: Request) -> Principal:
    try:
        return await resolve_principal(request)
    except Unauthenticated as exc:
        raise HTTPException(exc.status, exc.message, headers=exc.headers) from None


PrincipalDep = Annotated[Principal, Depends(get_principal)]


# -- the access gate -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Granted:
    """An allowed request: who, and what the route may show. ``audit`` is the decision's
    audit row when the route itself must settle it before answering (the lean routes:
    ``guard(..., settle_in_route=True)``); None once it is committed."""

    principal: Principal
    decision: Decision
    audit: AuditTicket | None = None
    index: Any = None

    @property
    def visible(self) -> Visibility:
        return self.decision.visible

    def audited(self) -> None:
        """Block until the decision's audit row is committed (R15: before the answer
        leaves). Blocking: call it from the route's worker thread, last."""
        if self.audit is not None:
            settle(self.index, self.audit)


def _uid_or_empty(value: str | None) -> str:
    return value if value and is_safe_uid(value) else ""


def _access_record(principal: Principal, asked: AccessRequest, outcome: str, reason: str,
                   client: str, study_uid: str = "", kos_uid: str = "") -> AccessRecord:
    """The audit row of one decision; the patient's INS is the study's, looked up when the
    row is written."""
    study_uid = study_uid or _uid_or_empty(asked.study_uid)
    instance = _uid_or_empty(asked.instance_uid)
    return AccessRecord(
        principal=principal, action=asked.action, outcome=outcome, reason=reason,
        study_uid=study_uid, series_uid=_uid_or_empty(asked.series_uid),
        sop_instance_uids=(instance,) if instance else (),
        patient_ins_of_study=bool(study_uid),
        kos_uid=kos_uid or _uid_or_empty(asked.kos_uid), client_address=client,
    )


def _record(runtime: Runtime, principal: Principal, asked: AccessRequest, outcome: str,
            reason: str, client: str, study_uid: str = "", kos_uid: str = "") -> None:
    record_access(runtime.index, _access_record(principal, asked, outcome, reason, client,
                                                study_uid, kos_uid))


def _manifest(runtime: Runtime, kos_uid: str):  # noqa: ANN202
    with runtime.index.read() as s:
        return manifest_scope(s, kos_uid)


def _decided(principal: Principal, asked: AccessRequest, manifest, client: str
             ) -> tuple[Decision, AccessRecord]:
    decision = decide(principal, asked, manifest)
    study = _uid_or_empty(asked.study_uid)
    if not study and decision.visible.study_uids is not None and \
            len(decision.visible.study_uids) == 1:
        (study,) = decision.visible.study_uids
    record = _access_record(principal, asked, ALLOWED if decision.allowed else DENIED,
                            decision.reason, client, study, decision.kos_uid)
    if not decision.allowed:
        log.info("access denied: %s %s (%s, %s)", asked.action, study or "-", principal.kind,
                 decision.reason)
    return decision, record


URI_UIDS = ("studyUID", "seriesUID", "objectUID")
"""WADO-URI names the instance in its query (PS3.18 9.4.1), not in its path."""


def _asked(request: Request, action: Action, uids_in_query: bool = False) -> AccessRequest:
    if uids_in_query:
        q = request.query_params
        study, series, instance = (q.get(name) for name in URI_UIDS)
    else:
        p = request.path_params
        study, series, instance = p.get("study"), p.get("series"), p.get("instance")
    return AccessRequest(action, study, series, instance,
                         request.headers.get(KOS_HEADER) or None)


def guard(action: Action, uids_in_query: bool = False, settle_in_route: bool = False
          ) -> Callable[[Request], Awaitable[Granted]]:
    """The dependency that lets ``action`` through, or not (see the module docstring);
    ``uids_in_query``: the UIDs are WADO-URI's query parameters (:data:`URI_UIDS`).

    The decision is made on the event loop (the policy is pure; only a ``KOS-SOPInstanceUID``
    header costs a manifest lookup in the thread pool) and its audit row is queued for the
    next shared commit (:class:`gateway.access.audit.AuditCommitter`). A denial waits for
    that commit before it answers. An allowed request waits for it here too, unless
    ``settle_in_route``: then the route settles it (``Granted.audited()``) in its own worker
    thread after its work, so that one thread hand-off serves both and the commit is
    shared with the requests answered meanwhile."""

    async def gate(request: Request) -> Granted:
        runtime: Runtime = request.app.state.runtime
        client = client_address(request)
        asked = _asked(request, action, uids_in_query)
        try:
            principal = await resolve_principal(request)
        except Unauthenticated as exc:
            anonymous = Principal(kind="anonymous", subject="", via=exc.via)
            await run_in_threadpool(_record, runtime, anonymous, asked, DENIED, exc.reason,
                                    client)
            log.info("access denied: %s (%s)", action, exc.reason)
            raise HTTPException(exc.status, exc.message, headers=exc.headers) from None
        manifest = None
        if asked.kos_uid and is_safe_uid(asked.kos_uid):
            manifest = await run_in_threadpool(_manifest, runtime, asked.kos_uid)
        decision, record = _decided(principal, asked, manifest, client)
        ticket = submit_access(runtime.index, record)
        if not decision.allowed or not settle_in_route:
            await run_in_threadpool(settle, runtime.index, ticket)
            ticket = None
        if not decision.allowed:
            if decision.not_found:
                level = "instance" if asked.instance_uid else "series"
                raise HTTPException(404, f"{level} not found")
            raise HTTPException(403, f"access denied: {decision.reason}")
        return Granted(principal, decision, ticket, runtime.index)

    return gate


QidoAccess = Annotated[Granted, Depends(guard("qido"))]
WadoAccess = Annotated[Granted, Depends(guard("wado"))]
QidoAccessLean = Annotated[Granted, Depends(guard("qido", settle_in_route=True))]
"""As ``QidoAccess``; the route must call ``Granted.audited()`` before it answers."""
WadoAccessLean = Annotated[Granted, Depends(guard("wado", settle_in_route=True))]
"""As ``WadoAccess``; the route must call ``Granted.audited()`` before it answers."""
WadoUriAccess = Annotated[Granted, Depends(guard("wado", uids_in_query=True))]
MetadataAccess = Annotated[Granted, Depends(guard("metadata"))]
RenderedAccess = Annotated[Granted, Depends(guard("rendered"))]
StowAccess = Annotated[Granted, Depends(guard("stow"))]
AdminAccess = Annotated[Granted, Depends(guard("admin"))]
