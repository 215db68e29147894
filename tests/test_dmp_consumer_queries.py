# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""What the DMP simulator does for a consumer DRIMbox (R16), over SOAP, mutual TLS and a signed
VIHF against a real ``drimbox dmp-sim``: TD0.2 (the modelled access check) and its states,
FindDocuments' strict checks (unknown parameter, missing INS, unknown code or scheme, bad
VIHF), the filters, documents of several Sources, and the visibility of a document masked to
professionals (MASQUE_PS).

Each test uses patients of its own (fresh valid INS), so the session's simulator can be shared.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import replace

import httpx
import pytest
from dmp_support import client, pki, publication, sim, vihf_for  # noqa: F401

from adapters.dmp import ns as N
from adapters.dmp import patients, query
from adapters.dmp.client import DmpClient
from adapters.dmp.errors import DmpRefusedError, DmpSecurityError
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import Author, Code, xds_patient_id

TEST_OID = "1.2.250.1.213.1.4.10"
MR = Code("MR", "1.2.250.1.213.1.1.5.618", "Magnetic Resonance")
US = Code("US", "1.2.250.1.213.1.1.5.618", "Ultrasound")
KNEE = Code("72696002", "1.2.250.1.213.1.1.5.695", "Genou")
OTHER_CENTRE = Author(
    person="801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
    institution="CH AUTRE VILLE^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^300099999")
CONSUMER = dict(subject_id="899999000002", subject_name="PAUL DURAND",
                structure_id="499999000000202", activity_sector="SA01")


def fresh_ins() -> Ins:
    body = "1" + "".join(secrets.choice("0123456789") for _ in range(12))
    return Ins(f"{body}{97 - int(body) % 97:02d}", TEST_OID)


def publish(c: DmpClient, ins: Ins, *, events=(MR,), author: Author | None = None,  # noqa: ANN001
            flags: tuple[Code, ...] = (), created: str = "", publisher: dict | None = None) -> str:
    """One KOS for ``ins`` as a Source would publish it (ITI-41); returns its uniqueId."""
    pub = publication()
    pid = xds_patient_id(ins)
    entry = replace(pub.entry, patient_id=pid, source_patient_id=pid, event_codes=tuple(events),
                    author=author or pub.entry.author,
                    confidentiality=pub.entry.confidentiality + flags,
                    creation_time=created or pub.entry.creation_time,
                    service_start=created or pub.entry.service_start,
                    service_stop=created or pub.entry.service_stop)
    ss = replace(pub.ss, patient_id=pid, author=entry.author)
    c.provide_and_register(entry, ss, pub.kos, vihf_for(pid, **(publisher or {})),
                           pub.signature_uid)
    return entry.unique_id


def consumer_vihf(ins: Ins, **kw):  # noqa: ANN003, ANN201
    return vihf_for(xds_patient_id(ins), **{**CONSUMER, **kw})


def set_state(sim, ins: Ins, state: str) -> None:  # noqa: ANN001
    with sim.admin() as a:
        r = a.post("/admin/patients", json={"patient_id": xds_patient_id(ins), "state": state})
        assert r.status_code == 204, r.text


def test_td02_states_and_its_vihf(sim, client: DmpClient) -> None:
    """TD0.2: open by default; no DMP, closed and opposition as the simulator was told; the
    VIHF must name the queried patient (an AE acknowledgement), and a bad VIHF is a SOAP fault."""
    ins = fresh_ins()
    assert client.check_access(ins, consumer_vihf(ins)) == patients.DmpAccess(patients.OPEN)
    for state in (patients.NO_DMP, patients.CLOSED, patients.REFUSED):
        set_state(sim, ins, state)
        access = client.check_access(ins, consumer_vihf(ins))
        assert access.status == state and not access.allowed
    other = fresh_ins()
    with pytest.raises(DmpRefusedError) as exc:
        client.check_access(other, consumer_vihf(ins))
    assert exc.value.codes == ["XDSPatientIdDoesNotMatch"]
    with sim.client(sign_cert=sim.pki.rogue_sign_cert, sign_key=sim.pki.rogue_sign_key) as rogue:
        with pytest.raises(DmpSecurityError) as exc:
            rogue.check_access(other, consumer_vihf(other))
    assert exc.value.codes == ["wsse:InvalidSecurityToken"]
    with sim.admin() as a:  # the admin endpoint checks what it is told
        assert a.post("/admin/patients", json={"patient_id": "x", "state": "open"}).status_code \
            == 400
        assert a.post("/admin/patients", json={"patient_id": xds_patient_id(other),
                                                "state": "asleep"}).status_code == 400


def test_queries_of_a_patient_whose_dmp_cannot_be_opened_are_refused(sim, client) -> None:  # noqa: ANN001
    ins = fresh_ins()
    publish(client, ins)
    for state, code in ((patients.NO_DMP, "XDSUnknownPatientId"),
                        (patients.CLOSED, "XDSRegistryError"),
                        (patients.REFUSED, "XDSRegistryError")):
        set_state(sim, ins, state)
        with pytest.raises(DmpRefusedError) as exc:
            client.find_documents(ins, consumer_vihf(ins))
        assert exc.value.codes == [code], state


