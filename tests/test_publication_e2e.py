# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""Studies sent with storescu to ``drimbox serve`` become
stable, the publication outbox publishes them to a real ``drimbox dmp-sim`` over mutual TLS
(R4-R8), and the simulator is queried back over ITI-18 / ITI-43. Both index back-ends.

Faults (simulator down, HTTP 500, response lost after the store, gateway SIGKILLed while a
submission is in flight) must end with every publication in the DMP exactly once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from dicom_factory import make_instance
from dmp_support import REPO, Sim, free_port, pki, sim, vihf_for  # noqa: F401
from peers import storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from test_manifest_e2e import INS, INS_TEST_OID, cli, stored_instances, write_study

from gateway.index import outbox
from gateway.index.engine import create_index_engine
from gateway.index.manifests import manifest_scope
from gateway.index.store import InstanceIndex
from gateway.manifest.kos import referenced_instances
from gateway.manifest.xds_metadata import PublishedEntry

PATIENT_ID = f"{INS}^^^&{INS_TEST_OID}&ISO^NH"


def dmp_env(sim: Sim, **extra: str) -> dict[str, str]:
    pki = sim.pki
    env = dict(
        DRIMBOX_REPOSITORY_OID="1.2.250.1.999.1.1",
        DRIMBOX_INSTITUTION_NAME="CENTRE IMAGERIE TEST",
        DRIMBOX_STRUCTURE_ID="300017985",
        DRIMBOX_HEALTHCARE_FACILITY_TYPE="SA07",
        DRIMBOX_STUDY_STABLE_SECONDS="1",
        DRIMBOX_DICOM_WORKERS="0",
        DRIMBOX_DMP_REGISTRY_URL=f"{sim.base}/registry",
        DRIMBOX_DMP_REPOSITORY_URL=f"{sim.base}/repository",
        DRIMBOX_DMP_CA_BUNDLE=str(pki.ca_cert),
        DRIMBOX_DMP_CLIENT_CERT=str(pki.client_cert),
        DRIMBOX_DMP_CLIENT_KEY=str(pki.client_key),
        DRIMBOX_DMP_SIGN_CERT=str(pki.sign_cert),
        DRIMBOX_DMP_SIGN_KEY=str(pki.sign_key),
        DRIMBOX_DMP_STRUCTURE_ID="499700367909006",
        DRIMBOX_DMP_ACTIVITY_SECTOR="SA07",
        DRIMBOX_DMP_AUTHOR_ID="899700367909",
        DRIMBOX_DMP_AUTHOR_NAME="Alain PAT-SIX",
        DRIMBOX_DMP_LPS_ID="LPS-TEST",
        DRIMBOX_DMP_LPS_HOMOLOGATION_ID="HOMOL-TEST",
        DRIMBOX_DMP_TIMEOUT="4",
        DRIMBOX_OUTBOX_BACKOFF_INITIAL="0.3",
        DRIMBOX_OUTBOX_BACKOFF_MAX="1.5",
        DRIMBOX_OUTBOX_POLL_INTERVAL="0.2",
    )
    env.update(extra)
    return env


def start_gateway(gateway_factory, sim: Sim, **extra: str):  # noqa: ANN001, ANN201
    gw = gateway_factory(**dmp_env(sim, **extra))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    return gw.start()


class IndexView:
    """The gateway's index, read from the test (the same database the child process uses)."""

    def __init__(self, database_url: str) -> None:
        self.index = InstanceIndex(create_index_engine(database_url))

    def rows(self, study: str | None = None) -> list[outbox.OutboxRow]:
        with self.index.read() as s:
            return outbox.list_rows(s, study_uid=study)

    def kos_bytes(self, row_id: int) -> bytes:
        from gateway.index.models import OutboxItem

        with self.index.read() as s:
            return s.get(OutboxItem, row_id).kos_bytes

    def wait(self, predicate, what: str, timeout: float = 60):  # noqa: ANN001, ANN201
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {self.rows()}")

    def wait_done(self, study: str, count: int = 1, timeout: float = 60) -> list[outbox.OutboxRow]:
        def done():  # noqa: ANN202
            rows = self.rows(study)
            ok = [r for r in rows if r.state == "done"]
            return ok if len(ok) >= count and all(r.state in ("done",) for r in rows) else None
        return self.wait(done, f"{count} done row(s) for {study}", timeout)

    def close(self) -> None:
        self.index.engine.dispose()


@pytest.fixture
def view(database_url: str):  # noqa: ANN201
    v = IndexView(database_url)
    yield v
    v.close()


