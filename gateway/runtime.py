"""Wiring: the objects one gateway process runs with, built from :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Settings
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.store import InstanceIndex
from gateway.ingest import Ingestor
from gateway.storage import FileStore


@dataclass
class Runtime:
    settings: Settings
    store: FileStore
    index: InstanceIndex
    ingestor: Ingestor

    @classmethod
    def build(cls, settings: Settings, migrate: bool = True) -> Runtime:
        """Prepare the data directory (clearing staging), upgrade the index, wire ingest."""
        store = FileStore(settings.data_dir)
        store.prepare()
        engine = create_index_engine(settings.effective_database_url)
        if migrate:
            upgrade(engine)
        index = InstanceIndex(engine)
        ingestor = Ingestor(
            store, index, settings.duplicate_policy, commit_batch_max=settings.commit_batch_max
        )
        return cls(settings, store, index, ingestor)

    def close(self) -> None:
        self.index.engine.dispose()
