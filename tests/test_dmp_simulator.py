# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""DmpClient ↔ ``drimbox dmp-sim`` over real mutual TLS on loopback (R4-R8).

The simulator runs as its own process (``python -m gateway.cli dmp-sim``) with a test PKI; every
publication is a real KOS built by gateway.manifest.kos and described by gateway.manifest.xds_metadata.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import pytest
from dmp_support import Sim, client, new_oid, pki, publication, sim, vihf_for  # noqa: F401
from lxml import etree
from test_kos import facts

from adapters.dmp import ebrim
from adapters.dmp import ns as N
from adapters.dmp.client import DmpClient
from adapters.dmp.errors import (
    DmpRefusedError,
    DmpSecurityError,
    DmpTransientError,
)
from adapters.dmp.ns import RIM, SAML2, q
from adapters.dmp.vihf import build_vihf
from gateway.manifest.xds_metadata import Code


def _mine(entries, pub):  # noqa: ANN001, ANN202
    return [e for e in entries if e.unique_id == pub.entry.unique_id]


def test_publish_query_and_retrieve_the_same_kos(client: DmpClient) -> None:
    """R4/R5/R6/R7: ITI-41 accepted; ITI-18 by INS finds it with the R4 codes; ITI-43 returns
    the exact KOS bytes."""
    pub = publication()
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    found = _mine(client.find_documents(pub.entry.patient_id, pub.vihf), pub)
    assert len(found) == 1
    e = found[0]
    assert e.status == "Approved" and e.entry_uuid.startswith("urn:uuid:")
    assert (e.class_code.code, e.type_code.code, e.format_code.code) == (
        "31", "IMG-KOS", "1.2.840.10008.5.1.4.1.1.88.59")
    assert e.hash_sha1 == pub.entry.hash_sha1 and e.size == len(pub.kos)
    assert client.retrieve_document(e.repository_unique_id, e.unique_id, pub.vihf) == pub.kos
    # The signature document is registered too, with the DSG class code (R5).
    sigs = client.get_documents(pub.vihf, unique_ids=[pub.signature_uid])
    assert [s.class_code.code for s in sigs] == [N.DSG_CLASS]


def test_find_by_reference_id_and_filters(client: DmpClient) -> None:
    """R4 referenceIdList: FindDocumentsByReferenceId by accession; FindDocuments filters on
    eventCode and creation time; GetDocuments by entryUUID."""
    pub = publication()
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    acc_ref = next(r for r in pub.entry.reference_ids if r.kind.endswith("accession"))
    acc = acc_ref.cxi()
    ins = facts().patient.ins
    by_ref = client.find_documents_by_reference_id(ins, [acc_ref], pub.vihf)
    assert [e.unique_id for e in by_ref] == [pub.entry.unique_id]
    assert _mine(client.find_documents(ins, pub.vihf), pub)
    other = acc.replace(pub.accession, "NOSUCHACC")
    assert client.find_documents_by_reference_id(pub.entry.patient_id, [other], pub.vihf) == []
    ct = Code("CT", "1.2.250.1.213.1.1.5.618", "")
    mr = Code("MR", "1.2.250.1.213.1.1.5.618", "")
    pid = pub.entry.patient_id
    assert _mine(client.find_documents(pid, pub.vihf, event_codes=(ct,)), pub)
    assert not _mine(client.find_documents(pid, pub.vihf, event_codes=(mr,)), pub)
    created = pub.entry.creation_time
    assert _mine(client.find_documents(pid, pub.vihf, creation_from=created[:8]), pub)
    assert not _mine(client.find_documents(pid, pub.vihf, creation_to=created[:8]), pub)
    uuid_ = _mine(client.find_documents(pid, pub.vihf), pub)[0].entry_uuid
    assert [e.unique_id for e in client.get_documents(pub.vihf, entry_uuids=[uuid_])] == [
        pub.entry.unique_id]


def test_replacement_deprecates_the_old_entry(client: DmpClient) -> None:
    """R8: RPLC → the old entry is Deprecated, status=Approved queries return only the new one;
    replacing a deprecated entry again is refused."""
    old = publication()
    client.provide_and_register(old.entry, old.ss, old.kos, old.vihf, old.signature_uid)
    acc = next(r.cxi() for r in old.entry.reference_ids if r.kind.endswith("accession"))
    old_uuid = client.find_documents_by_reference_id(old.entry.patient_id, [acc], old.vihf)[0].entry_uuid
    new = publication(accession=old.accession)
    client.replace(old_uuid, new.entry, new.ss, new.kos, new.vihf, new.signature_uid)
    current = client.find_documents_by_reference_id(old.entry.patient_id, [acc], old.vihf)
    assert [e.unique_id for e in current] == [new.entry.unique_id]
    both = client.find_documents_by_reference_id(old.entry.patient_id, [acc], old.vihf,
                                                 statuses=("Approved", "Deprecated"))
    assert {(e.unique_id, e.status) for e in both} == {
        (old.entry.unique_id, "Deprecated"), (new.entry.unique_id, "Approved")}
    again = publication(accession=old.accession)
    with pytest.raises(DmpRefusedError) as exc:
        client.replace(old_uuid, again.entry, again.ss, again.kos, again.vihf, again.signature_uid)
    assert exc.value.codes == ["XDSRegistryDeprecatedDocumentError"]


