"""Storage Commitment's question to the index: which of these instances does the gateway keep
safely (PS3.4 Annex J, J.3.3: the Referenced SOP Sequence and Failed SOP Sequence of the
N-EVENT-REPORT)? The DIMSE exchange itself is :mod:`gateway.ingest.storage_commitment`'s.

The rule, one instance at a time (:func:`commitment_verdict`):

* not in the index: failed, 0x0112 *no such object instance* (never received, refused, or
  removed by an IOCM rejection note);
* indexed under another SOP Class than the request names: failed, 0x0119 *class/instance
  conflict*;
* indexed and its file in the store: **committed**. C-STORE success, STOW-RS and ``drimbox
  import`` all answer only after the file is fsync'ed and its row committed, so both being
  there is what "durably stored" means here;
* indexed, its file evicted on purpose (storage as a cache of the PACS, ``evicted_at``):
  committed, since eviction happens only with a PACS configured and only for settled
  studies, and WADO-RS fetches the file back from the PACS - except when the caller *is* that
  PACS (``pacs_copy_counts`` false): its own copy is no commitment of ours, so 0x0110;
* indexed but its file missing (not evicted: lost or deleted by hand, see ``drimbox store
  check``): failed, 0x0110 *processing failure*.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from gateway.index.models import Instance
from gateway.index.store import InstanceIndex

PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

#: Bound parameters per ``IN`` query (SQLite's default limit is far above; PostgreSQL none).
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of the request's Referenced SOP Sequence."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Failure:
    reference: Reference
    reason: int
    """Failure Reason (0008,1197): one of the module's constants."""


@dataclass(slots=True)
class Verdict:
    committed: list[Reference] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Row:
    sop_class_uid: str
    storage_key: str
    evicted: bool


def _rows(index: InstanceIndex, uids: list[str]) -> dict[str, _Row]:
    found: dict[str, _Row] = {}
    with index.read() as s:
        for i in range(0, len(uids), _CHUNK):
            q = select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.storage_key,
                       Instance.evicted_at.is_not(None)).where(
                Instance.sop_instance_uid.in_(uids[i:i + _CHUNK]))
            for uid, sop_class, key, evicted in s.execute(q):
                found[uid] = _Row(sop_class, key, bool(evicted))
    return found


def commitment_verdict(index: InstanceIndex, file_present: Callable[[str], bool],
                       references: Iterable[Reference], *, pacs_copy_counts: bool) -> Verdict:
    """Split ``references`` into committed and failed (module docstring), in request order,
    each instance once. ``file_present(storage_key)``: the file store's check."""
    refs = list(dict.fromkeys(references))
    rows = _rows(index, list(dict.fromkeys(r.sop_instance_uid for r in refs)))
    verdict = Verdict()
    for ref in refs:
        row = rows.get(ref.sop_instance_uid)
        if row is None:
            reason = NO_SUCH_OBJECT_INSTANCE
        elif row.sop_class_uid != ref.sop_class_uid:
            reason = CLASS_INSTANCE_CONFLICT
        elif row.evicted:
            reason = 0 if pacs_copy_counts else PROCESSING_FAILURE
        else:
            reason = 0 if file_present(row.storage_key) else PROCESSING_FAILURE
        if reason:
            verdict.failed.append(Failure(ref, reason))
        else:
            verdict.committed.append(ref)
    return verdict


__all__ = ["CLASS_INSTANCE_CONFLICT", "NO_SUCH_OBJECT_INSTANCE", "PROCESSING_FAILURE",
           "Failure", "Reference", "Verdict", "commitment_verdict"]