def dmp_entries(sim: Sim, statuses=("Approved", "Deprecated")) -> list[PublishedEntry]:  # noqa: ANN001
    with sim.client() as c:
        return c.find_documents(PATIENT_ID, vihf_for(PATIENT_ID), statuses=statuses)


def of_study(entries: list[PublishedEntry], study: str) -> list[PublishedEntry]:
    return [e for e in entries if any(r.startswith(study + "^") for r in e.reference_ids)]


def extra_instance(folder: Path, study: str, n: int) -> Path:
    ds = make_instance(study_uid=study, patient_id=INS, ins_oid=INS_TEST_OID, seed=900 + n,
                       accession="ACN108", instance_number=50 + n, series_number=9)
    issuer = Dataset()
    issuer.UniversalEntityID = "1.2.250.1.213.4.5.2.5"
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"extra{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# -------------------------------------------------------------------------------- publication

def test_stable_study_is_published_to_the_dmp(gateway_factory, sim: Sim, view: IndexView,
                                              tmp_path: Path) -> None:
    """storescu → stable → outbox → dmp-sim over mTLS (validation passes); ITI-18 by INS finds
    the KOS and ITI-43 returns the very bytes the gateway built (R3-R7). A study without a usable
    INS gets no outbox row and says why (R19)."""
    gw = start_gateway(gateway_factory, sim, DRIMBOX_DICOM_WORKERS="2")  # metrics across processes
    study, files = write_study(tmp_path / "study")
    local, local_files = write_study(tmp_path / "local", patient_id="IPP101", ins_oid=None,
                                     issuer="AUT-AFFECTATION", per_series=1)
    storescu(files + local_files, gw.dicom_port)

    (row,) = view.wait_done(study)
    assert row.kind == "publish" and row.attempts == 1 and row.entry_uuid.startswith("urn:uuid:")
    found = of_study(dmp_entries(sim, ("Approved",)), study)
    assert [(e.unique_id, e.entry_uuid, e.status) for e in found] == [
        (row.kos_uid, row.entry_uuid, "Approved")]
    e = found[0]
    assert (e.class_code.code, e.type_code.code, e.format_code.code) == (
        "31", "IMG-KOS", "1.2.840.10008.5.1.4.1.1.88.59")
    with sim.client() as c:
        kos_bytes = c.retrieve_document(e.repository_unique_id, e.unique_id, vihf_for(PATIENT_ID))
    assert kos_bytes == view.kos_bytes(row.id)
    kos_path = tmp_path / "kos.dcm"
    kos_path.write_bytes(kos_bytes)
    kos = dcmread(kos_path)
    assert kos.SOPInstanceUID == row.kos_uid and kos.PatientID == INS
    assert referenced_instances(kos) == stored_instances(gw, study)
    with view.index.read() as s:
        scope = manifest_scope(s, row.kos_uid)
    assert scope is not None and scope.is_current  # opens access (R10)

    shown = json.loads(cli(gw, "study", "show", study, "--json").stdout)
    pub = shown["publication"]
    assert pub["state"] == "published" and pub["current_kos_uid"] == row.kos_uid
    assert pub["current_entry_uuid"] == row.entry_uuid
    assert [h["event"] for h in pub["history"]] == ["built", "queued", "published"]
    text = cli(gw, "study", "show", study).stdout
    assert f"publication  published (current KOS {row.kos_uid}" in text
    assert f"published [#{row.id}] {row.kos_uid} entryUUID {row.entry_uuid}" in text

    # No usable INS: stable, but nothing queued, and the reason is kept.
    def refused_shown():  # noqa: ANN202
        state = json.loads(cli(gw, "study", "show", local, "--json").stdout)
        return state if state["publication"]["history"] else None
    state = view.wait(refused_shown, "the not-publishable event")
    assert state["publication"]["state"] == "not published"
    assert [h["event"] for h in state["publication"]["history"]] == ["not_publishable"]
    assert "absent" in state["publication"]["history"][0]["detail"]
    assert view.rows(local) == []
    listed = json.loads(cli(gw, "outbox", "list", "--json").stdout)
    assert listed["counts"]["done"] == 1 and [r["id"] for r in listed["rows"]] == [row.id]
    assert 'drimbox_outbox_rows{state="done"} 1.0' in gw.metrics()