def test_deprecation_and_deletion(client: DmpClient) -> None:
    """R8 un-publication: ITI-57 UpdateAvailabilityStatus → Deprecated; ITI-62 removes it."""
    pub = publication()
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    pid = pub.entry.patient_id
    e = _mine(client.find_documents(pid, pub.vihf), pub)[0]
    ss2 = replace(pub.ss, unique_id=new_oid())
    client.deprecate(e.entry_uuid, ss2, pub.vihf)
    assert not _mine(client.find_documents(pid, pub.vihf), pub)
    assert [x.status for x in _mine(client.find_documents(pid, pub.vihf, statuses=("Deprecated",)),
                                    pub)] == ["Deprecated"]
    with pytest.raises(DmpRefusedError) as exc:  # it is no longer Approved
        client.deprecate(e.entry_uuid, replace(pub.ss, unique_id=new_oid()), pub.vihf)
    assert exc.value.codes == ["XDSMetadataUpdateError"]
    client.delete([e.entry_uuid], pub.vihf)
    assert client.get_documents(pub.vihf, entry_uuids=[e.entry_uuid]) == []


def test_duplicate_unique_id_is_refused(client: DmpClient) -> None:
    """A second submission of the same KOS uniqueId is refused (the outbox must query first)."""
    pub = publication()
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    with pytest.raises(DmpRefusedError) as exc:
        client.provide_and_register(pub.entry, replace(pub.ss, unique_id=new_oid()), pub.kos,
                                    pub.vihf, new_oid())
    assert "XDSDuplicateUniqueIdInRegistry" in exc.value.codes


# ------------------------------------------------------------------ refused submissions (R4)

def _send(client: DmpClient, pub, mutate) -> DmpRefusedError:  # noqa: ANN001
    sub = ebrim.provide_and_register(pub.entry, pub.ss, pub.kos, client._sign_key,
                                     client._sign_cert, pub.signature_uid)
    mutate(sub.body)
    with pytest.raises(DmpRefusedError) as exc:
        client.call(client.endpoints.repository_url, N.ACTION_ITI41, sub.body, pub.vihf,
                    sub.attachments)
    return exc.value


def _context(err: DmpRefusedError, code: str) -> str:
    return " | ".join(e.context for e in err.errors if e.code == code)


def test_missing_class_code_is_refused(client: DmpClient) -> None:
    pub = publication()

    def drop_class(body: etree._Element) -> None:
        eo = body.find(f".//{q(RIM, 'ExtrinsicObject')}[@id='DocumentKOS']")
        cl = eo.find(f"{q(RIM, 'Classification')}[@classificationScheme='{N.DE_CLASS}']")
        eo.remove(cl)

    err = _send(client, pub, drop_class)
    assert err.codes == ["XDSRegistryMetadataError"]
    assert "DocumentKOS: classCode" in _context(err, "XDSRegistryMetadataError")
    assert "missing" in str(err)
    assert not client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])


