"""The garbage collector of ``drimbox serve``'s main process (the HTTP face).

Not applied in the DICOM worker processes: in the same rounds the ingest at 4 associations
was not faster with it (bench/RESULTS.md, "The garbage collector out of the way")."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Once everything long-lived exists (modules, the app, caches), move it out of the
    garbage collector's reach (``gc.freeze``) and collect less often: a collection then walks
    only what requests and instances allocate, instead of every object of the process,
    which cut the pauses behind the slowest requests (bench/RESULTS.md). Reference counting
    still frees almost everything; the collector is only for cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_0, 20, 20)


GC_THRESHOLD_0 = 20_000
"""Allocations between two young-generation collections (CPython's default: 700)."""
