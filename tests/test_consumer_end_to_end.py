# ruff: noqa: F811 - pytest fixtures imported from dmp_support and test_consumer_export
"""The consumer role's acceptance, end to end over real protocols only (R11, R13, R14, R16,
R17), on both index back-ends:

1. Source gateway A receives a study by a real ``storescu`` and its outbox publishes the KOS
   to ``drimbox dmp-sim`` over mutual TLS; A answers WADO-RS behind a mutual-TLS front.
2. The clinician's software (a page on another site, :class:`test_consumer_browser.Lps`)
   posts the appel contextuel to consumer gateway B: the patient's INS traits and the centre's
   own PatientID / PatientIDIssuer.
3. Headless Chromium logs in on ``drimbox psc-sim``'s page and lands on B's consumer page: the
   identity banner's strict traits, and below it the prior (the DMP search, R16) with its
   modalities and date.
4. The prior's link: B fetches the KOS from the DMP, checks each RetrieveURL against the
   (development, unsigned) ANS whitelist (R11), retrieves the series from A by WADO-RS with
   the PSC token, ``KOS-SOPInstanceUID`` and its client certificate; the page's progress
   reaches *complete*; OHIF, framed under the banner, draws the study
   (``test-artifacts/consumer-end-to-end-<backend>.png``).
5. The export button: the study goes into B's PACS, a private Orthanc on loopback (its REST
   API, ``export_destination = orthanc``); the answer page says complete.
6. Every instance fetched back from Orthanc (``/instances/{id}/file``) is A's stored file byte
   for byte (file meta, every top-level element, pixel data) apart from the coerced identifiers:
   PatientID and IssuerOfPatientID (with its qualifiers) are the LPS's, the INS is kept in
   Other Patient IDs Sequence with its OID.
7. B's audit has a row for each step (context, page, search, KOS, WADO, view, DICOMweb,
   export), naming the practitioner.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser
from conftest import ARTIFACTS
from dmp_support import Sim, pki, sim  # noqa: F401
from pydicom import dcmread
from test_consumer_context import GOOD
from test_consumer_export import Pacs, assert_same_apart_from_identifiers, dataset_part, pacs
from test_consumer_retrieve import PRACTITIONER, World, audit_b, make_world
from test_consumer_viewer_browser import (
    draw_in_ohif,
    open_patient_from_lps,
    require_ohif,
    wait_retrieved,
)

from gateway.ingest.part10 import split_part10

INS, INS_OID = GOOD["Patient.identifier.value"], "1.2.250.1.213.1.4.10"
#: The centre's own identifiers of the patient, as the LPS sends them (R13).
IPP, IPP_ISSUER_NAME, IPP_ISSUER_OID = "IPP-E2E-4242", "CHU AVAL", "1.2.250.1.999.2.2"
APPEL = {**GOOD, "PatientID": IPP, "PatientIDIssuer": f"{IPP_ISSUER_NAME}&{IPP_ISSUER_OID}&ISO"}


@pytest.fixture
def world(tmp_path: Path, gateway_factory, sim: Sim, pacs: Pacs) -> Iterator[World]:
    require_ohif()
    yield from make_world(tmp_path, gateway_factory, sim,
                          DRIMBOX_EXPORT_DESTINATION="orthanc",
                          DRIMBOX_EXPORT_ORTHANC_URL=pacs.url)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def _text(browser: Browser, selector: str) -> str | None:
    return browser.evaluate(f"(document.querySelector({selector!r}) || {{}}).textContent")


def assert_the_lps_identifiers(ds) -> None:  # noqa: ANN001 - a pydicom Dataset
    assert (ds.PatientID, ds.IssuerOfPatientID) == (IPP, IPP_ISSUER_NAME)
    (qualifier,) = ds.IssuerOfPatientIDQualifiersSequence
    assert (qualifier.UniversalEntityID, qualifier.UniversalEntityIDType) == (
        IPP_ISSUER_OID, "ISO")
    (ins,) = ds.OtherPatientIDsSequence  # A's PatientID was the INS: nothing else to keep
    assert ins.PatientID == INS
    assert ins.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    (ins_qualifier,) = ins.IssuerOfPatientIDQualifiersSequence
    assert (ins_qualifier.UniversalEntityID, ins_qualifier.UniversalEntityIDType) == (
        INS_OID, "ISO")


@pytest.mark.peer
def test_published_prior_found_retrieved_viewed_and_imported(
        world: World, browser: Browser, pacs: Pacs) -> None:
    backend = "sqlite" if world.b.database_url.startswith("sqlite") else "postgresql"
    study, kos_uid = world.publish("prior", per_series=2)
    source = {sop: path.read_bytes() for sop, path in world.source_paths(study).items()}
    assert len(source) == 5  # CT x2, MR (RLE) x2, an encapsulated PDF

    # The appel contextuel from the LPS, the PSC login, B's consumer page.
    open_patient_from_lps(browser, world, APPEL)
    assert browser.evaluate("location.pathname") == "/consumer"
    banner = {trait: _text(browser, f"#identity-banner [data-trait='{trait}']")
              for trait in ("birth-name", "first-given-name", "birth-date", "gender",
                            "birthplace")}
    assert banner == {"birth-name": "PAT-TROIS", "first-given-name": "DOMINIQUE",
                      "birth-date": "12/03/1979", "gender": "Féminin", "birthplace": "51215"}
    # The prior, listed under the banner (the DMP search), with its modalities and date.
    row = f"#priors tr.prior[data-document='{kos_uid}']"
    assert browser.evaluate(
        "document.querySelector('#identity-banner').compareDocumentPosition("
        f"document.querySelector({row!r})) & Node.DOCUMENT_POSITION_FOLLOWING"), \
        browser.evaluate("document.body.innerText")
    modalities = _text(browser, f"{row} [data-field=modality]") or ""
    assert {"CT", "MR"} <= set(modalities.split(", ")), modalities
    assert (_text(browser, f"{row} [data-field=date]") or "").startswith("20/11/2026")

    # Its link: the retrieval from A, its progress to complete, then OHIF under the banner.
    browser.evaluate(f"document.querySelector({row + ' a'!r}).click()")
    wait_retrieved(browser)
    lit = draw_in_ohif(browser, ARTIFACTS / f"consumer-end-to-end-{backend}.png")
    assert lit > 0
    assert _text(browser, "#identity-banner [data-trait='birth-name']") == "PAT-TROIS"
    ours = [(u, s) for u, s in browser.responses
            if u.startswith(f"{world.b.url}/consumer/dicom-web/studies/{study}")]
    assert ours and all(s == 200 for _, s in ours), [(u[-80:], s) for u, s in ours if s != 200]

    # The export button on the retrieval page: into B's PACS.
    browser.goto(f"{world.b.url}/consumer/studies/{kos_uid}")
    browser.wait_for("document.querySelector('form.export button') !== null", 30,
                     "the export button of the retrieved study")
    browser.evaluate("document.querySelector('form.export button').click()")
    browser.wait_for("document.querySelector('#counts') !== null", 120, "the export's answer")
    assert browser.evaluate("document.querySelector('#counts').dataset.outcome") == "complete", \
        browser.evaluate("document.body.innerText")
    assert _text(browser, "#message") == "Toutes les images sont dans le PACS."
    assert browser.evaluate("document.querySelectorAll(\"tr[data-outcome='sent']\").length") \
        == len(source)

    # In the PACS: every instance, byte for byte A's apart from the coerced identifiers.
    assert len(pacs.instance_ids()) == len(source)
    (patient,) = pacs.get("/patients?expand").json()  # one patient, the centre's own
    assert patient["MainDicomTags"]["PatientID"] == IPP
    for sop, sent in source.items():
        held = pacs.file_of(sop)
        offset = split_part10(sent).dataset_offset
        assert held[:offset] == sent[:offset]  # the file meta information, as A keeps it
        coerced = assert_same_apart_from_identifiers(sent, held)
        assert coerced.SOPInstanceUID == sop
        assert_the_lps_identifiers(coerced)
        assert dataset_part(held)[0] != dataset_part(sent)[0]  # coerced indeed
        a = dcmread(io.BytesIO(sent))
        assert (a.PatientID, coerced.PatientName) == (INS, a.PatientName)

    # B's audit: one row (or more) for each step, all for this practitioner.
    steps = {action: [r for r in audit_b(world, action) if r.outcome == "allowed"]
             for action in ("consumer_context", "consumer_view", "dmp_search", "consumer_kos",
                            "consumer_wado", "consumer_study_view", "consumer_dicomweb",
                            "consumer_export")}
    assert all(steps.values()), {a: len(rows) for a, rows in steps.items()}
    assert any(r.reason.startswith("found=") and r.reason != "found=0"
               for r in steps["dmp_search"])
    (kos,) = steps["consumer_kos"]
    assert (kos.kos_uid, kos.study_instance_uid, kos.patient_ins) == (kos_uid, study, INS)
    assert len(steps["consumer_wado"]) == 3  # one request per series
    (export,) = steps["consumer_export"]
    assert export.reason.startswith("orthanc: complete") and f"sent {len(source)}" in export.reason
    assert (export.kos_uid, export.study_instance_uid) == (kos_uid, study)
    assert IPP not in export.reason
    assert {r.subject for action, rows in steps.items() if action != "consumer_context"
            for r in rows} == {PRACTITIONER}
