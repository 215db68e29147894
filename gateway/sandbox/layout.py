"""Where each piece of the sandbox listens and keeps its state.

Every port is ``base_port`` plus a fixed offset (:data:`OFFSETS`), on 127.0.0.1 only, so that
a vendor can write them down once (docs/sandbox.md has the table for the default base).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_PORT = 8700
DEFAULT_DIR = Path("data/sandbox")
HOST = "127.0.0.1"

#: name -> offset from the base port.
OFFSETS = {
    "source_http": 0,    # the Source gateway: HTTPS (console, DICOMweb, viewer, share links)
    "source_dicom": 1,   # the Source gateway: DICOM (C-STORE, C-FIND/C-MOVE), AE DRIMBOX
    "source_hl7": 2,     # the Source gateway: HL7 v2 over MLLP (reports from the RIS)
    "consumer_http": 3,  # the Consumer gateway: HTTP (console, appel contextuel, viewer)
    "dmp_sim": 4,        # drimbox dmp-sim: XDS.b and FHIR, mutual TLS
    "psc_sim": 5,        # drimbox psc-sim: the OpenID provider (HTTP)
    "orthanc_http": 6,   # Orthanc, the Consumer's PACS: REST API
    "orthanc_dicom": 7,  # Orthanc: DICOM, AE ORTHANC
}
SPAN = max(OFFSETS.values()) + 1

SOURCE_AE = "DRIMBOX"
ORTHANC_AE = "ORTHANC"
SOURCE_PSC_CLIENT = ("drimbox-source", "sandbox-source-secret")
CONSUMER_PSC_CLIENT = ("drimbox-conso", "sandbox-conso-secret")
MARKER = ".drimbox-sandbox"
"""A file in ``--dir`` saying the sandbox made it (so that a restart may wipe it)."""


@dataclass(frozen=True)
class Layout:
    base_port: int
    root: Path

    def port(self, name: str) -> int:
        return self.base_port + OFFSETS[name]

    @property
    def ports(self) -> dict[str, int]:
        return {name: self.port(name) for name in OFFSETS}

    # -- URLs -----------------------------------------------------------------------------

    @property
    def source_url(self) -> str:
        return f"https://{HOST}:{self.port('source_http')}"

    @property
    def consumer_url(self) -> str:
        return f"http://{HOST}:{self.port('consumer_http')}"

    @property
    def dmp_url(self) -> str:
        return f"https://{HOST}:{self.port('dmp_sim')}"

    @property
    def psc_url(self) -> str:
        return f"http://{HOST}:{self.port('psc_sim')}"

    @property
    def psc_issuer(self) -> str:
        return f"{self.psc_url}/auth/realms/esante-wallet"

    @property
    def orthanc_url(self) -> str:
        return f"http://{HOST}:{self.port('orthanc_http')}"

    # -- paths ----------------------------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def data(self, name: str) -> Path:
        return self.root / name