def test_wrong_format_code_is_refused(client: DmpClient) -> None:
    """The deprecated ``urn:ihe:rad:...`` formatCode is not accepted (R4 / SPEC 2.1)."""
    pub = publication()
    bad = replace(pub.entry, format_code=Code("urn:ihe:rad:1.2.840.10008.5.1.4.1.1.88.59",
                                              "1.2.840.10008.2.6.1", "KOS"))
    with pytest.raises(DmpRefusedError) as exc:
        client.provide_and_register(bad, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    assert exc.value.codes == ["XDSRegistryMetadataError"]
    assert "formatCode" in str(exc.value) and "urn:ihe:rad" in str(exc.value)


def test_bad_ins_key_is_refused(client: DmpClient) -> None:
    """patientId INS^^^&OID&ISO^NH with a wrong key (97 - N mod 97; R19)."""
    pub = publication()
    good = pub.entry.patient_id
    bad_pid = good[:13] + ("00" if good[13:15] != "00" else "01") + good[15:]
    with pytest.raises(DmpRefusedError) as exc:
        client.provide_and_register(replace(pub.entry, patient_id=bad_pid),
                                    replace(pub.ss, patient_id=bad_pid), pub.kos,
                                    vihf_for(bad_pid), pub.signature_uid)
    assert set(exc.value.codes) == {"XDSUnknownPatientId"}
    assert "key" in str(exc.value).lower()


def test_patient_mismatch_is_refused(client: DmpClient) -> None:
    pub = publication()
    other = "1" + pub.entry.patient_id[1:]
    err = _send(client, pub, lambda body: body.find(
        f".//{q(RIM, 'ExternalIdentifier')}[@identificationScheme='{N.SS_PATIENT_ID}']"
    ).set("value", other))
    assert "XDSPatientIdDoesNotMatch" in err.codes


def test_hash_mismatch_is_refused(client: DmpClient) -> None:
    pub = publication()
    with pytest.raises(DmpRefusedError) as exc:
        client.provide_and_register(replace(pub.entry, hash_sha1="0" * 40), pub.ss, pub.kos,
                                    pub.vihf, pub.signature_uid)
    assert exc.value.codes == ["XDSNonIdenticalHash"]
    assert "DocumentKOS" in exc.value.errors[0].context


def test_missing_signature_document_is_refused(client: DmpClient) -> None:
    """R5: no ``signs`` association → refused."""
    pub = publication()

    def drop_signs(body: etree._Element) -> None:
        a = body.find(f".//{q(RIM, 'Association')}[@associationType='{N.SIGNS}']")
        a.getparent().remove(a)

    err = _send(client, pub, drop_signs)
    assert "signs" in _context(err, "XDSRegistryMetadataError")


def test_tampered_metadata_breaks_the_submission_signature(client: DmpClient) -> None:
    """R5: the IHEManifest digest covers the submission set: changing it after signing is caught."""
    pub = publication()

    def retitle(body: etree._Element) -> None:
        rp = body.find(f".//{q(RIM, 'RegistryPackage')}")
        rp.find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}").set("value", "changed")

    err = _send(client, pub, retitle)
    assert "Signature01" in _context(err, "XDSRegistryMetadataError")
    assert "IHEManifest" in str(err)


# ------------------------------------------------------------------------------- VIHF (R6)

def _iti18(client: DmpClient, pub, assertion) -> DmpSecurityError:  # noqa: ANN001
    from adapters.dmp import query
    with pytest.raises(DmpSecurityError) as exc:
        client.call(client.endpoints.registry_url, N.ACTION_ITI18,
                    query.find_documents(pub.entry.patient_id), None, assertion=assertion)
    return exc.value


def test_unsigned_vihf_is_refused(client: DmpClient) -> None:
    pub = publication()
    a = build_vihf(pub.vihf, client._sign_key, client._sign_cert)
    a.remove(a.find(q(N.DS, "Signature")))
    assert _iti18(client, pub, a).codes == ["wsse:FailedCheck"]


def test_tampered_vihf_is_refused(client: DmpClient) -> None:
    pub = publication()
    a = build_vihf(pub.vihf, client._sign_key, client._sign_cert)
    a.find(f".//{q(SAML2, 'NameID')}").text = "810000000000"
    err = _iti18(client, pub, a)
    assert err.codes == ["wsse:FailedCheck"] and "Digest mismatch" in str(err)


def test_missing_vihf_is_refused(client: DmpClient) -> None:
    pub = publication()
    assert _iti18(client, pub, None).codes == ["wsse:InvalidSecurity"]


def test_vihf_from_an_untrusted_ca_is_refused(sim: Sim, pki) -> None:  # noqa: ANN001
    pub = publication()
    with sim.client(sign_cert=pki.rogue_sign_cert, sign_key=pki.rogue_sign_key) as c:
        with pytest.raises(DmpSecurityError) as exc:
            c.find_documents(pub.entry.patient_id, pub.vihf)
    assert exc.value.codes == ["wsse:InvalidSecurityToken"]
    assert "trusted CA" in str(exc.value)


def test_vihf_for_another_patient_is_refused(client: DmpClient) -> None:
    pub = publication()
    other = vihf_for("1" + pub.entry.patient_id[1:])
    with pytest.raises(DmpRefusedError) as exc:
        client.find_documents(pub.entry.patient_id, other)
    assert exc.value.codes == ["XDSPatientIdDoesNotMatch"]


# ------------------------------------------------------------------------------ mTLS (R7)

