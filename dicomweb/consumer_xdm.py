"""The consumer's XDM import (R23): a KOS that came in an IHE XDM archive (by MSSanté, on a
disc, or when the DMP cannot be reached) is followed exactly like a KOS fetched from the DMP.

``POST /consumer/xdm`` (``multipart/form-data``, the file in field ``archive``), under the
practitioner's PSC session, with a current patient who consented (the same conditions as
``GET /consumer/studies/{uid}``):

1. the archive is checked (:func:`adapters.xdm.reader.check_archive`: zip, METADATA.XML,
   each document's size and SHA-1, the signature and its signer's CA); a refusal answers 422
   with the precise reason, audited ``consumer_xdm`` denied;
2. its KOS goes through :func:`dicomweb.consumer_studies.follow_kos`, the DMP path's own step
   (the KOS must be the current patient's; each RetrieveURL is checked against the ANS
   whitelist; the series are retrieved from the Source with the session's PSC token);
3. 303 to ``/consumer/studies/{KOS uniqueId}``: the retrieval page, its progress and viewer.

``POST /consumer/xdm/inbox/{KOS uniqueId}``: the same for an archive ``drimbox xdm import``
kept in the XDM inbox (:mod:`gateway.consumer.xdm_inbox`); the consumer page lists the current
patient's, and only those can be followed.

The form sits on the consumer page under the identity banner (:func:`dicomweb.consumer.xdm_form`). The session
cookie is SameSite=Lax: another site cannot make the browser post an archive with it.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from adapters.xdm.reader import XdmRefused, check_archive
from dicomweb.consumer import XDM_FIELD as FIELD
from dicomweb.consumer import XDM_INBOX_PATH, XDM_PATH
from dicomweb.consumer_banner import PAGE_HEADERS
from dicomweb.consumer_studies import (
    STUDIES_PATH,
    _audit,
    _page,
    _practitioner,
    _session,
    follow_kos,
    retriever,
)
from dicomweb.session_cookies import sessions
from dicomweb.urls import request_public_url
from gateway.access.audit import ALLOWED, DENIED
from gateway.access.sessions import digest
from gateway.consumer.cache import FAILED
from gateway.consumer.contexts import ContextStore
from gateway.consumer.retrieve import session_retrieval
from gateway.consumer.xdm_inbox import XdmInbox
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

ACTION_XDM = "consumer_xdm"


async def _archive_bytes(request: Request, limit: int) -> bytes | None:
    """The uploaded archive, or None when there is none or it is too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        return None
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get(FIELD)
        if upload is None or isinstance(upload, str):
            return None
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    return data if 0 < len(data) <= limit else None


def _who(request: Request):  # noqa: ANN202 - (raw, principal, patient, early response)
    """The practitioner's session and the current patient who consented (the conditions of
    ``GET /consumer/studies/{uid}``), or the page that says what is missing."""
    raw, info, early = _session(request)
    if early is not None:
        return raw, None, None, early
    assert info is not None
    principal = _practitioner(info)
    store: ContextStore = request.app.state.consumer_contexts
    current = store.current(raw)
    if current is None:
        _audit(request, principal, ACTION_XDM, DENIED, "no_patient_context")
        return raw, principal, None, _page(
            "Aucun patient", "<p>Aucun patient n'est sélectionné : ouvrez d'abord la page du "
            "patient (appel contextuel ou recherche).</p>", 409)
    patient = current.patient
    if not patient.consent:
        _audit(request, principal, ACTION_XDM, DENIED, "no_consent", ins=patient.ins)
        return raw, principal, patient, _page(
            "Consultation refusée", "<p>Le patient n'a pas consenti à la consultation "
            "(InformationEtConsentement = false).</p>", 403)
    return raw, principal, patient, None


async def _follow(request: Request, raw: str, principal, patient,  # noqa: ANN001
                  data: bytes, origin: str) -> Response:
    """Check the archive, then follow its KOS like the DMP's; 303 to the retrieval page."""
    settings = request.app.state.runtime.settings
    try:
        package = await run_in_threadpool(check_archive, data, settings)
    except XdmRefused as exc:
        _audit(request, principal, ACTION_XDM, DENIED, f"refused: {exc}"[:500], ins=patient.ins)
        return _page("Archive refusée", f"<p id=error>Archive XDM refusée : "
                     f"{html.escape(str(exc))}</p>", 422)
    kos_uid = package.kos.entry.unique_id
    _audit(request, principal, ACTION_XDM, ALLOWED,
           origin + (f"signed by {package.signer}" if package.signer
                     else "; ".join(package.notes)),
           ins=patient.ins, kos=kos_uid)
    base = request_public_url(request)
    key = digest(raw)
    index = request.app.state.runtime.index
    row = session_retrieval(index, key, kos_uid=kos_uid)
    if row is None or row.state == FAILED:
        token = sessions(request).access_token(raw)
        if not token:
            _audit(request, principal, "consumer_kos", DENIED, "no_psc_access_token",
                   ins=patient.ins, kos=kos_uid)
            return _page("Reconnexion nécessaire", "<p>La session ne détient pas de jeton Pro "
                         "Santé Connect utilisable auprès des DRIMbox sources : "
                         "déconnectez-vous puis reconnectez-vous.</p>", 401)
        _, refusal = await run_in_threadpool(follow_kos, request, key, principal, patient,
                                             kos_uid, package.kos.data, token, "xdm: ")
        if refusal is not None:
            return refusal
    return RedirectResponse(f"{base}{STUDIES_PATH}/{kos_uid}", 303, headers=PAGE_HEADERS)


@router.post(XDM_PATH, include_in_schema=False)
async def import_xdm(request: Request) -> Response:
    """An uploaded archive."""
    raw, principal, patient, early = _who(request)
    if early is not None:
        return early
    settings = request.app.state.runtime.settings
    data = await _archive_bytes(request, settings.xdm_max_upload_bytes)
    if data is None:
        _audit(request, principal, ACTION_XDM, DENIED, "no_archive_or_too_large",
               ins=patient.ins)
        return _page("Archive absente", "<p id=error>Aucune archive reçue, ou plus grande que "
                     f"{settings.xdm_max_upload_bytes} octets.</p>", 400)
    return await _follow(request, raw, principal, patient, data, "upload: ")


@router.post(XDM_INBOX_PATH + "/{kos_uid}", include_in_schema=False)
async def follow_inbox(kos_uid: str, request: Request) -> Response:
    """An archive of the XDM inbox (``drimbox xdm import`` on this consumer), of the current
    patient only; checked again before it is followed."""
    raw, principal, patient, early = _who(request)
    if early is not None:
        return early
    inbox = XdmInbox(request.app.state.runtime.settings.data_dir)
    found = inbox.get(kos_uid) if is_safe_uid(kos_uid) else None
    if found is None or found[0].patient_ins != patient.ins:
        _audit(request, principal, ACTION_XDM, DENIED, "inbox_archive_not_found",
               ins=patient.ins, kos=kos_uid if is_safe_uid(kos_uid) else "")
        return _page("Archive introuvable", "<p id=error>Cette archive n'est pas dans la boîte "
                     "XDM de ce patient.</p>", 404)
    return await _follow(request, raw, principal, patient, found[1], "inbox: ")


def install(app: FastAPI) -> None:
    app.include_router(router, tags=["consumer"])



