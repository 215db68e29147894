"""``drimbox serve``: the HTTP app, and the DICOM SCP in ``dicom_workers`` worker processes
(:mod:`gateway.ingest.workers`; with ``dicom_workers = 0``, in this process).

SIGTERM (or SIGINT) stops the HTTP server, then stops accepting associations and lets those
in flight finish (``shutdown_grace`` seconds at most) before the process exits, so that a
deployment restart never cuts a study in half.
"""

from __future__ import annotations

import logging
import signal
import sys

import uvicorn

from adapters.asgi_tls import client_certificate_protocol
from dicomweb.app import create_app
from gateway.config import Settings
from gateway.heap import settle_heap
from gateway.ingest import query_retrieve
from gateway.ingest.dimse import DicomService
from gateway.ingest.workers import WorkerPool
from gateway.manifest.stability import StabilityMonitor
from gateway.reports.mllp import build_hl7_listener
from gateway.runtime import Runtime
from gateway.tls import TlsConfigError, check_listeners, describe, listener_context

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    _check_tls(settings)  # may exit: before anything is built or listens
    runtime = Runtime.build(settings)  # clears staging: before any worker exists
    _annuaire(settings, runtime)
    _psc_client(settings, runtime)  # may exit: before the workers
    source = settings.source_enabled  # roles: a consumer-only box opens no Source listener
    stability = StabilityMonitor(runtime.index, settings.study_stable_seconds)
    outbox_worker = (_publication(settings, runtime, stability)  # may exit: before the workers
                     if source else None)
    mssante_worker = _mssante(settings, runtime) if source else None  # may exit
    if mssante_worker is not None and outbox_worker is not None:
        outbox_worker.published_hooks.append(mssante_worker.on_study_published)
    whitelist_refresher = _whitelist(settings, runtime)  # may exit: before the workers
    retention = _retention(settings, runtime)
    dicom: DicomService | WorkerPool | None = None
    hl7 = None
    if source:
        if settings.dicom_workers:
            dicom = WorkerPool(settings)
        else:
            dicom = DicomService(settings, runtime.ingestor,
                                 query_retrieve=query_retrieve.build(settings, runtime))
        dicom.start()
        stability.start()
        hl7 = build_hl7_listener(settings, runtime.reports) if runtime.reports else None
        if hl7 is not None:
            hl7.start()  # reports from the RIS over MLLP
    else:
        log.info("roles = consumer: no DICOM SCP, HL7 listener nor publication (Source off)")
    https = listener_context(settings, "http")  # None: plain HTTP (loopback or a TLS proxy)
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.effective_http_host,
        port=settings.http_port,
        ssl_context_factory=(lambda _config, _default: https) if https is not None else None,
        # Over HTTPS, each request sees its connection's client certificate (consumer
        # DRIMboxes, ``consumer_client_certificate``).
        http=client_certificate_protocol() if https is not None else "auto",
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="off",
        # Forwarded headers are ours to judge (``trusted_proxies``, dicomweb/urls.py):
        # uvicorn's own handling would trust any loopback peer and rewrite the client address.
        proxy_headers=False,
        server_header=False,
    )
    http = uvicorn.Server(config)

    # uvicorn re-raises the signal it caught once it has stopped; these handlers make that
    # a no-op so that the DICOM side can drain afterwards.
    def _noted(signum: int, _frame: object) -> None:
        log.info("signal %d received, shutting down", signum)

    signal.signal(signal.SIGTERM, _noted)
    signal.signal(signal.SIGINT, _noted)
    log.info("HTTP on %s:%d (%s), public URL %s", settings.effective_http_host,
             settings.http_port, describe(settings, "http"), settings.effective_public_url)
    settle_heap()
    try:
        http.run()
    finally:
        log.info("draining DICOM associations (up to %.0f s)", settings.shutdown_grace)
        if hl7 is not None:
            hl7.stop()
        unclean = dicom.stop() if dicom is not None else 0  # WorkerPool: unclean exits
        if source:
            stability.stop()
        if whitelist_refresher is not None:
            whitelist_refresher.stop()
        retention.stop()
        if outbox_worker is not None:
            outbox_worker.stop()
            outbox_worker.transport.close()
        if mssante_worker is not None:
            mssante_worker.stop()
            mssante_worker.transport.close()
        runtime.close()
        log.info("stopped")
    if unclean:
        sys.exit(1)


