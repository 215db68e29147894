"""WADO-RS over evicted instances: fetch them back from the PACS before answering
(:mod:`gateway.imaging.restore`), or answer a clear error, audited, and nothing else.

* The PACS unreachable (or the C-MOVE failing): **503** with ``Retry-After``
  (``pacs_restore_retry_after`` seconds);
* the PACS answered without the recorded instances (missing, or another object under the
  same SOP Instance UID): **502**.

The C-MOVE itself is audited once (``pacs_restore``, allowed or failed, by the principal whose
request started it); each request answered with an error is audited too (its action,
``failed``, the reason).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import HTTPException, Request

from dicomweb.deps import Granted
from dicomweb.urls import client_address
from gateway.access.audit import AccessRecord, record_access
from gateway.imaging.restore import RestoreFailed
from gateway.runtime import Runtime

FAILED = "failed"


def ensure_local(request: Request, runtime: Runtime, access: Granted, action: str,
                 study_uid: str, sop_instance_uids: Iterable[str] | None) -> None:
    """Raise the HTTP error when the files of these instances (``None``: of the whole study)
    cannot all be read."""
    restorer = runtime.restorer
    if restorer is None:
        return
    sops = None if sop_instance_uids is None else list(dict.fromkeys(sop_instance_uids))
    client = client_address(request)

    def audit(outcome: str, reason: str) -> None:
        record_access(runtime.index, AccessRecord(
            principal=access.principal, action="pacs_restore", outcome=outcome, reason=reason,
            study_uid=study_uid, kos_uid=access.decision.kos_uid or "", client_address=client))

    try:
        restorer.ensure_local(study_uid, sops, audit)
    except RestoreFailed as exc:
        record_access(runtime.index, AccessRecord(
            principal=access.principal, action=action, outcome=FAILED,
            reason=exc.message[:255], study_uid=study_uid,
            kos_uid=access.decision.kos_uid or "", client_address=client))
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise HTTPException(exc.status, exc.message, headers=headers) from None
