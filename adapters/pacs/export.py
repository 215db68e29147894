"""The three ways a retrieved study goes into the centre's PACS (R17; the domain is
:mod:`gateway.consumer.export`, which calls :class:`~gateway.consumer.export.Destination`):

* :class:`CStoreDestination`: a C-STORE SCU (pynetdicom) to the PACS's AE title, host and port.
  Each SOP class is proposed with the transfer syntax each instance is stored in (so nothing
  is decompressed or transcoded) and, in a context of its own, with Explicit and Implicit VR
  Little Endian. An instance goes on the context of its stored syntax when the PACS accepted
  it; a native (uncompressed) one falls back to the little endian context, re-encoded without
  touching its pixel values; a compressed one whose syntax the PACS refused fails, named (it
  would have to be decompressed, which an export never does). Each C-STORE's status is read:
  0x0000 and the warnings 0xB000/0xB006/0xB007 are stored, anything else is a failure with its
  status and error comment. What the PACS already holds is asked by C-FIND (IMAGE level, each
  series); a PACS without query/retrieve just gets everything again, which it takes harmlessly.
* :class:`StowDestination`: STOW-RS (PS3.18 10.5) to a DICOMweb base URL with httpx, in
  ``multipart/related; type="application/dicom"`` batches; the per-instance outcome is read
  from the response's Referenced SOP Sequence and Failed SOP Sequence (Failure Reason). What
  the PACS holds is asked by QIDO-RS ``/studies/{uid}/instances``.
* :class:`OrthancDestination`: an Orthanc PACS through its REST API, with ``pyorthanc``:
  ``POST /instances`` per instance (``Success`` / ``AlreadyStored``), ``/tools/find`` for what
  it holds.

A destination that cannot be reached raises
:class:`~gateway.consumer.export.DestinationUnavailable`; the job then reports the instances it
did not send.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from io import BytesIO

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from adapters.dicom_transport import RequestingAE
from adapters.pacs.reactor import reactor_paused
from gateway.config import Settings
from gateway.consumer.export import (
    FAILED,
    PRESENT,
    SENT,
    CachedInstance,
    DestinationUnavailable,
    ExportError,
    InstanceOutcome,
    Outgoing,
)

log = logging.getLogger(__name__)

_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
           ExplicitVRBigEndian}
_FALLBACK = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_WARNINGS = {0xB000, 0xB006, 0xB007}
_MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255


def _reencode(item: Outgoing, target: str) -> bytes:
    """A native dataset in another little endian syntax; pixel values unchanged."""
    ds = dcmread(BytesIO(item.part10()), force=True)
    fp = DicomBytesIO()
    ts = UID(target)
    fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
    write_dataset(fp, ds)
    return fp.getvalue()


class CStoreDestination:
    name = "cstore"

    def __init__(self, *, our_ae_title: str, ae_title: str, host: str, port: int,
                 timeout: float = 60.0) -> None:
        self.our_ae_title = our_ae_title
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.timeout = timeout
        self._message_id = 0

    def _ae(self) -> AE:
        ae = RequestingAE(ae_title=self.our_ae_title)  # waits on its socket, never polls
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def present(self, instances: Sequence[CachedInstance]) -> set[str] | None:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            if assoc.is_rejected or assoc.is_aborted:
                return None  # no query/retrieve here, or not for us: send everything
            raise DestinationUnavailable(f"no association with {self.ae_title} at "
                                         f"{self.host}:{self.port}")
        found: set[str] = set()
        try:
            for study, series in sorted({(i.study_uid, i.series_uid) for i in instances}):
                q = Dataset()
                q.QueryRetrieveLevel = "IMAGE"
                q.StudyInstanceUID = study
                q.SeriesInstanceUID = series
                q.SOPInstanceUID = ""
                with reactor_paused(assoc):  # pynetdicom's own pause has a race
                    for status, match in assoc.send_c_find(
                            q, StudyRootQueryRetrieveInformationModelFind):
                        if not status:
                            return None
                        if int(status.Status) in (0xFF00, 0xFF01) and match is not None:
                            found.add(str(match.get("SOPInstanceUID", "") or ""))
                        elif int(status.Status) != 0x0000:
                            log.info("C-FIND for export answered 0x%04X: sending everything",
                                     int(status.Status))
                            return None
        finally:
            if assoc.is_established:
                assoc.release()
        return found & {i.sop_instance_uid for i in instances}

    def send(self, instances: Sequence[CachedInstance],
             load: Callable[[CachedInstance], Outgoing]) -> Iterator[InstanceOutcome]:
        if not instances:
            return
        ae = self._ae()
        pairs = sorted({(i.sop_class_uid, i.transfer_syntax) for i in instances})
        classes = sorted({i.sop_class_uid for i in instances})
        contexts = [(sop, [ts]) for sop, ts in pairs]
        contexts += [(sop, list(_FALLBACK)) for sop in classes]
        if len(contexts) > _MAX_CONTEXTS:
            raise DestinationUnavailable(
                f"{len(contexts)} presentation contexts needed, at most {_MAX_CONTEXTS} in one "
                "association")
        for sop, tss in contexts:
            ae.add_requested_context(sop, tss)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise DestinationUnavailable(f"no association with {self.ae_title} at "
                                         f"{self.host}:{self.port}")
        try:
            accepted: dict[tuple[str, str], int] = {}
            for cx in assoc.accepted_contexts:
                accepted.setdefault((str(cx.abstract_syntax), str(cx.transfer_syntax[0])),
                                    int(cx.context_id))
            # The reactor held for the whole export: every response is ours to take, and a
            # hold per instance waited up to 1 ms each time for the reactor's next pass.
            with reactor_paused(assoc):
                for instance in instances:
                    yield self._store_one(assoc, accepted, instance, load)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store_one(self, assoc: Association, accepted: dict[tuple[str, str], int],
                   instance: CachedInstance,
                   load: Callable[[CachedInstance], Outgoing]) -> InstanceOutcome:
        def failed(reason: str) -> InstanceOutcome:
            return InstanceOutcome(instance.sop_instance_uid, instance.sop_class_uid, FAILED,
                                   reason)

        sop, ts = instance.sop_class_uid, instance.transfer_syntax
        context = accepted.get((sop, ts))
        target = ts
        if context is None and ts in _NATIVE:
            for candidate in _FALLBACK:
                if (sop, candidate) in accepted:
                    context, target = accepted[(sop, candidate)], candidate
                    break
        if context is None:
            if not any(s == sop for s, _ in accepted):
                return failed(f"the PACS does not accept SOP class {sop}")
            return failed(f"the PACS does not accept transfer syntax {ts} for SOP class {sop}, "
                          "and an export never decompresses pixel data")
        try:
            item = load(instance)
            data = item.dataset if target == ts else _reencode(item, target)
        except (OSError, ValueError) as exc:
            return failed(f"unreadable: {exc}")
        self._message_id = self._message_id % 65535 + 1
        req = C_STORE()
        req.MessageID = self._message_id
        req.Priority = 2
        req.AffectedSOPClassUID = sop
        req.AffectedSOPInstanceUID = instance.sop_instance_uid
        req.DataSet = io.BytesIO(data)
        # Sent ourselves, as pynetdicom's send_c_store would, but the dataset as it is (never
        # re-encoded), the reactor held (send).
        assoc.dimse.send_msg(req, context)
        _, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None or not isinstance(rsp, C_STORE) or rsp.Status is None:
            outcome = failed("no C-STORE response (association lost or DIMSE timeout): "
                             "not known to be stored")
            if not assoc.is_established:
                raise _Stopped(outcome, "the association with the PACS was lost")
            assoc.abort()
            raise _Stopped(outcome, "the PACS did not answer a C-STORE")
        status = int(rsp.Status)
        comment = str(getattr(rsp, "ErrorComment", "") or "")
        if status == 0x0000:
            return InstanceOutcome(instance.sop_instance_uid, sop, SENT,
                                   "" if target == ts else f"sent as {UID(target).name}")
        if status in _WARNINGS:
            return InstanceOutcome(instance.sop_instance_uid, sop, SENT,
                                   f"warning 0x{status:04X}" + (f": {comment}" if comment else ""))
        return failed(f"C-STORE status 0x{status:04X}" + (f": {comment}" if comment else ""))


class _Stopped(DestinationUnavailable):
    """The destination stopped while one instance was under way: its outcome, then stop."""

    def __init__(self, outcome: InstanceOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


def _with_last(gen: Iterator[InstanceOutcome]) -> Iterator[InstanceOutcome]:
    """Yield the outcome a :class:`_Stopped` carries before re-raising it."""
    try:
        yield from gen
    except _Stopped as exc:
        yield exc.outcome
        raise DestinationUnavailable(str(exc)) from None


# --- STOW-RS ---

_REFERENCED = "00081199"
_FAILED_SOP = "00081198"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"


def _items(body: dict, tag: str) -> list[dict]:
    return list((body.get(tag) or {}).get("Value") or [])


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


class StowDestination:
    name = "stow"

    def __init__(self, base_url: str, *, auth: tuple[str, str] | None = None,
                 timeout: float = 60.0, batch_bytes: int = 32 * 1024 * 1024,
                 batch_count: int = 50) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(auth=auth, timeout=timeout)
        self.batch_bytes = batch_bytes
        self.batch_count = batch_count

    def present(self, instances: Sequence[CachedInstance]) -> set[str] | None:
        found: set[str] = set()
        for study in sorted({i.study_uid for i in instances}):
            try:
                r = self.client.get(f"{self.base_url}/studies/{study}/instances",
                                    params={"includefield": "00080018"},
                                    headers={"Accept": "application/dicom+json"})
            except httpx.HTTPError as exc:
                raise DestinationUnavailable(f"QIDO-RS at {self.base_url}: {exc}") from None
            if r.status_code == 200:
                found |= {_value(i, "00080018") for i in r.json()}
            elif r.status_code not in (204, 404):
                log.info("QIDO-RS for export answered %s: sending everything", r.status_code)
                return None
        return found & {i.sop_instance_uid for i in instances}

    def send(self, instances: Sequence[CachedInstance],
             load: Callable[[CachedInstance], Outgoing]) -> Iterator[InstanceOutcome]:
        batch: list[tuple[CachedInstance, bytes]] = []
        size = 0
        for instance in instances:
            try:
                part10 = load(instance).part10()
            except (OSError, ValueError) as exc:
                yield InstanceOutcome(instance.sop_instance_uid, instance.sop_class_uid, FAILED,
                                      f"unreadable: {exc}")
                continue
            batch.append((instance, part10))
            size += len(part10)
            if len(batch) >= self.batch_count or size >= self.batch_bytes:
                yield from self._post(batch)
                batch, size = [], 0
        if batch:
            yield from self._post(batch)

    def _post(self, batch: list[tuple[CachedInstance, bytes]]) -> Iterator[InstanceOutcome]:
        boundary = "drimbox-" + secrets.token_hex(16)
        dash = b"--" + boundary.encode()
        body = b"".join(dash + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
                        for _, data in batch) + dash + b"--\r\n"
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                   f"boundary={boundary}",
                   "Accept": "application/dicom+json"}
        try:
            r = self.client.post(f"{self.base_url}/studies", content=body, headers=headers)
        except httpx.HTTPError as exc:
            for instance, _ in batch:
                yield InstanceOutcome(instance.sop_instance_uid, instance.sop_class_uid, FAILED,
                                      f"no STOW-RS answer ({type(exc).__name__}): not known "
                                      "to be stored")
            raise DestinationUnavailable(f"STOW-RS at {self.base_url}: {exc}") from None
        try:
            answer = r.json() if r.content else {}
        except ValueError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        failed = {_value(i, _SOP_INSTANCE): _value(i, _FAILURE_REASON)
                  for i in _items(answer, _FAILED_SOP)}
        stored = {_value(i, _SOP_INSTANCE): _value(i, _WARNING_REASON)
                  for i in _items(answer, _REFERENCED)}
        for instance, _ in batch:
            uid = instance.sop_instance_uid
            if uid in failed:
                reason = failed[uid]
                code = f"0x{int(reason):04X}" if reason.isdigit() else reason or "?"
                yield InstanceOutcome(uid, instance.sop_class_uid, FAILED,
                                      f"STOW-RS HTTP {r.status_code}, failure reason {code}")
            elif uid in stored and r.status_code in (200, 202):
                warning = stored[uid]
                yield InstanceOutcome(uid, instance.sop_class_uid, SENT,
                                      f"warning 0x{int(warning):04X}" if warning.isdigit() else "")
            elif r.status_code == 200 and not failed and not stored:
                yield InstanceOutcome(uid, instance.sop_class_uid, SENT)  # a terse server
            else:
                yield InstanceOutcome(uid, instance.sop_class_uid, FAILED,
                                      f"STOW-RS HTTP {r.status_code}: not in the response's "
                                      "stored instances")

    def close(self) -> None:
        self.client.close()


# --- Orthanc's REST API (pyorthanc) ---


class OrthancDestination:
    name = "orthanc"

    def __init__(self, url: str, *, auth: tuple[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        from pyorthanc import Orthanc

        self.url = url.rstrip("/")
        username, password = auth or (None, None)
        self.client = Orthanc(self.url, username, password, return_raw_response=True,
                              timeout=timeout)

    def present(self, instances: Sequence[CachedInstance]) -> set[str] | None:
        found: set[str] = set()
        for study in sorted({i.study_uid for i in instances}):
            try:
                r = self.client.post_tools_find({"Level": "Instance", "Expand": True,
                                                 "Query": {"StudyInstanceUID": study}})
            except httpx.HTTPError as exc:
                raise DestinationUnavailable(f"Orthanc at {self.url}: {exc}") from None
            if r.status_code != 200:
                log.info("Orthanc /tools/find answered %s: sending everything", r.status_code)
                return None
            found |= {str((i.get("MainDicomTags") or {}).get("SOPInstanceUID", ""))
                      for i in r.json()}
        return found & {i.sop_instance_uid for i in instances}

    def send(self, instances: Sequence[CachedInstance],
             load: Callable[[CachedInstance], Outgoing]) -> Iterator[InstanceOutcome]:
        for instance in instances:
            uid, sop = instance.sop_instance_uid, instance.sop_class_uid
            try:
                data = load(instance).part10()
            except (OSError, ValueError) as exc:
                yield InstanceOutcome(uid, sop, FAILED, f"unreadable: {exc}")
                continue
            try:
                r = self.client.post_instances(data)
            except httpx.HTTPError as exc:
                yield InstanceOutcome(uid, sop, FAILED, f"no answer from Orthanc "
                                      f"({type(exc).__name__}): not known to be stored")
                raise DestinationUnavailable(f"Orthanc at {self.url}: {exc}") from None
            try:
                answer = r.json()
            except ValueError:
                answer = {}
            answer = answer if isinstance(answer, dict) else {}
            if r.status_code == 200 and answer.get("Status") == "Success":
                yield InstanceOutcome(uid, sop, SENT)
            elif r.status_code == 200 and answer.get("Status") == "AlreadyStored":
                yield InstanceOutcome(uid, sop, PRESENT, "Orthanc already had it")
            elif r.status_code == 200 and answer.get("Status") == "FilteredOut":
                yield InstanceOutcome(uid, sop, FAILED, "Orthanc refused it (FilteredOut: a "
                                      "filter of the PACS)")
            else:
                detail = str(answer.get("Details") or answer.get("Message") or
                             answer.get("Status") or "")[:200]
                yield InstanceOutcome(uid, sop, FAILED, f"Orthanc HTTP {r.status_code}"
                                      + (f": {detail}" if detail else ""))

    def close(self) -> None:
        self.client.close()


class _Guarded:
    """A destination whose ``send`` reports the instance under way when it stops."""

    def __init__(self, inner: CStoreDestination | StowDestination | OrthancDestination) -> None:
        self.inner = inner
        self.name = inner.name

    def present(self, instances: Sequence[CachedInstance]) -> set[str] | None:
        return self.inner.present(instances)

    def send(self, instances: Sequence[CachedInstance],
             load: Callable[[CachedInstance], Outgoing]) -> Iterator[InstanceOutcome]:
        return _with_last(self.inner.send(instances, load))

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def destination(settings: Settings, kind: str | None = None) -> _Guarded:
    """The destination ``kind`` (default: the ``export_destination`` setting), configured from
    the settings. Raise :class:`~gateway.consumer.export.ExportError` when it is not."""
    kind = kind or settings.export_destination
    auth = None
    if settings.export_username:
        password = settings.export_password.get_secret_value() if settings.export_password else ""
        auth = (settings.export_username, password)
    if kind == "cstore":
        ae_title, host, port = settings.effective_export_cstore
        if not (ae_title and host and port):
            raise ExportError("no C-STORE destination: set export_ae_title, export_host and "
                              "export_port (or pacs_ae_title, pacs_host and pacs_port)")
        return _Guarded(CStoreDestination(our_ae_title=settings.ae_title, ae_title=ae_title,
                                          host=host, port=port, timeout=settings.export_timeout))
    if kind == "stow":
        if not settings.export_stow_url:
            raise ExportError("no STOW-RS destination: set export_stow_url")
        return _Guarded(StowDestination(settings.export_stow_url, auth=auth,
                                        timeout=settings.export_timeout))
    if kind == "orthanc":
        if not settings.export_orthanc_url:
            raise ExportError("no Orthanc destination: set export_orthanc_url")
        return _Guarded(OrthancDestination(settings.export_orthanc_url, auth=auth,
                                           timeout=settings.export_timeout))
    raise ExportError("no export destination: set export_destination (cstore, stow or "
                      "orthanc)")
