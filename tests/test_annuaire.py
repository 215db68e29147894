# ruff: noqa: F811 - pytest fixtures imported from dmp_support / test_publication_e2e
"""The Annuaire Santé: ``drimbox annuaire-sim`` answered over real HTTP by the gateway's client
(``adapters/annuaire``), and a CR over MLLP whose author is only an identifier published to a
real ``drimbox dmp-sim`` with the author completed from the Annuaire (R4, R6). An unknown RPPS
is said, not invented; a wrong API key is an error that names the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from annuaire_support import (
    API_KEY,
    BIDEAULT,
    MEDIONI_MSSANTE,
    UNKNOWN,
    annuaire_sim,
    cda_g_author_id_only,
)
from cryptography import x509
from dmp_support import pki, start_sim  # noqa: F401
from hl7_support import fill, sample, send, with_cda
from peers import storescu
from test_publication_e2e import IndexView, dmp_entries, of_study, view  # noqa: F401
from test_report_publication_e2e import STUDY_G, images_g, report_gateway, show

from adapters.annuaire import AnnuaireClient
from adapters.dmp.transport import SystemPublisher
from adapters.dmp.vihf import build_vihf, verify_vihf
from gateway.config import load_settings
from gateway.directory.professionals import (
    DirectoryAccessRefused,
    complete_author,
    xcn,
)
from gateway.identity.ins import Ins
from gateway.index import outbox
from gateway.manifest.xds_metadata import Author

ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
SUBJECT = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
AUTHOR_G = f"{BIDEAULT}^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
INSTITUTION_G = "Centre de radiologie Ambroise^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1101235555"


@pytest.fixture(scope="module")
def annuaire(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with annuaire_sim(tmp_path_factory.mktemp("annuaire")) as sim:
        yield sim


def test_lookups_answer_practitioner_role_and_organization(annuaire) -> None:  # noqa: ANN001
    client = AnnuaireClient(annuaire.url, API_KEY)
    try:
        found = client.professional(BIDEAULT)
        assert (found.family, found.given, found.rpps) == ("BIDEAULT", "Jacques", "01234560801")
        assert (found.profession.code, found.specialty.code) == ("10", "SM44")
        assert found.author_specialty.code == "G15_10/SM44"
        assert (found.structure.name, found.structure.idnst, found.structure.finess) == (
            "Centre de radiologie Ambroise", "1101235555", "101235555")
        assert found.mssante_addresses == ("jacques.bideault@radiologie-ambroise.mssante.fr",)
        # A bare RPPS (11 digits) is the same professional; ADELI-style ids are searched as given.
        assert client.professional("01234567897").mssante_addresses == (MEDIONI_MSSANTE,)
        assert client.structure("101235555").idnst == "1101235555"
        # ADELI: the IdNat_PS 0 + ADELI, or the bare ADELI.
        for adeli in ("0751234567", "751234567"):
            manipulator = client.professional(adeli)
            assert (manipulator.idnps, manipulator.family, manipulator.profession.code) == (
                "0751234567", "LEROUX", "80")
            assert manipulator.author_specialty.code == "G15_80"
        assert client.professional(UNKNOWN) is None
        # The cache: asked again, no request goes out (unknown ids included).
        before = client.requests
        assert client.professional(BIDEAULT) == found
        assert client.professional(UNKNOWN) is None
        assert client.requests == before
    finally:
        client.close()


def test_cache_expires_after_its_ttl(annuaire) -> None:  # noqa: ANN001
    now = [1000.0]
    client = AnnuaireClient(annuaire.url, API_KEY, cache_seconds=60, clock=lambda: now[0])
    try:
        client.professional(BIDEAULT)
        n = client.requests
        now[0] += 59
        client.professional(BIDEAULT)
        assert client.requests == n
        now[0] += 2
        client.professional(BIDEAULT)
        assert client.requests == n + 2  # Practitioner, then PractitionerRole
    finally:
        client.close()


def test_wrong_or_missing_api_key_is_a_clear_error(annuaire) -> None:  # noqa: ANN001
    for headers in ({}, {"ESANTE-API-KEY": "not-the-key"}):
        r = httpx.get(f"{annuaire.url}/Practitioner", params={"identifier": BIDEAULT},
                      headers=headers)
        assert r.status_code == 401
        assert r.json()["resourceType"] == "OperationOutcome"
    client = AnnuaireClient(annuaire.url, "not-the-key")
    try:
        with pytest.raises(DirectoryAccessRefused) as refused:
            client.professional(BIDEAULT)
        assert "HTTP 401" in str(refused.value)
        assert "annuaire_api_key" in str(refused.value)
        assert "ESANTE-API-KEY" in str(refused.value)
    finally:
        client.close()


def test_the_settings_refuse_an_annuaire_without_key_or_over_plain_http() -> None:
    with pytest.raises(Exception, match="annuaire_api_key"):
        load_settings(None, annuaire_url="https://gateway.api.esante.gouv.fr/fhir/v2")
    with pytest.raises(Exception, match="plain http only on loopback"):
        load_settings(None, annuaire_url="http://annuaire.example.org/fhir", annuaire_api_key="k")


def test_lookups_fill_the_vihf_author_fields(annuaire, pki) -> None:  # noqa: ANN001, F811
    """An author known only by identifier: the Annuaire gives the VIHF its subject name and
    role codes (profession, specialty) and the XDS author its name, specialty and structure."""
    client = AnnuaireClient(annuaire.url, API_KEY)
    try:
        bare = Author(person=xcn(BIDEAULT, "", ""), institution="CENTRE^^^^^&1.2.250.1.71.4.2.2"
                      "&ISO^IDNST^^^300017985")
        done = complete_author(bare, BIDEAULT, client.professional(BIDEAULT),
                               has_institution=False)
    finally:
        client.close()
    assert done.filled == ("name", "specialty", "institution")
    assert done.author.person == AUTHOR_G
    assert done.author.specialty == (
        "G15_10/SM44^Médecin - Radio-diagnostic (SM)^1.2.250.1.213.1.1.4.5")
    assert done.author.institution == INSTITUTION_G
    settings = load_settings(None, dmp_structure_id="499700367909006", dmp_activity_sector="SA07",
                             dmp_lps_id="LPS", dmp_lps_homologation_id="HOMOL",
                             repository_oid="1.2.250.1.999.1.1", institution_name="CENTRE")
    ctx = SystemPublisher.from_settings(settings).vihf(Ins("279035121518989",
                                                           "1.2.250.1.213.1.4.10"), done.author)
    assertion = build_vihf(ctx, pki.sign_key.read_bytes(), pki.sign_cert.read_bytes())
    verified = verify_vihf(assertion, [x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())])
    assert verified.subject_id == BIDEAULT
    assert verified.attributes[SUBJECT] == ["Jacques BIDEAULT"]
    assert verified.attributes[ROLE] == ["10", "SM44"]


def test_unknown_rpps_is_reported_not_invented(annuaire) -> None:  # noqa: ANN001
    client = AnnuaireClient(annuaire.url, API_KEY)
    try:
        bare = Author(person=xcn(UNKNOWN, "", ""))
        done = complete_author(bare, UNKNOWN, client.professional(UNKNOWN), has_institution=False)
    finally:
        client.close()
    assert done.author == bare
    assert done.filled == ()
    assert done.problems == (f"author {UNKNOWN} is not in the Annuaire Santé: the author's "
                             "name, profession and structure stay as the report gave them",)


def _oru(cda: bytes) -> str:
    return with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"), cda)


def _queued_entry(view: IndexView, row_id: int):  # noqa: ANN202
    with view.index.read() as s:
        item = s.get(outbox.OutboxItem, row_id)
        return outbox.entry_from_json(item.entry_json)


def test_report_author_is_completed_from_the_annuaire_or_reported_unknown(
        gateway_factory, tmp_path: Path, annuaire, pki, view: IndexView) -> None:  # noqa: ANN001, F811
    (tmp_path / "dmp-sim").mkdir()
    sim = start_sim(tmp_path / "dmp-sim", pki)
    try:
        gw = report_gateway(gateway_factory, sim, DRIMBOX_ANNUAIRE_URL=annuaire.url,
                            DRIMBOX_ANNUAIRE_API_KEY=API_KEY)
        storescu(images_g(tmp_path / "g", 2), gw.dicom_port)

        # 1. An author the Annuaire does not know: published with what the CR gave, said.
        text, _ = fill(_oru(cda_g_author_id_only(UNKNOWN)))
        assert send(gw.hl7_port, text)["ack"] == "AA"
        (first,) = view.wait_done(STUDY_G)
        (entry,) = of_study(dmp_entries(sim), STUDY_G)
        assert entry.author_persons == (f"{UNKNOWN}^^^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",)
        state = show(gw, STUDY_G)
        said = [h["detail"] for h in state["publication"]["history"]
                if h["event"] == "annuaire_problem"]
        assert said == [f"author {UNKNOWN} is not in the Annuaire Santé: the author's name, "
                        "profession and structure stay as the report gave them"]
        assert f"author {UNKNOWN} is not in the Annuaire Santé" in state["problems"][0]
        assert f"author {UNKNOWN} is not in the Annuaire Santé" in gw.log()

        # 2. A known author with only an identifier: completed (replacement of the KOS).
        text, _ = fill(_oru(cda_g_author_id_only(BIDEAULT)))
        assert send(gw.hl7_port, text)["ack"] == "AA"
        rows = view.wait_done(STUDY_G, count=2)
        second = next(r for r in rows if r.id != first.id)
        found = {e.unique_id: e for e in of_study(dmp_entries(sim), STUDY_G)}
        assert found[second.kos_uid].author_persons == (AUTHOR_G,)
        queued = _queued_entry(view, second.id)
        assert queued.author.person == AUTHOR_G
        assert queued.author.specialty.startswith("G15_10/SM44^")
        assert queued.author.institution == INSTITUTION_G
        history = show(gw, STUDY_G)["publication"]["history"]
        assert history[-1]["event"] == "published" or any(
            h["event"] == "published" and h["kos_uid"] == second.kos_uid for h in history)
        assert any(h["event"] == "annuaire" and h["detail"] == (
            f"author {BIDEAULT}: name, specialty, institution from the Annuaire Santé")
            for h in history)
    finally:
        sim.proc.terminate()
        sim.proc.wait(10)


def test_a_wrong_api_key_is_said_in_the_study_history(
        gateway_factory, tmp_path: Path, annuaire, pki, view: IndexView) -> None:  # noqa: ANN001, F811
    (tmp_path / "dmp-sim").mkdir()
    sim = start_sim(tmp_path / "dmp-sim", pki)
    try:
        gw = report_gateway(gateway_factory, sim, DRIMBOX_ANNUAIRE_URL=annuaire.url,
                            DRIMBOX_ANNUAIRE_API_KEY="not-the-key")
        storescu(images_g(tmp_path / "g", 1), gw.dicom_port)
        text, _ = fill(_oru(cda_g_author_id_only(BIDEAULT)))
        assert send(gw.hl7_port, text)["ack"] == "AA"
        view.wait_done(STUDY_G)
        said = [h["detail"] for h in show(gw, STUDY_G)["publication"]["history"]
                if h["event"] == "annuaire_problem"]
        assert len(said) == 1 and "refused our API key (HTTP 401" in said[0], said
        assert "annuaire_api_key" in said[0]
        assert json.dumps(said).count("not-the-key") == 0  # the key itself is never shown
    finally:
        sim.proc.terminate()
        sim.proc.wait(10)