def test_refused_submission_stops_with_the_dmp_code(gateway_factory, sim: Sim, view: IndexView,
                                                   tmp_path: Path) -> None:
    """A submission the DMP refuses (here the KOS bytes no longer match the DocumentEntry's
    hash: XDSNonIdenticalHash) is marked refused with the code and text and not retried; ``drimbox outbox retry`` sends it once more on demand. The row was
    queued by ``drimbox publish`` while the gateway was down: the worker takes it at start."""
    gw = start_gateway(gateway_factory, sim, DRIMBOX_AUTO_PUBLISH="false")
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    gw.stop()

    proc = cli(gw, "publish", study)
    assert proc.returncode == 0, proc.stderr
    (row,) = view.rows(study)
    assert proc.stdout.startswith(f"outbox #{row.id}: publish of KOS {row.kos_uid}")
    from gateway.index.models import OutboxItem

    with view.index.write() as s:  # corrupt the kept bytes: the DMP sees a hash mismatch
        item = s.get(OutboxItem, row.id)
        item.kos_bytes = item.kos_bytes[:-1] + bytes([item.kos_bytes[-1] ^ 0xFF])

    gw.start()
    refused = view.wait(lambda: [r for r in view.rows(study) if r.state == "refused"],
                        "the refusal")[0]
    assert refused.error_code == "XDSNonIdenticalHash"
    assert "DocumentKOS" in refused.error_text and "hash" in refused.error_text.lower()
    time.sleep(2)  # several backoff periods: no retry of a refusal
    assert view.rows(study)[0].attempts == 1
    assert of_study(dmp_entries(sim), study) == []
    listed = cli(gw, "outbox", "list", "--state", "refused").stdout
    assert f"#{row.id}" in listed and "REFUSED XDSNonIdenticalHash" in listed
    shown = json.loads(cli(gw, "study", "show", study, "--json").stdout)["publication"]
    assert shown["state"] == "refused"
    assert shown["history"][-1]["event"] == "refused"
    assert "XDSNonIdenticalHash" in shown["history"][-1]["detail"]
    assert 'drimbox_outbox_rows{state="refused"} 1.0' in gw.metrics()

    assert cli(gw, "outbox", "retry", str(row.id)).returncode == 0
    view.wait(lambda: view.rows(study)[0].attempts == 2 and view.rows(study)[0].state == "refused",
              "the second refusal")
    assert cli(gw, "outbox", "retry", "999999").returncode == 1

    # A fresh publication supersedes the refused one (which can then no longer be retried).
    assert cli(gw, "publish", study).returncode == 0
    done = view.wait(lambda: [r for r in view.rows(study) if r.state == "done"],
                     "the new publication")
    assert [r.state for r in view.rows(study)] == ["done", "superseded"]
    assert [e.unique_id for e in of_study(dmp_entries(sim), study)] == [done[0].kos_uid]
    assert cli(gw, "outbox", "retry", str(row.id)).returncode == 1


def test_untrusted_vihf_signer_is_refused_not_retried(gateway_factory, sim: Sim,
                                                      view: IndexView, tmp_path: Path) -> None:
    """R6: a VIHF signed with a certificate the DMP does not trust (a misconfigured signing
    key) is a WS-Security refusal: the row stops with ``wsse:InvalidSecurityToken`` and the
    DMP's text, and the DMP holds nothing."""
    gw = start_gateway(gateway_factory, sim, DRIMBOX_DMP_SIGN_CERT=str(sim.pki.rogue_sign_cert),
                       DRIMBOX_DMP_SIGN_KEY=str(sim.pki.rogue_sign_key))
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    (row,) = view.wait(lambda: [r for r in view.rows(study) if r.state == "refused"],
                       "the refusal")
    assert row.error_code == "wsse:InvalidSecurityToken" and "trusted CA" in row.error_text
    time.sleep(1.5)
    assert view.rows(study)[0].attempts == 1
    assert of_study(dmp_entries(sim), study) == []
    assert "REFUSED wsse:InvalidSecurityToken" in cli(gw, "study", "show", study).stdout


# ----------------------------------------------------------------------------- RPLC, withdrawal