def _retention(settings: Settings, runtime: Runtime):  # noqa: ANN202
    """The retention task (:mod:`gateway.ingest.retention`): eviction when configured, then
    the purges of old audit rows and rejected instances, every ``retention_interval``."""
    from gateway.ingest.retention import RetentionTask, evict, purge

    def run_once() -> None:
        restorer = runtime.restorer
        if settings.eviction_enabled:
            evict(runtime.store, runtime.index, settings, keep_metadata=runtime.metadata.study,
                  busy=restorer.busy if restorer is not None else None)
        purge(runtime.store, runtime.index, settings)

    task = RetentionTask(run_once, settings.retention_interval)
    task.start()
    return task


def _check_tls(settings: Settings) -> None:
    """R12: every listener's certificate, key and CA bundle are usable (else exit 2, naming
    the setting); a certificate about to expire is logged."""
    try:
        warnings = check_listeners(settings, [name for name, _, _ in settings.listeners()])
    except TlsConfigError as exc:
        log.error("TLS configuration: %s", exc)
        sys.exit(2)
    for warning in warnings:
        log.warning("TLS: %s", warning)


def _publication(settings: Settings, runtime: Runtime, stability: StabilityMonitor):  # noqa: ANN202
    """Auto-publication of stable studies and, when a DMP is configured, the outbox
    worker that sends what is queued. A DMP configuration that cannot work (a missing VIHF
    value, an unreadable certificate) stops start-up with exit status 2."""
    from gateway.publication.outbox import OutboxWorker
    from gateway.publication.workflow import PublicationWorkflow

    workflow = PublicationWorkflow(runtime.index, settings)
    if settings.effective_auto_publish:
        if runtime.reports is not None:  # CRs publish; ``publication_trigger``
            from gateway.publication.report_trigger import ReportPublisher

            publisher = ReportPublisher(workflow, settings, directory=runtime.directory)
            publisher.attach(runtime.reports)
            stability.subscribe_in_transaction(publisher.on_stable)
        else:
            stability.subscribe_in_transaction(workflow.on_stable)
    if not settings.dmp_configured:
        return None
    from adapters.transports import publication_transport

    try:
        transport = publication_transport(settings)
    except (ValueError, OSError) as exc:
        log.error("DMP configuration: %s", exc)
        runtime.close()
        sys.exit(2)
    worker = OutboxWorker.from_settings(runtime.index, transport, settings)
    stability.subscribe(worker.nudge)
    workflow.on_queued = worker.nudge  # a report's publication wakes the worker too
    worker.start()
    log.info("publication outbox worker started (%s transport, auto_publish=%s)",
             settings.dmp_transport, settings.effective_auto_publish)
    return worker


def _mssante(settings: Settings, runtime: Runtime):  # noqa: ANN202
    """MSSanté delivery of CRs (DESTMSSANTEPS / DESTMSSANTEPAT): the report hook that queues
    messages and, with ``mssante_smtp_host``, the worker that sends them with the study's XDM
    archive. An unreadable certificate stops start-up (exit 2)."""
    if runtime.reports is None:
        return None
    from gateway.mssante.delivery import MssanteDelivery, MssanteWorker

    delivery = MssanteDelivery(runtime.index, settings, directory=runtime.directory)
    delivery.attach(runtime.reports)
    if not settings.mssante_configured:
        return None
    from adapters.mssante.smtp import SmtpTransport
    from adapters.xdm.archive import build_xdm_archive

    try:
        transport = SmtpTransport.from_settings(settings)
    except ValueError as exc:
        log.error("MSSanté configuration: %s", exc)
        runtime.close()
        sys.exit(2)

    def attachment(study_uid: str, _id_cda: str) -> bytes:
        return build_xdm_archive(runtime.index, settings, study_uid).data

    worker = MssanteWorker.from_settings(runtime.index, transport, settings, attachment)
    delivery.on_queued = worker.nudge
    worker.start()
    log.info("MSSanté outbox worker started (%s:%d, from %s)", settings.mssante_smtp_host,
             settings.mssante_smtp_port, settings.mssante_sender)
    return worker