def test_no_client_certificate_is_refused_by_tls(sim: Sim, pki) -> None:  # noqa: ANN001
    """R7: without the ORG certificate the simulator's TLS layer refuses the client before any
    HTTP. Under TLS 1.3 the refusal arrives after the client's handshake (the client sees the
    connection closed: a transient error); under TLS 1.2 the handshake itself fails (DmpTlsError).
    The same call with the certificate succeeds."""
    import socket
    import ssl

    pub = publication()
    with sim.client(client_cert=False) as c:
        with pytest.raises(DmpTransientError) as exc:
            c.find_documents(pub.entry.patient_id, pub.vihf)
    assert not isinstance(exc.value, DmpRefusedError)
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    port = int(sim.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    with sim.client() as c:
        c.find_documents(pub.entry.patient_id, pub.vihf)


# ------------------------------------------------------------------------- fault injection

def test_http_500_is_a_transient_error(sim: Sim, client: DmpClient) -> None:
    pub = publication()
    sim.inject("http500", 1)
    with pytest.raises(DmpTransientError) as exc:
        client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    assert not isinstance(exc.value, DmpRefusedError)
    assert not client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])
    client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)  # retry
    assert client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])


def test_soap_receiver_fault_is_transient(sim: Sim, client: DmpClient) -> None:
    pub = publication()
    sim.inject("soap_fault", 1)
    with pytest.raises(DmpTransientError, match="Receiver"):
        client.find_documents(pub.entry.patient_id, pub.vihf)


def test_drop_after_store_is_transient_but_stored(sim: Sim, client: DmpClient) -> None:
    """What the outbox relies on: the client sees a transport failure, a later query by uniqueId
    shows the document was stored, so it must not be sent again."""
    pub = publication()
    sim.inject("drop_after_store", 1)
    with pytest.raises(DmpTransientError):
        client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    found = client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])
    assert [e.status for e in found] == ["Approved"]


def test_timeout_is_transient(sim: Sim) -> None:
    pub = publication()
    sim.inject("timeout", 1, seconds=3)
    with sim.client(timeout=1) as c:
        t0 = time.monotonic()
        with pytest.raises(DmpTransientError, match="timeout"):
            c.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
        assert time.monotonic() - t0 < 3
    with sim.client() as c:  # the simulator went on after its sleep: the KOS gets stored
        deadline = time.monotonic() + 20
        while not c.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id]):
            assert time.monotonic() < deadline, "the timed-out submission was never stored"
            time.sleep(0.2)


def test_unknown_action_is_a_sender_fault(client: DmpClient) -> None:
    pub = publication()
    with pytest.raises(DmpRefusedError) as exc:
        client.call(client.endpoints.registry_url, N.ACTION_ITI41, copy.deepcopy(
            ebrim.remove_objects(["urn:uuid:x"])), pub.vihf)
    assert exc.value.codes == ["wsa:ActionNotSupported"]


def test_ans_sample_slot_order_is_accepted_with_a_warning(client: DmpClient) -> None:
    """The ANS sample's referenceIdList slot after the classifications breaks rim.xsd order: the
    simulator accepts it (the DMP does) and says so with a Warning."""
    pub = publication()
    sub = ebrim.provide_and_register(pub.entry, pub.ss, pub.kos, client._sign_key,
                                     client._sign_cert, pub.signature_uid)
    eo = sub.body.find(f".//{q(RIM, 'ExtrinsicObject')}[@id='DocumentKOS']")
    refs = eo.find(f"{q(RIM, 'Slot')}[@name='urn:ihe:iti:xds:2013:referenceIdList']")
    eo.remove(refs)
    eo.find(f"{q(RIM, 'ExternalIdentifier')}").addprevious(refs)
    payload, _ = client.call(client.endpoints.repository_url, N.ACTION_ITI41, sub.body, pub.vihf,
                             sub.attachments)
    from adapters.dmp.query import registry_errors, response_status
    assert response_status(payload) == N.RESPONSE_SUCCESS
    warnings = registry_errors(payload)
    assert [w.is_warning for w in warnings] == [True]
    assert "breaks the ebRIM order" in warnings[0].context
    assert client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])


def test_malformed_messages_get_sender_faults(sim: Sim) -> None:
    """Not SOAP, or MTOM whose xop:Include points at no part: HTTP 400 + SOAP Sender fault."""
    from adapters.dmp.soap import parse_envelope, parse_fault

    with sim.admin() as http:
        r = http.post("/repository", content=b"<notsoap/>",
                      headers={"Content-Type": "application/soap+xml"})
        assert r.status_code == 400
        f = parse_fault(parse_envelope(r.content))
        assert f.code == "Sender" and "not a SOAP 1.2 Envelope" in f.reason
        r = http.post("/repository", content=b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--",
                      headers={"Content-Type": 'multipart/related; type="application/xop+xml"; '
                                               'boundary="b"'})
        assert r.status_code == 400 and b"xop+xml" in r.content
        assert http.get("/registry").status_code == 405
        assert http.post("/nowhere").status_code == 404
