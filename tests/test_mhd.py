# ruff: noqa: F811 - pytest fixtures imported from dmp_support and test_manifest_e2e
"""The FHIR (IHE MHD / ANS PDSm) transport against the real ``drimbox dmp-sim`` over mutual TLS
(R4, R7, R8, R19).

The simulator runs as its own process with the test PKI; ``/fhir`` shares its store with the
XDS.b endpoints, so what ITI-65 registers is seen by ITI-18 / ITI-43 and the other way round.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from dmp_support import (
    CONTENT_TYPE,
    SOURCE_ID,
    Sim,
    client,
    new_oid,
    pki,
    publication,
    sim,
    vihf_for,
)
from fhir.resources.R4B.bundle import Bundle
from peers import storescu
from pydantic import ValidationError
from test_kos import facts
from test_manifest_e2e import INS, INS_TEST_OID, cli, publishing_gateway, write_study

from adapters.dmp.client import DmpClient, tls_context
from adapters.mhd.bundle import provide_bundle
from adapters.mhd.resources import entry_from_document_reference, submission_set_from_list
from adapters.mhd.transport import MhdTransport
from gateway.config import load_settings
from gateway.index.engine import create_index_engine
from gateway.index.store import InstanceIndex
from gateway.manifest.manifests import build_study_manifest, document_entry
from gateway.publication.transport import OutgoingDocument, TransportRefused, TransportUnavailable

_ = (client, pki, sim, publishing_gateway)  # fixtures


def transport(sim: Sim, *, client_cert: bool = True, base: str | None = None,
              timeout: float = 15.0) -> MhdTransport:
    return MhdTransport(base or f"{sim.base}/fhir", ca_bundle=sim.pki.ca_cert,
                        client_cert=sim.pki.client_cert if client_cert else None,
                        client_key=sim.pki.client_key if client_cert else None,
                        source_id=SOURCE_ID, content_type=CONTENT_TYPE, timeout=timeout)


@pytest.fixture
def mhd(sim: Sim):  # noqa: ANN201
    with transport(sim) as t:
        yield t


def fhir_http(sim: Sim) -> httpx.Client:
    return httpx.Client(base_url=f"{sim.base}/fhir", timeout=15, verify=tls_context(
        sim.pki.ca_cert, sim.pki.client_cert, sim.pki.client_key))


def outgoing(pub, replaces: str | None = None) -> OutgoingDocument:  # noqa: ANN001
    return OutgoingDocument(facts().patient.ins, pub.entry, pub.kos, replaces_unique_id=replaces)


def bundle_json(pub, replaces: str | None = None) -> dict:  # noqa: ANN001
    return provide_bundle(pub.entry, pub.ss, facts().patient.ins, pub.kos, replaces).json()


def _resource(bundle: dict, kind: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


# ------------------------------------------------------------------------ the Bundle (R4)

def test_bundle_validates_with_fhir_resources_and_maps_the_r4_table() -> None:
    """Every XDS-I.b field of the R4 table lands where MHD / PDSm put it, the Bundle validates
    with fhir.resources (R4B), and reading the DocumentReference back gives the same entry."""
    pub = publication()
    data = bundle_json(pub)
    Bundle.model_validate_json(json.dumps(data))  # the JSON as sent is a valid R4(B) Bundle
    assert data["type"] == "transaction"
    assert [(e["request"]["method"], e["request"]["url"]) for e in data["entry"]] == [
        ("POST", "List"), ("POST", "DocumentReference"), ("POST", "Binary")]
    dr, ss, binary = (_resource(data, k) for k in ("DocumentReference", "List", "Binary"))
    e = pub.entry
    assert dr["masterIdentifier"]["value"] == f"urn:oid:{e.unique_id}"
    assert dr["category"][0]["coding"][0] == {"system": "urn:oid:1.2.250.1.213.1.1.4.1",
                                              "code": "31", "display": "Imagerie médicale"}
    assert dr["type"]["coding"][0]["code"] == "IMG-KOS"
    assert dr["type"]["coding"][0]["system"] == "urn:oid:1.2.250.1.213.1.1.4.12"
    assert dr["content"][0]["format"] == {
        "system": "urn:oid:1.2.840.10008.2.6.1", "code": "1.2.840.10008.5.1.4.1.1.88.59",
        "display": e.format_code.display}
    assert dr["securityLabel"][0]["coding"][0]["system"] == \
        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    assert {c["coding"][0]["code"] for c in dr["context"]["event"]} == {
        c.code for c in e.event_codes}
    assert dr["context"]["facilityType"]["coding"][0]["code"] == e.healthcare_facility_type.code
    assert dr["context"]["practiceSetting"]["coding"][0]["code"] == e.practice_setting.code
    kinds = {r["identifier"]["type"]["coding"][0]["code"]: r["identifier"]["value"]
             for r in dr["context"]["related"]}
    assert kinds["urn:ihe:iti:xds:2013:accession"] == pub.accession
    assert "urn:ihe:iti:xds:2016:studyInstanceUID" in kinds
    assert dr["subject"]["identifier"] == {"system": "urn:oid:1.2.250.1.213.1.4.10",
                                           "value": facts().patient.ins.matricule}
    att = dr["content"][0]["attachment"]
    assert base64.b64decode(att["hash"]) == hashlib.sha1(pub.kos).digest()  # noqa: S324
    assert att["size"] == len(pub.kos) and att["language"] == "fr-FR"
    assert att["contentType"] == "application/dicom" and att["url"] == data["entry"][2]["fullUrl"]
    assert base64.b64decode(binary["data"]) == pub.kos
    assert ss["code"]["coding"][0]["code"] == "submissionset" and ss["mode"] == "working"
    assert ss["entry"][0]["item"]["reference"] == data["entry"][1]["fullUrl"]
    # One mapping both ways: the DocumentReference and the List read back as the domain types.
    assert entry_from_document_reference(dr) == e
    assert submission_set_from_list(ss) == pub.ss
    # fhir.resources really checks: a malformed DocumentReference is refused.
    broken = copy.deepcopy(data)
    broken["entry"][1]["resource"]["content"] = "KOS"
    with pytest.raises(ValidationError):
        Bundle.model_validate(broken)


def test_people_and_patient_traits_round_trip() -> None:
    """Author person (XCN, the ANS sample's software author included), institution (XON), role
    and specialty, legal authenticator and sourcePatientInfo survive DocumentReference and back."""
    from gateway.manifest.xds_metadata import Author

    pub = publication()
    for person in ("899711256811^DRIMBox^ANS^^^^^^&1.2.250.1.71.4.2.1&ISO^U^^^EI",
                   "810000000001^RADIO^Alice^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"):
        entry = replace(pub.entry, author=Author(
            person=person,
            institution="CENTRE IMAGERIE TEST^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^300017985",
            role="Radiologue", specialty="G15_10/SM44^Radiologie^1.2.250.1.213.1.1.4.5"),
            legal_authenticator="810000000002^SIGNE^Bob^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
            source_patient_info=("PID-5|PAT-TROIS^DOMINIQUE^^^^^L", "PID-7|19790328", "PID-8|F"))
        data = provide_bundle(entry, replace(pub.ss, author=entry.author),
                              facts().patient.ins, pub.kos).json()
        Bundle.model_validate(data)
        dr = _resource(data, "DocumentReference")
        kinds = {c["resourceType"] for c in dr["contained"]}
        assert kinds == {"Patient", "PractitionerRole", "Practitioner", "Organization"}
        assert dr["custodian"] == {"reference": "#author-org"}
        assert entry_from_document_reference(dr) == entry
        assert submission_set_from_list(_resource(data, "List")).author == entry.author


def test_replacement_bundle_patches_the_old_document() -> None:
    """R8 / MHD 4.2: the new DocumentReference ``replaces`` the old one, and the Bundle sets the
    old one to ``superseded`` (FHIRPath Patch on its uniqueId)."""
    pub = publication()
    data = bundle_json(pub, replaces="1.2.3.4")
    Bundle.model_validate(data)
    patch = data["entry"][1]
    assert patch["request"] == {"method": "PATCH", "url":
                                "DocumentReference?identifier=urn:ietf:rfc:3986|urn:oid:1.2.3.4"}
    ops = patch["resource"]["parameter"][0]["part"]
    assert {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in ops} == {
        "type": "replace", "path": "DocumentReference.status", "value": "superseded"}
    rel = _resource(data, "DocumentReference")["relatesTo"][0]
    assert rel["code"] == "replaces" and rel["target"]["reference"] == patch["request"]["url"]


# ------------------------------------------------------- end to end through the simulator

def _ids(entries, uid: str):  # noqa: ANN001, ANN202
    return [e for e in entries if e.unique_id == uid]


def test_stored_study_published_over_mhd_is_seen_by_xds(publishing_gateway, tmp_path: Path,
                                                        sim: Sim, mhd: MhdTransport,
                                                        client: DmpClient) -> None:
    """Acceptance: the ITI-65 bundle of a real stored study's manifest is accepted, found by
    ITI-67 and ITI-18; the Binary and ITI-43 return the same KOS bytes; a replacement
    supersedes the old one; a withdrawal shows in both kinds of query."""
    gw = publishing_gateway
    study, files = write_study(tmp_path / "study")
    storescu(files, gw.dicom_port)
    settings = load_settings(data_dir=gw.data_dir, database_url=gw.database_url,
                             repository_oid="1.2.250.1.999.1.1",
                             institution_name="CENTRE IMAGERIE TEST", structure_id="300017985",
                             healthcare_facility_type="SA07", public_url=gw.url)
    index = InstanceIndex(create_index_engine(gw.database_url))
    try:
        first = build_study_manifest(index, settings, study)
        second = build_study_manifest(index, settings, study)  # a corrected KOS
    finally:
        index.engine.dispose()
    ins = first.facts.patient.ins
    assert (ins.matricule, ins.oid) == (INS, INS_TEST_OID)
    e1, e2 = document_entry(first, settings), document_entry(second, settings)
    vihf = vihf_for(e1.patient_id)

    receipt = mhd.submit(OutgoingDocument(ins, e1, first.kos_bytes))
    found = mhd.find(ins, e1.unique_id)
    assert found is not None and (found.status, found.entry_uuid) == ("Approved",
                                                                      receipt.entry_uuid)
    xds = _ids(client.find_documents(e1.patient_id, vihf), e1.unique_id)
    assert [(x.entry_uuid, x.status, x.class_code.code, x.hash_sha1, x.size) for x in xds] == [
        (receipt.entry_uuid, "Approved", "31", e1.hash_sha1, len(first.kos_bytes))]
    acc = next(r.cxi() for r in e1.reference_ids if r.kind.endswith("accession"))
    assert _ids(client.find_documents_by_reference_id(e1.patient_id, [acc], vihf), e1.unique_id)
    assert client.retrieve_document(xds[0].repository_unique_id, e1.unique_id, vihf) == \
        first.kos_bytes
    with fhir_http(sim) as http:
        page = http.get("DocumentReference", params={
            "patient.identifier": f"urn:oid:{ins.oid}|{ins.matricule}", "status": "current"}).json()
        dr = next(x["resource"] for x in page["entry"]
                  if x["resource"]["masterIdentifier"]["value"] == f"urn:oid:{e1.unique_id}")
        assert entry_from_document_reference(dr) == e1  # every field as submitted
        kos = http.get(dr["content"][0]["attachment"]["url"])
        assert kos.status_code == 200 and kos.content == first.kos_bytes
        assert kos.headers["content-type"] == "application/dicom"

    # Replacement (R8): relatesTo replaces + PATCH superseded in one transaction.
    mhd.submit(OutgoingDocument(ins, e2, second.kos_bytes, replaces_unique_id=e1.unique_id))
    assert mhd.find(ins, e1.unique_id).status == "Deprecated"
    assert mhd.find(ins, e2.unique_id).status == "Approved"
    approved = client.find_documents(e1.patient_id, vihf)
    assert not _ids(approved, e1.unique_id) and _ids(approved, e2.unique_id)
    with fhir_http(sim) as http:
        page = http.get("DocumentReference", params={
            "patient.identifier": f"urn:oid:{ins.oid}|{ins.matricule}",
            "identifier": f"urn:oid:{e2.unique_id}"}).json()
        assert page["total"] == 1
        rel = page["entry"][0]["resource"]["relatesTo"]
        assert rel == [{"code": "replaces", "target": {"reference": "DocumentReference/" +
                                                       receipt.entry_uuid[len("urn:uuid:"):]}}]

    # Withdrawal: superseded (= XDS Deprecated) in both views; a second one is refused.
    mhd.withdraw(ins, e2.unique_id)
    assert mhd.find(ins, e2.unique_id).status == "Deprecated"
    assert not _ids(client.find_documents(e1.patient_id, vihf), e2.unique_id)
    assert [x.status for x in _ids(client.find_documents(
        e1.patient_id, vihf, statuses=("Deprecated",)), e2.unique_id)] == ["Deprecated"]
    with pytest.raises(TransportRefused) as exc:
        mhd.withdraw(ins, e2.unique_id)
    assert exc.value.code == "XDSMetadataUpdateError"

    # What a vendor does by hand (README): `drimbox mhd-bundle` output POSTed to /fhir.
    gw.extra_env["DRIMBOX_DMP_CONTENT_TYPE"] = "04"
    out = tmp_path / "bundle.json"
    proc = cli(gw, "mhd-bundle", study, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    posted = json.loads(out.read_text())
    uid = _resource(posted, "DocumentReference")["masterIdentifier"]["value"][len("urn:oid:"):]
    with fhir_http(sim) as http:
        r = http.post("", content=out.read_bytes(),
                      headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 3
    assert _ids(client.find_documents(e1.patient_id, vihf), uid)


def test_xds_published_document_is_found_over_mhd(client: DmpClient, mhd: MhdTransport,
                                                 sim: Sim) -> None:
    """The other way: ITI-41 publishes, ITI-67 finds it with the same entryUUID and the Binary
    is the KOS; ITI-57 deprecates it and ITI-67 sees it superseded."""
    pub = publication()
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    xds = client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])[0]
    found = mhd.find(facts().patient.ins, pub.entry.unique_id)
    assert found is not None and (found.entry_uuid, found.status) == (xds.entry_uuid, "Approved")
    with fhir_http(sim) as http:
        dr = http.get(f"DocumentReference/{xds.entry_uuid[len('urn:uuid:'):]}").json()
        assert entry_from_document_reference(dr) == pub.entry
        assert http.get(f"Binary/{pub.entry.unique_id}").content == pub.kos
        as_json = http.get(f"Binary/{pub.entry.unique_id}",
                           headers={"Accept": "application/fhir+json"}).json()
        assert base64.b64decode(as_json["data"]) == pub.kos
        assert http.get("Binary/1.2.3.4.5").status_code == 404
    # An ITI-57 deprecation is a superseded DocumentReference on the FHIR side.
    client.deprecate(xds.entry_uuid, replace(pub.ss, unique_id=new_oid()), pub.vihf)
    assert mhd.find(facts().patient.ins, pub.entry.unique_id).status == "Deprecated"


# --------------------------------------------------------------------- refused submissions

def _drop_category(b: dict) -> None:
    del _resource(b, "DocumentReference")["category"]


def _wrong_format(b: dict) -> None:
    _resource(b, "DocumentReference")["content"][0]["format"]["code"] = \
        "urn:ihe:rad:1.2.840.10008.5.1.4.1.1.88.59"


def _bad_hash(b: dict) -> None:
    _resource(b, "DocumentReference")["content"][0]["attachment"]["hash"] = \
        base64.b64encode(hashlib.sha1(b"another document").digest()).decode()  # noqa: S324


def _bad_size(b: dict) -> None:
    _resource(b, "DocumentReference")["content"][0]["attachment"]["size"] += 1


def _no_custodian(b: dict) -> None:
    del _resource(b, "DocumentReference")["custodian"]


def _no_confidentiality(b: dict) -> None:
    _resource(b, "DocumentReference")["securityLabel"] = []


def _superseded(b: dict) -> None:
    _resource(b, "DocumentReference")["status"] = "superseded"


BROKEN = [
    pytest.param(_drop_category, 422, "XDSRegistryMetadataError", "DocumentReference.category",
                 "classCode", id="missing-category"),
    pytest.param(_wrong_format, 422, "XDSRegistryMetadataError",
                 "DocumentReference.content.format", "urn:ihe:rad", id="wrong-format"),
    pytest.param(_bad_hash, 422, "XDSNonIdenticalHash", "DocumentReference.content.attachment.hash",
                 "SHA-1", id="hash-mismatch"),
    pytest.param(_bad_size, 422, "XDSNonIdenticalSize", "DocumentReference.content.attachment.size",
                 "bytes", id="size-mismatch"),
    pytest.param(_no_custodian, 422, "XDSRegistryMetadataError", "DocumentReference.custodian",
                 "PDSm", id="pdsm-custodian"),
    pytest.param(_no_confidentiality, 422, "XDSRegistryMetadataError",
                 "DocumentReference.securityLabel", "confidentiality", id="no-confidentiality"),
    pytest.param(_superseded, 422, "XDSRegistryMetadataError", "DocumentReference.status",
                 "superseded", id="not-current"),
]


@pytest.mark.parametrize(("mutate", "status", "code", "expression", "words"), BROKEN)
def test_broken_submission_is_refused(sim: Sim, mhd: MhdTransport, mutate, status: int,  # noqa: ANN001
                                      code: str, expression: str, words: str) -> None:
    """The HTTP status and OperationOutcome of each refusal, then the same refusal through the
    transport as TransportRefused; nothing is stored."""
    pub = publication()
    data = bundle_json(pub)
    mutate(data)
    with fhir_http(sim) as http:
        r = http.post("", json=data, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == status, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    issue = next(i for i in oo["issue"] if i["details"]["text"] == code)
    assert issue["severity"] == "error" and issue["expression"] == [expression]
    assert words in issue["diagnostics"]
    with pytest.raises(TransportRefused) as exc:
        mhd.request("POST", "", json=data)
    assert code in [ref.code for ref in exc.value.refusals]
    assert mhd.find(facts().patient.ins, pub.entry.unique_id) is None


def test_bad_ins_key_is_refused(sim: Sim, mhd: MhdTransport) -> None:
    """R19: the INS of subject (and of the submission set) fails its key → XDSUnknownPatientId."""
    pub = publication()
    good = facts().patient.ins.matricule
    bad = good[:13] + ("00" if good[13:] != "00" else "01")
    data = json.loads(json.dumps(bundle_json(pub)).replace(good, bad))
    with pytest.raises(TransportRefused) as exc:
        mhd.request("POST", "", json=data)
    refusals = {(r.code, r.location) for r in exc.value.refusals}
    assert ("XDSUnknownPatientId", "DocumentReference.subject") in refusals
    assert ("XDSUnknownPatientId", "List.subject") in refusals
    assert any("key" in r.text for r in exc.value.refusals)
    with fhir_http(sim) as http:  # searching with that INS is a 400 too
        r = http.get("DocumentReference", params={"patient.identifier":
                                                  f"urn:oid:{INS_TEST_OID}|{bad}"})
        assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == \
            "XDSUnknownPatientId"


def test_malformed_bundles_get_400(sim: Sim) -> None:
    pub = publication()
    with fhir_http(sim) as http:
        def post(body) -> httpx.Response:  # noqa: ANN001
            return http.post("", content=body if isinstance(body, bytes) else json.dumps(body),
                             headers={"Content-Type": "application/fhir+json"})

        r = post(b"<Bundle/>")
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "structure"
        r = http.post("", content=b"<Bundle xmlns='http://hl7.org/fhir'/>",
                      headers={"Content-Type": "application/fhir+xml"})
        assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
        r = post({"resourceType": "Bundle", "type": "transaction", "entry": "x"})
        assert r.status_code == 400
        assert "valid FHIR R4 Bundle" in r.json()["issue"][0]["diagnostics"]
        r = post({**bundle_json(pub), "type": "batch"})
        assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.type"]
        no_list = bundle_json(pub)
        no_list["entry"] = no_list["entry"][1:]
        assert post(no_list).status_code == 400
        orphan = bundle_json(pub)  # the attachment points at no Binary of the Bundle
        _resource(orphan, "DocumentReference")["content"][0]["attachment"]["url"] = "urn:uuid:x"
        r = post(orphan)
        assert r.status_code == 422 and r.json()["issue"][0]["details"]["text"] == \
            "XDSMissingDocument"


def test_replacement_rules(mhd: MhdTransport, sim: Sim) -> None:
    """R8 on the FHIR face: an unknown replaced document is 404; relatesTo without the PATCH of
    the old one is 422; replacing a superseded one is XDSRegistryDeprecatedDocumentError."""
    old = publication()
    mhd.submit(outgoing(old))
    unknown = publication()
    with pytest.raises(TransportRefused) as exc:
        mhd.submit(outgoing(unknown, replaces="1.2.3.4.5.6"))
    assert exc.value.code == "XDSRegistryError"
    with fhir_http(sim) as http:
        r = http.post("", json=bundle_json(unknown, replaces="1.2.3.4.5.6"),
                      headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 404
        no_patch = bundle_json(unknown, replaces=old.entry.unique_id)
        del no_patch["entry"][1]
        r = http.post("", json=no_patch, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 422 and "superseded by a PATCH" in r.text
    new = publication(accession=old.accession)
    mhd.submit(outgoing(new, replaces=old.entry.unique_id))
    again = publication(accession=old.accession)
    with pytest.raises(TransportRefused) as exc:
        mhd.submit(outgoing(again, replaces=old.entry.unique_id))
    assert exc.value.code == "XDSRegistryDeprecatedDocumentError"
    # The replaced document may also be named by its entryUUID only.
    current = mhd.find(facts().patient.ins, new.entry.unique_id)
    third = publication(accession=old.accession)
    mhd.submit(OutgoingDocument(facts().patient.ins, third.entry, third.kos,
                                replaces_entry_uuid=current.entry_uuid))
    assert mhd.find(facts().patient.ins, new.entry.unique_id).status == "Deprecated"
    with pytest.raises(TransportRefused) as exc:  # the same uniqueId twice
        mhd.submit(outgoing(new))
    assert exc.value.code == "XDSDuplicateUniqueIdInRegistry"


# ------------------------------------------------------------- transport errors (R7, outbox)

def test_no_client_certificate_is_unavailable(sim: Sim) -> None:
    """R7: without the ORG certificate the simulator's TLS refuses us before any HTTP exchange,
    so there is no HTTP status to read: the transport says TransportUnavailable (a renewed
    certificate fixes it), never TransportRefused, and nothing is stored."""
    pub = publication()
    with transport(sim, client_cert=False) as t, pytest.raises(TransportUnavailable):
        t.submit(outgoing(pub))
    with transport(sim) as t:
        assert t.find(facts().patient.ins, pub.entry.unique_id) is None


def test_server_errors_and_lost_answers_are_unavailable(sim: Sim, mhd: MhdTransport) -> None:
    """5xx, 503 OperationOutcome, a closed port and an answer cut after the store are all
    TransportUnavailable; after the cut, find() shows the document is there (no resubmit)."""
    pub = publication()
    sim.inject("http500", 1)
    with pytest.raises(TransportUnavailable, match="HTTP 500"):
        mhd.submit(outgoing(pub))
    assert mhd.find(facts().patient.ins, pub.entry.unique_id) is None
    sim.inject("soap_fault", 1)
    with pytest.raises(TransportUnavailable, match="HTTP 503"):
        mhd.find(facts().patient.ins, pub.entry.unique_id)
    sim.inject("drop_after_store", 1)
    with pytest.raises(TransportUnavailable):
        mhd.submit(outgoing(pub))
    assert mhd.find(facts().patient.ins, pub.entry.unique_id).status == "Approved"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with transport(sim, base=f"https://127.0.0.1:{closed}/fhir") as t:
        with pytest.raises(TransportUnavailable, match="unreachable"):
            t.submit(outgoing(publication()))


def test_transport_from_settings(sim: Sim, pki, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """``dmp_transport = "mhd"``: the factory the outbox uses builds a working transport, and
    says which setting is missing."""
    from gateway.config import ConfigError

    monkeypatch.delenv("DRIMBOX_CONFIG", raising=False)
    settings = load_settings(dmp_transport="mhd", dmp_fhir_url=f"{sim.base}/fhir",
                             dmp_ca_bundle=pki.ca_cert, dmp_client_cert=pki.client_cert,
                             dmp_client_key=pki.client_key, dmp_content_type="04",
                             dmp_source_id=SOURCE_ID, dmp_timeout=10)
    pub = publication()
    with MhdTransport.from_settings(settings) as t:
        receipt = t.submit(outgoing(pub))
        assert t.find(facts().patient.ins, pub.entry.unique_id).entry_uuid == receipt.entry_uuid
    with pytest.raises(ValueError, match="dmp_content_type"):
        MhdTransport.from_settings(settings.model_copy(update={"dmp_content_type": ""}))
    with pytest.raises(ConfigError, match="dmp_fhir_url.*https"):
        load_settings(dmp_fhir_url="http://dmp.example/fhir")


def test_search_and_patch_answers(sim: Sim, mhd: MhdTransport) -> None:
    """ITI-67 without patient.identifier or with an unknown parameter is 400; the status PATCH
    (PDSm flux 03) answers 415 / 405 / 404 / 422 as the guide lists, and 200 when it applies."""
    pub = publication()
    mhd.submit(outgoing(pub))
    ins = facts().patient.ins
    who = f"urn:oid:{ins.oid}|{ins.matricule}"
    ident = {"identifier": f"urn:ietf:rfc:3986|urn:oid:{pub.entry.unique_id}"}
    with fhir_http(sim) as http:
        assert http.get("DocumentReference").status_code == 400
        r = http.get("DocumentReference", params={"patient.identifier": who, "author": "x"})
        assert r.status_code == 400 and "'author'" in r.json()["issue"][0]["diagnostics"]
        patch = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "DocumentReference.securityLabel"},
            {"name": "value", "valueCode": "R"}]}]}
        fhir = {"Content-Type": "application/fhir+json"}
        assert http.patch("DocumentReference", params=ident, json=patch).status_code == 415
        assert http.request("PATCH", "DocumentReference", params=ident, json=patch,
                            headers=fhir).status_code == 405
        patch["parameter"][0]["part"][1]["valueString"] = "DocumentReference.status"
        patch["parameter"][0]["part"][2]["valueCode"] = "superseded"
        r = http.request("PATCH", "DocumentReference", json=patch, headers=fhir,
                         params={"identifier": "urn:oid:1.2.3.4.5.6.7"})
        assert r.status_code == 404
        r = http.request("PATCH", "DocumentReference", params=ident, json=patch, headers=fhir)
        assert r.status_code == 200 and r.json()["status"] == "superseded"
        r = http.request("PATCH", "DocumentReference", params=ident, json=patch, headers=fhir)
        assert r.status_code == 422
        current = http.get("DocumentReference", params={"patient.identifier": who,
                                                        "status": "current", **ident}).json()
        assert current["total"] == 0
