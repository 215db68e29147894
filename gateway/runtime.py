"""Wiring: the objects one gateway process runs with, built from :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Settings
from gateway.imaging.locations import DicomWebURLs
from gateway.imaging.metadata import IngestActivity, MetadataCache, MetadataWarmer
from gateway.imaging.restore import Restorer
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.store import InstanceIndex
from gateway.ingest.ingestor import Incoming, Ingestor, IngestResult
from gateway.ingest.recovery import recover
from gateway.ingest.storage import FileStore
from gateway.reports.wiring import build_report_workflow
from gateway.reports.workflow import ReportWorkflow


class _WarmingIngestor(Ingestor):
    """The ingest path, plus a note to the metadata warmer once an instance is kept."""

    def __init__(self, *args, warmer: MetadataWarmer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.warmer = warmer

    def ingest(self, incoming: Incoming) -> IngestResult:
        result = super().ingest(incoming)
        h = result.header
        self.warmer.touched(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid)
        return result


@dataclass
class Runtime:
    settings: Settings
    store: FileStore
    index: InstanceIndex
    ingestor: Ingestor
    metadata: MetadataCache
    """WADO-RS metadata, precomputed per series (see :mod:`gateway.imaging.metadata`)."""
    warmer: MetadataWarmer
    reports: ReportWorkflow | None = None
    """Reports from the RIS: attach publication to its hooks."""
    whitelist: object | None = None
    """The ANS whitelist keeper (``adapters.whitelist.WhitelistKeeper``, R11), set by
    ``drimbox serve`` when ``whitelist_source`` is configured."""
    psc_client: object | None = None
    """Our PSC client (``adapters.psc.client_auth.PscClientAuth``, R21), checked and set by
    ``drimbox serve`` when ``psc_issuer`` is configured."""
    directory: object | None = None
    """The Annuaire Santé (``adapters.annuaire.AnnuaireClient``, a
    :class:`~gateway.directory.professionals.ProfessionalDirectory`), set by ``drimbox serve``
    when ``annuaire_url`` is configured."""
    restorer: Restorer | None = None
    """Fetches evicted instances back from the PACS before WADO-RS reads them."""

    @classmethod
    def build(
        cls, settings: Settings, migrate: bool = True, clear_staging: bool = True,
        prepare_instances: bool = True,
    ) -> Runtime:
        """Prepare the data directory (clearing staging unless told not to: see
        :meth:`FileStore.prepare`), upgrade the index, wire ingest. ``prepare_instances=False``
        (DICOM worker processes): no per-instance metadata ahead of the series build, which
        one process makes for all (the others would compute their share for nothing)."""
        store = FileStore(settings.data_dir)
        store.prepare(clear_staging=clear_staging)
        engine = create_index_engine(settings.effective_database_url)
        if migrate:
            upgrade(engine)
        index = InstanceIndex(engine)
        if clear_staging:  # the process that prepares the data directory recovers it
            recover(store, index)
        urls = DicomWebURLs(settings.effective_public_url)
        metadata = MetadataCache(store, index, settings.data_dir / "metadata", urls.instance)
        warmer = MetadataWarmer(
            metadata.warm, metadata.prepare_instance if prepare_instances else None,
            activity=IngestActivity(settings.data_dir / "metadata" / "ingest-activity"))
        ingestor = _WarmingIngestor(
            store,
            index,
            settings.duplicate_policy,
            commit_batch_max=settings.commit_batch_max,
            flush_mode=settings.ingest_flush,
            warmer=warmer,
        )
        from gateway.ingest.iocm import RejectionHandler

        ingestor.rejections = RejectionHandler(store, index, settings)  # IOCM
        pacs = None
        if settings.pacs_configured:
            from adapters.pacs.query_retrieve import PacsClient

            pacs = PacsClient(our_ae_title=settings.ae_title,
                              pacs_ae_title=settings.pacs_ae_title,
                              host=settings.pacs_host, port=settings.pacs_port,
                              move_timeout=settings.pacs_retrieve_timeout)
        return cls(settings, store, index, ingestor, metadata, warmer,
                   reports=build_report_workflow(settings, index),
                   restorer=Restorer(index, pacs, settings.pacs_restore_retry_after))

    def close(self) -> None:
        self.warmer.stop()
        self.ingestor.close()
        self.index.engine.dispose()
