"""Backup and restore of a gateway (the continuity plan, PRA): ``drimbox backup create |
verify | restore | list``.

A backup is one directory (a *set*) holding a consistent copy of the index and of the files
of ``data_dir`` that matter, with a SHA-256 manifest:

* :mod:`gateway.backup.layout`: what a set contains and how it is named, the manifest files,
  what of ``data_dir`` is copied and what is left out;
* :mod:`gateway.backup.database`: the index's copy: SQLite's online backup API, or
  ``pg_dump`` in one exported snapshot for PostgreSQL, read back and restored;
* :mod:`gateway.backup.create`, :mod:`gateway.backup.verify`, :mod:`gateway.backup.restore`:
  the three operations.

It reads the index and the file store (below it) and is used by the CLI (above it).
"""
