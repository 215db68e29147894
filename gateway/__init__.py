"""DRIMbox gateway core: configuration, storage, index, DIMSE service, ingest."""

__version__ = "0.1.0"
