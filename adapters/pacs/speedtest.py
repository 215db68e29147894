"""The PACS speed test (DB.SO.102, R20): how fast the centre's PACS gives a study back.

DB.SO.102 asks a DRIMbox Source to measure its PACS: the time to the first image and the
throughput of a C-MOVE of the ANS reference study (StudyInstanceUID
``1.2.250.1.213.4.5.2.1.199``, 1,300 JPEG-LS lossless CT images, ~200 MB), as ANS's own
``speedtest.py`` (``ansforge/DRIM-M_DATA``, "Mesure de performances DRIMBox_PACS") does, for
homologation and in operation. ``drimbox pacs speedtest`` runs it against the configured PACS
(``pacs_ae_title``, ``pacs_host``, ``pacs_port``):

* a C-STORE SCP of the test's own listens on ``--port`` with the AE title ``--ae-title``
  (by default ``STORESCP`` on 9999, as ANS's script: **the PACS must know that AE title, this
  host and that port** as a move destination). It accepts every storage SOP class in any
  transfer syntax the PACS proposes (so images arrive as the PACS keeps them), counts each
  instance and the bytes of its data set, notes the transfer syntaxes, and keeps nothing:
  the running gateway, its index and its storage are not touched;
* one Study Root C-MOVE at STUDY level (the SOP class the gateway's retrieve uses,
  :class:`adapters.pacs.query_retrieve.PacsClient`), asked with the gateway's own AE title
  (``ae_title``, which the PACS already takes requests from), names that AE title as the
  move destination.

Times are taken from just before the association to the PACS is requested: the first image is
the end of the first C-STORE received, the total the C-MOVE's final response. Throughput is
the data sets' bytes over the total time, in Mbit/s (10^6 bits), as ANS's script reports it,
and in instances per second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom._globals import ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from adapters.dicom_transport import RequestingAE, adopt, wait_for_messages
from adapters.pacs.reactor import reactor_paused

#: The ANS reference study of DB.SO.102 (DRIM-M_DATA).
REFERENCE_STUDY = "1.2.250.1.213.4.5.2.1.199"
DEFAULT_AE_TITLE = "STORESCP"
DEFAULT_PORT = 9999

_PENDING = (0xFF00, 0xFF01)


@dataclass
class SpeedTestResult:
    """What one C-MOVE of a study gave (times in seconds from the association request)."""

    study_uid: str
    pacs: str
    destination: str
    started_at: datetime
    association_s: float | None = None
    first_image_s: float | None = None
    total_s: float = 0.0
    instances: int = 0
    bytes: int = 0
    transfer_syntaxes: list[str] = field(default_factory=list)
    status: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """The C-MOVE ended in success and at least one image came."""
        return not self.error and self.status == 0x0000 and self.instances > 0

    @property
    def mbit_per_s(self) -> float:
        return self.bytes * 8 / 1e6 / self.total_s if self.total_s > 0 else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.total_s if self.total_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "study_uid": self.study_uid, "pacs": self.pacs, "destination": self.destination,
            "started_at": self.started_at.isoformat(), "association_s": self.association_s,
            "first_image_s": self.first_image_s, "total_s": self.total_s,
            "instances": self.instances, "bytes": self.bytes,
            "mbit_per_s": round(self.mbit_per_s, 3),
            "instances_per_s": round(self.instances_per_s, 3),
            "transfer_syntaxes": self.transfer_syntaxes,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "completed": self.completed, "failed": self.failed, "warning": self.warning,
            "ok": self.ok, "error": self.error,
        }


class _Counter:
    """The test's C-STORE SCP handler: counts, keeps nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.t0 = 0.0
        self.first: float | None = None
        self.uids: set[str] = set()
        self.bytes = 0
        self.syntaxes: set[str] = set()

    def on_store(self, event: evt.Event) -> int:
        request = event.request
        size = len(request.DataSet.getbuffer()) if request.DataSet is not None else 0
        with self.lock:
            self.bytes += size
            self.uids.add(str(request.AffectedSOPInstanceUID))
            self.syntaxes.add(str(event.context.transfer_syntax))
            if self.first is None:
                self.first = time.monotonic() - self.t0
        return 0x0000