def test_new_instances_replace_the_kos_and_unpublish_deprecates_it(
        gateway_factory, sim: Sim, view: IndexView, tmp_path: Path) -> None:
    """R8: a new instance after publication → on the next stability a new KOS replaces the
    previous one (RPLC): the DMP answers Approved queries with the current version only, the old
    manifest is withdrawn. ``drimbox unpublish`` deprecates the current one (ITI-57)."""
    gw = start_gateway(gateway_factory, sim)
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    (first,) = view.wait_done(study)

    storescu([extra_instance(tmp_path / "extra", study, 1)], gw.dicom_port)
    rows = view.wait_done(study, count=2)
    second = rows[0]
    assert second.kind == "replace" and second.replaces_kos_uid == first.kos_uid
    approved = of_study(dmp_entries(sim, ("Approved",)), study)
    assert [e.unique_id for e in approved] == [second.kos_uid]
    everything = {(e.unique_id, e.status) for e in of_study(dmp_entries(sim), study)}
    assert everything == {(first.kos_uid, "Deprecated"), (second.kos_uid, "Approved")}
    with view.index.read() as s:
        old, new = manifest_scope(s, first.kos_uid), manifest_scope(s, second.kos_uid)
    assert old.withdrawn and not old.is_current and new.is_current
    assert len(new.instances) == len(old.instances) + 1

    proc = cli(gw, "unpublish", study, "--reason", "patient request")
    assert proc.returncode == 0, proc.stderr
    with view.index.read() as s:  # access closes at once, before the DMP is told
        assert not manifest_scope(s, second.kos_uid).is_current
    view.wait_done(study, count=3)
    assert of_study(dmp_entries(sim, ("Approved",)), study) == []
    assert {(e.unique_id, e.status) for e in of_study(dmp_entries(sim), study)} == {
        (first.kos_uid, "Deprecated"), (second.kos_uid, "Deprecated")}
    shown = json.loads(cli(gw, "study", "show", study, "--json").stdout)["publication"]
    assert shown["state"] == "withdrawn"
    assert [h["event"] for h in shown["history"]] == [
        "built", "queued", "published", "built", "queued", "published", "replaced",
        "withdrawal_queued", "withdrawn"]
    assert cli(gw, "unpublish", study).returncode == 1  # nothing left to withdraw

    # Un-published by hand: a later stability does not publish it again by itself.
    storescu([extra_instance(tmp_path / "extra", study, 2)], gw.dicom_port)
    view.wait(lambda: [h for h in json.loads(cli(gw, "study", "show", study, "--json").stdout)
                       ["publication"]["history"] if h["event"] == "skipped"], "the skip")
    assert len(view.rows(study)) == 3


# -------------------------------------------------------------------------------------- faults

@pytest.fixture
def own_sim(tmp_path: Path, pki) -> Sim:  # noqa: ANN001
    """A simulator of this test's own, which the test stops and restarts on the same port."""
    from dmp_support import start_sim

    (tmp_path / "sim").mkdir()
    s = start_sim(tmp_path / "sim", pki)
    yield s
    if s.proc.poll() is None:
        s.proc.terminate()
        s.proc.wait(10)


def restart_sim(s: Sim) -> None:
    """Start the simulator again on its port, with its database."""
    import dmp_support

    port = int(s.base.rsplit(":", 1)[1])
    original = dmp_support.free_port
    dmp_support.free_port = lambda: port
    try:
        fresh = dmp_support.start_sim(s.log.parent, s.pki)
    finally:
        dmp_support.free_port = original
    s.proc = fresh.proc


def test_faults_end_with_each_publication_in_the_dmp_exactly_once(
        gateway_factory, own_sim: Sim, view: IndexView, tmp_path: Path) -> None:
    """Simulator down for a while, HTTP 500, response dropped after the store, and the gateway
    SIGKILLed while a submission is in flight: every study ends in the DMP exactly once."""
    sim = own_sim
    gw = start_gateway(gateway_factory, sim)
    studies = []

    # 1. The DMP is down: the row waits and retries with backoff.
    sim.proc.terminate()
    sim.proc.wait(10)
    a, files = write_study(tmp_path / "a", per_series=1)
    storescu(files, gw.dicom_port)
    studies.append(a)
    view.wait(lambda: [r for r in view.rows(a) if r.attempts >= 2 and r.last_error],
              "retries while the DMP is down")
    assert view.rows(a)[0].state in ("pending", "sending")
    restart_sim(sim)
    view.wait_done(a)

    # 2. HTTP 500 twice, then 3. the answer lost after the store.
    for mode, count, name in (("http500", 2, "b"), ("drop_after_store", 1, "c")):
        sim.inject(mode, count)
        study, files = write_study(tmp_path / name, per_series=1)
        storescu(files, gw.dicom_port)
        studies.append(study)
        (row,) = view.wait_done(study)
        assert row.attempts >= 2, (mode, row)
    c_row = view.rows(studies[-1])[0]
    assert c_row.attempts == 2  # stored on the first try: the second only asked (find)

    # 4. SIGKILL while the DMP is still working on a submission (it stores it after 3 s).
    sim.inject("timeout", 1, seconds=3)
    d, files = write_study(tmp_path / "d", per_series=1)
    storescu(files, gw.dicom_port)
    studies.append(d)
    view.wait(lambda: [r for r in view.rows(d) if r.state == "sending"], "the submission of d")
    view.wait(lambda: sim.status()["fault"]["count"] == 0, "the submission at the simulator")
    gw.kill()
    time.sleep(3.5)  # the simulator stores d meanwhile
    gw.start()
    (row,) = view.wait_done(d)
    assert row.attempts == 2
    history = json.loads(cli(gw, "study", "show", d, "--json").stdout)["publication"]["history"]
    assert "not sent again" in history[-1]["detail"]

    entries = dmp_entries(sim)
    for study in studies:
        rows = view.rows(study)
        assert [r.state for r in rows] == ["done"], (study, rows)
        assert [(e.unique_id, e.status) for e in of_study(entries, study)] == [
            (rows[0].kos_uid, "Approved")], study
    kos_entries = [e for e in entries if e.mime_type == "application/dicom"]
    assert len(kos_entries) == len(studies)  # nothing else (FindDocuments also lists Signature01s)
    assert sim.status()["counts"]["entries"] == 2 * len(studies)  # each KOS + its Signature01


