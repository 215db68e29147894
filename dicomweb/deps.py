"""Typed FastAPI dependencies shared by the DICOMweb routes.

``RuntimeDep`` gives a route the gateway's wiring (settings, index, file store, ingestor).
``ReaderDep`` is the access gate every route that reveals patient data must take: until Pro
Santé Connect lands (issue #6, R10/R15) the only mode is ``none``, which the settings accept
only while the HTTP side listens on a loopback address (see ``Settings._derived``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.runtime import Runtime


# Both dependencies are ``async def`` on purpose: they only read attributes, and FastAPI runs a
# plain ``def`` dependency in the thread pool, i.e. one thread hand-off per dependency per
# request on top of the route's own (measured on QIDO by PatientID, bench/RESULTS.md).
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class Reader:
    """Who is reading. Today: the anonymous loopback reader; PSC practitioners come next."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


async def get_reader(runtime: RuntimeDep) -> Reader:
    return Reader(runtime.settings.dicomweb_auth)


ReaderDep = Annotated[Reader, Depends(get_reader)]
