"""``drimbox annuaire-sim`` as a test peer, and the CR of exam G with its author cut down to
an identifier (what the Annuaire Santé must complete)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import launcher
from hl7_support import CDA_G1_MAJ
from lxml import etree
from peers import free_port

REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-esante-api-key-0123456789"
BIDEAULT = "801234560801"
"""The radiologist of exam G's CR, in the simulator's fixture (adapters/annuaire/fixture.json)."""
MEDIONI = "801234567897"
"""A referring doctor of the fixture, with an MSSanté mailbox."""
MEDIONI_MSSANTE = "stephane.medioni@medecin.mssante.fr"
UNKNOWN = "899999999999"
"""An IdNat_PS the Annuaire does not know."""
NS = {"cda": "urn:hl7-org:v3"}


@dataclass
class AnnuaireSim:
    url: str
    proc: object
    log: Path


@contextmanager
def annuaire_sim(tmp: Path, api_key: str = API_KEY) -> Iterator[AnnuaireSim]:
    port = free_port()
    log = tmp / f"annuaire-sim-{port}.log"
    with log.open("wb") as out:
        proc = launcher.popen(["annuaire-sim", "--port", str(port), "--api-key", api_key],
                              cwd=REPO, env=dict(os.environ), stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"annuaire-sim exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"annuaire-sim did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield AnnuaireSim(f"http://127.0.0.1:{port}", proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cda_g(*, author_id_only: str | None = None, recipients: tuple[tuple[str, str], ...] = (),
          patient_mailto: bool = True) -> bytes:
    """Exam G's CR, changed: ``author_id_only`` reduces its author to ``assignedAuthor/id`` =
    that IdNat_PS (no ``code`` = profession/specialty, no ``assignedPerson`` = name, no
    structure id); ``recipients``: (IdNat_PS, MSSanté address or '') added as
    ``informationRecipient``; ``patient_mailto`` False removes the patient's ``mailto:``."""
    root = etree.fromstring(CDA_G1_MAJ.read_bytes())
    if author_id_only is not None:
        author = root.find("cda:author/cda:assignedAuthor", NS)
        author.find("cda:id", NS).set("extension", author_id_only)
        for path in ("cda:code", "cda:assignedPerson", "cda:representedOrganization/cda:id"):
            el = author.find(path, NS)
            el.getparent().remove(el)
    if not patient_mailto:
        for tel in root.findall("cda:recordTarget/cda:patientRole/cda:telecom", NS):
            if tel.get("value", "").startswith("mailto:"):
                tel.getparent().remove(tel)
    anchor = root.find("cda:custodian", NS)
    for ident, address in reversed(recipients):  # after custodian, in order
        rec = etree.Element("{urn:hl7-org:v3}informationRecipient", typeCode="PRCP")
        intended = etree.SubElement(rec, "{urn:hl7-org:v3}intendedRecipient")
        if ident:
            etree.SubElement(intended, "{urn:hl7-org:v3}id", root="1.2.250.1.71.4.2.1",
                             extension=ident)
        if address:
            etree.SubElement(intended, "{urn:hl7-org:v3}telecom", value=f"mailto:{address}")
        anchor.addnext(rec)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def cda_g_author_id_only(author_id: str = BIDEAULT) -> bytes:
    """Exam G's CR with its author reduced to an identifier (see :func:`cda_g`)."""
    return cda_g(author_id_only=author_id)