def _annuaire(settings: Settings, runtime: Runtime) -> None:
    """The Annuaire Santé client (``annuaire_url``): completes reports' authors and finds
    MSSanté recipients' addresses. A wrong setting stops start-up (exit 2)."""
    if not settings.annuaire_url:
        return
    from adapters.annuaire import AnnuaireClient

    try:
        runtime.directory = AnnuaireClient.from_settings(settings)
    except ValueError as exc:
        log.error("Annuaire Santé configuration: %s", exc)
        runtime.close()
        sys.exit(2)
    log.info("Annuaire Santé at %s (answers kept %.0f s)", settings.annuaire_url,
             settings.annuaire_cache_seconds)


def _psc_client(settings: Settings, runtime: Runtime) -> None:
    """Our PSC client (R21): its key, certificate and CA bundle are read now, so that an
    unreadable one stops start-up (exit 2) rather than the first login."""
    if not (settings.psc_issuer and settings.psc_client_id):
        return
    from adapters.psc.client_auth import PscClientAuth

    try:
        runtime.psc_client = PscClientAuth.from_settings(settings)
    except ValueError as exc:
        log.error("PSC client configuration: %s", exc)
        runtime.close()
        sys.exit(2)
    log.info("PSC client %s authenticates with %s", settings.psc_client_id,
             settings.psc_client_auth)


def _whitelist(settings: Settings, runtime: Runtime):  # noqa: ANN202
    """R11: the ANS whitelist a consumer checks Source hosts against. The saved last good list
    is trusted again at once (if it still verifies), then the refresher fetches a new one now
    and every ``whitelist_refresh_hours``. Unreadable trust anchors stop start-up (exit 2)."""
    if not settings.whitelist_source:
        return None
    from adapters.whitelist import WhitelistKeeper, WhitelistRefresher

    if settings.whitelist_insecure_allow_unsigned:
        log.warning("!!! whitelist_insecure_allow_unsigned is ON: an UNSIGNED whitelist from %s "
                    "will be trusted. Development only: never run a real centre like this !!!",
                    settings.whitelist_source)
    try:
        keeper = WhitelistKeeper.from_settings(settings)
    except ValueError as exc:
        log.error("whitelist configuration: %s", exc)
        runtime.close()
        sys.exit(2)
    if not settings.whitelist_crls:
        log.warning("whitelist: no whitelist_crls configured: the signer's revocation is not "
                    "checked (R11)")
    keeper.load_persisted()
    keeper.on_refresh = _audit_refresh(runtime)
    runtime.whitelist = keeper
    refresher = WhitelistRefresher(keeper, settings.whitelist_refresh_hours * 3600)
    refresher.start()
    log.info("whitelist refresher started (%s, every %g h)", settings.whitelist_source,
             settings.whitelist_refresh_hours)
    return refresher


def _audit_refresh(runtime: Runtime):  # noqa: ANN202
    """Each whitelist refresh in the audit trail (R11): ``whitelist_refresh``, allowed when a
    list was adopted, denied when it was refused or unreachable (the reason says which list is
    kept)."""
    from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
    from gateway.access.principal import Principal

    refresher = Principal(kind="system", subject="whitelist-refresher", via="scheduler")

    def audit(result) -> None:  # noqa: ANN001 - adapters.whitelist.RefreshResult
        record_access(runtime.index, AccessRecord(
            refresher, "whitelist_refresh", ALLOWED if result.accepted else DENIED,
            result.reason[:255]))

    return audit