def test_find_documents_is_checked_strictly(client: DmpClient) -> None:
    """A parameter FindDocuments does not define, a missing patientId, a code outside the
    DRIM-M value sets or schemes, an unknown status: each the XDS error naming it."""
    ins = fresh_ins()
    vihf = consumer_vihf(ins)
    pid = xds_patient_id(ins)

    def errors(params: dict) -> list[tuple[str, str]]:
        with pytest.raises(DmpRefusedError) as exc:
            client.call(client.endpoints.registry_url, N.ACTION_ITI18,
                        query.adhoc_query(N.SQ_FIND_DOCUMENTS, params), vihf)
        return [(e.code, e.context) for e in exc.value.errors]

    approved = query.quote_list([N.STATUS_APPROVED])
    (err,) = errors({"$XDSDocumentEntryPatientId": query.quote(pid),
                     "$XDSDocumentEntryStatus": approved, "$XDSDocumentEntryModality": "'MR'"})
    assert err[0] == "XDSRegistryError" and "$XDSDocumentEntryModality" in err[1]
    (err,) = errors({"$XDSDocumentEntryStatus": approved})
    assert err == ("XDSStoredQueryMissingParam", "$XDSDocumentEntryPatientId is required")
    for value, needle in (("'ZZ^^1.2.250.1.213.1.1.5.618'", "'ZZ' is not in the value set"),
                          ("'MR^^1.2.3.4'", "known eventCode scheme"),
                          ("'MR'", "known eventCode scheme")):
        (err,) = errors({"$XDSDocumentEntryPatientId": query.quote(pid),
                         "$XDSDocumentEntryStatus": approved,
                         "$XDSDocumentEntryEventCodeList": f"({value})"})
        assert err[0] == "XDSRegistryError" and needle in err[1], err
    (err,) = errors({"$XDSDocumentEntryPatientId": query.quote(pid),
                     "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:X')"})
    assert err[0] == "XDSRegistryError"
    # An INS whose key is wrong is refused as a patientId, before anything is looked up.
    bad = pid.replace(ins.matricule, ins.matricule[:-2] + f"{(int(ins.matricule[-2:]) + 1) % 97:02d}")
    with pytest.raises(DmpRefusedError) as exc:
        client.find_documents(bad, vihf_for(bad))
    assert exc.value.codes and exc.value.codes[0].startswith("XDS")


def test_filters_several_sources_and_masked_documents(client: DmpClient, sim) -> None:  # noqa: ANN001
    """Two Sources publish for one patient: both are found; modality and region filters are
    ANDed (one Slot each); the creation range and the accession (FindDocumentsByReferenceId)
    narrow; another patient's document never comes; a document masked to professionals is
    found by its author and by the structure that published it, not by another professional,
    who cannot retrieve it either."""
    ins, other = fresh_ins(), fresh_ins()
    ours = publish(client, ins, events=(MR,), created="20260110101010")
    theirs = publish(client, ins, events=(US, KNEE), author=OTHER_CENTRE,
                     created="20250505050505", publisher={"structure_id": "300099999"})
    masked = publish(client, ins, events=(MR,), author=OTHER_CENTRE, created="20260202020202",
                     flags=(Code("MASQUE_PS", "1.2.250.1.213.1.1.4.13", "Masque"),),
                     publisher={"structure_id": "300099999"})
    publish(client, other, events=(MR,))
    vihf = consumer_vihf(ins)

    def uids(**kw) -> set[str]:  # noqa: ANN003
        return {e.unique_id for e in client.find_documents(ins, vihf, **kw)}

    assert uids() == {ours, theirs}
    assert uids(event_codes=(MR,)) == {ours}
    assert uids(event_codes=((US,), (KNEE,))) == {theirs}
    assert uids(event_codes=((MR,), (KNEE,))) == set()
    assert uids(event_codes=((MR, US),)) == {ours, theirs}
    assert uids(creation_from="20260101", creation_to="20270101") == {ours}
    entry = next(e for e in client.find_documents(ins, vihf) if e.unique_id == theirs)
    assert entry.author_institutions == (OTHER_CENTRE.institution,)
    assert entry.author_persons == (OTHER_CENTRE.person,)
    accession = next(r for r in entry.reference_ids if r.endswith("^urn:ihe:iti:xds:2013:accession"))
    assert uids(reference_ids=[accession]) == {theirs}
    assert uids(reference_ids=[accession], event_codes=(MR,)) == set()
    # The masked document: its author, its publishing structure, nobody else.
    author_vihf = consumer_vihf(ins, subject_id="801234560801", structure_id="1")
    assert masked in {e.unique_id for e in client.find_documents(ins, author_vihf)}
    centre_vihf = consumer_vihf(ins, structure_id="300099999")
    assert masked in {e.unique_id for e in client.find_documents(ins, centre_vihf)}
    repo = entry.repository_unique_id
    with pytest.raises(DmpRefusedError) as exc:
        client.retrieve_document(repo, masked, vihf)
    assert exc.value.codes == ["XDSDocumentUniqueIdError"]
    assert client.retrieve_document(repo, masked, centre_vihf)
    # Another patient's VIHF cannot read this patient's list.
    with pytest.raises(DmpRefusedError) as exc:
        client.find_documents(ins, consumer_vihf(other))
    assert exc.value.codes == ["XDSPatientIdDoesNotMatch"]


def test_admin_patients_is_behind_mutual_tls(sim) -> None:  # noqa: ANN001
    """Without the client certificate the TLS handshake fails: nobody else sets a state."""
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{sim.base}/admin/patients", json={}, timeout=5,
                   verify=ssl.create_default_context(cafile=str(sim.pki.ca_cert)))