def run_speedtest(*, pacs_ae_title: str, host: str, port: int, calling_ae_title: str,
                  study_uid: str = REFERENCE_STUDY,
                  ae_title: str = DEFAULT_AE_TITLE, listen_port: int = DEFAULT_PORT,
                  bind_address: str = "", max_pdu: int = 1_048_576, timeout: float = 30.0,
                  move_timeout: float = 300.0, reactor_wait: float = 0.005) -> SpeedTestResult:
    """C-MOVE ``study_uid`` from the PACS to this test's own C-STORE SCP (``ae_title`` on
    ``listen_port``) and measure it. The C-MOVE request comes from ``calling_ae_title`` (the
    gateway's own AE title, which the PACS already accepts requests from).

    Raises :class:`OSError` when ``listen_port`` cannot be listened on. A PACS that does not
    answer, or a C-MOVE that fails, is said in the result (``error``, ``status``).
    ``max_pdu`` and ``reactor_wait`` are the receiver's, as the gateway's own SCP has them."""
    counter = _Counter()
    receiver = AE(ae_title=ae_title)
    receiver.maximum_pdu_size = max_pdu
    receiver.acse_timeout = receiver.network_timeout = timeout
    receiver.dimse_timeout = move_timeout
    for context in AllStoragePresentationContexts:
        receiver.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    def waiting(event: evt.Event) -> None:
        # Before the association's threads start: they wait instead of polling, as the
        # gateway's own SCP does; the test measures the PACS, not pynetdicom's 1 ms sleeps.
        adopt(event.assoc)
        wait_for_messages(event.assoc, reactor_wait)

    server = receiver.start_server((bind_address, listen_port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, counter.on_store),
                                                 (evt.EVT_CONN_OPEN, waiting)])
    result = SpeedTestResult(study_uid=study_uid, pacs=f"{pacs_ae_title}@{host}:{port}",
                             destination=f"{ae_title}:{listen_port}",
                             started_at=datetime.now(UTC))
    try:
        _move(result, counter, pacs_ae_title, host, port, calling_ae_title, ae_title, timeout,
              move_timeout)
    finally:
        server.shutdown()
    result.instances = len(counter.uids)
    result.bytes = counter.bytes
    result.first_image_s = counter.first
    result.transfer_syntaxes = sorted(counter.syntaxes)
    if not result.error and result.status is not None and result.status != 0x0000:
        result.error = (f"the C-MOVE ended with status 0x{result.status:04X} "
                        f"({result.failed or 0} failed sub-operations): does the PACS know "
                        f"{ae_title} at this host, port {listen_port}?")
    elif not result.error and result.status == 0x0000 and not result.instances:
        result.error = "the C-MOVE succeeded but no image came: is the study on the PACS?"
    return result


def _move(result: SpeedTestResult, counter: _Counter, pacs_ae_title: str, host: str,
          port: int, calling_ae_title: str, ae_title: str, timeout: float,
          move_timeout: float) -> None:
    scu = RequestingAE(ae_title=calling_ae_title)
    scu.acse_timeout = scu.network_timeout = timeout
    scu.dimse_timeout = move_timeout
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = result.study_uid
    counter.t0 = t0 = time.monotonic()
    assoc = scu.associate(host, port, ae_title=pacs_ae_title)
    if not assoc.is_established:
        result.total_s = time.monotonic() - t0
        result.error = f"C-MOVE: no association with {pacs_ae_title} at {host}:{port}"
        return
    result.association_s = time.monotonic() - t0
    final = None
    try:
        with reactor_paused(assoc):  # pynetdicom's own pause has a race (adapters.pacs.reactor)
            for status, _ in assoc.send_c_move(query, ae_title,
                                               StudyRootQueryRetrieveInformationModelMove):
                if not status:
                    result.error = (f"C-MOVE: the PACS ended the association or did not "
                                    f"answer in time: does it take C-MOVE requests from "
                                    f"{calling_ae_title}?")
                    break
                final = status
                if int(status.Status) not in _PENDING:
                    break
    finally:
        result.total_s = time.monotonic() - t0
        assoc.release()
    if final is None:
        return
    result.status = int(final.Status)
    for name, attr in (("completed", "NumberOfCompletedSuboperations"),
                       ("failed", "NumberOfFailedSuboperations"),
                       ("warning", "NumberOfWarningSuboperations")):
        value = final.get(attr)
        setattr(result, name, int(value) if value not in (None, "") else None)