def test_serve_refuses_a_dmp_configuration_missing_vihf_values(gateway_factory, sim: Sim) -> None:
    """R6: with a DMP configured but a VIHF value missing, ``serve`` stops at start-up (exit 2)
    naming it, instead of queueing publications the DMP would refuse."""
    gw = gateway_factory(**dmp_env(sim, DRIMBOX_DMP_LPS_ID="", DRIMBOX_DMP_ACTIVITY_SECTOR=""))
    with pytest.raises(RuntimeError, match="exited at start-up") as exc:
        gw.start()
    assert "dmp_activity_sector" in str(exc.value) and "dmp_lps_id" in str(exc.value)
    assert gw.proc.wait(5) == 2


def _bad_ins_key(entry: dict, item) -> None:  # noqa: ANN001 - an OutboxItem
    key = entry["patient_id"][13:15]
    wrong = "00" if key != "00" else "01"
    entry["patient_id"] = entry["patient_id"][:13] + wrong + entry["patient_id"][15:]
    item.ins_matricule = item.ins_matricule[:13] + wrong


@pytest.mark.parametrize(("mutate", "code", "words"), [
    (lambda e, _: e["class_code"].update(code="99"), "XDSRegistryMetadataError", "classCode"),
    (lambda e, _: e["format_code"].update(code="urn:ihe:rad:1.2.840.10008.5.1.4.1.1.88.59"),
     "XDSRegistryMetadataError", "formatCode"),
    # We never send an INS that fails its key: such a row is refused before it leaves.
    (_bad_ins_key, "local:InsError", "key"),
    (lambda e, _: e.update(hash_sha1="0" * 40), "XDSNonIdenticalHash", "hash"),
], ids=["wrong-classCode", "wrong-formatCode", "bad-INS-key", "hash-mismatch"])
def test_each_broken_submission_is_marked_refused_not_retried(
        gateway_factory, sim: Sim, view: IndexView, tmp_path: Path, mutate, code: str,  # noqa: ANN001
        words: str) -> None:
    """The outbox meets the DMP's refusal of a broken submission (the
    metadata kept in its row altered before the worker sends it) and marks the row refused
    with the DMP's code and text; it is never retried on its own. A row whose INS fails its key
    is refused by the worker itself (it never reaches the DMP) and does not block the outbox. (Unsigned or tampered VIHF:
    ``test_untrusted_vihf_signer_is_refused_not_retried``; no client certificate is refused in
    the TLS handshake, which the DMP never answers: transient by design, see
    ``adapters/dmp/errors.py``.)"""
    from gateway.index.models import OutboxItem

    gw = start_gateway(gateway_factory, sim, DRIMBOX_AUTO_PUBLISH="false")
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    gw.stop()
    assert cli(gw, "publish", study).returncode == 0
    (row,) = view.rows(study)
    with view.index.write() as s:
        item = s.get(OutboxItem, row.id)
        entry = json.loads(item.entry_json)
        mutate(entry, item)
        item.entry_json = json.dumps(entry)
    gw.start()
    (refused,) = view.wait(lambda: [r for r in view.rows(study) if r.state == "refused"],
                           "the refusal")
    assert refused.error_code == code, refused.error_text
    assert words.lower() in refused.error_text.lower()
    time.sleep(1.5)
    assert view.rows(study)[0].attempts == 1
    assert of_study(dmp_entries(sim), study) == []
