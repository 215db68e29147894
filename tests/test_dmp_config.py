"""DMP settings (R7): https only, certificate/key pairs, and a DmpClient built from them that
really reaches the simulator over mutual TLS."""

# ruff: noqa: F811 - pytest fixtures imported from dmp_support
from __future__ import annotations

import pytest
from dmp_support import Sim, pki, publication, sim  # noqa: F401

from adapters.dmp.client import DmpClient
from gateway.config import ConfigError, load_settings


def test_dmp_urls_must_be_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIMBOX_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="dmp_registry_url.*https"):
        load_settings(dmp_registry_url="http://dmp.example/registry")
    with pytest.raises(ConfigError, match="dmp_client_cert and dmp_client_key go together"):
        load_settings(dmp_client_cert="/tmp/cert.pem")


def test_client_from_settings_talks_to_the_simulator(sim: Sim, pki,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIMBOX_CONFIG", raising=False)
    settings = load_settings(
        dmp_registry_url=f"{sim.base}/registry", dmp_repository_url=f"{sim.base}/repository",
        dmp_ca_bundle=pki.ca_cert, dmp_client_cert=pki.client_cert, dmp_client_key=pki.client_key,
        dmp_sign_cert=pki.sign_cert, dmp_sign_key=pki.sign_key, dmp_timeout=10)
    pub = publication()
    with DmpClient.from_settings(settings) as c:
        c.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
        assert [e.unique_id for e in c.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])] \
            == [pub.entry.unique_id]
    with pytest.raises(ValueError, match="dmp_sign_cert"):
        DmpClient.from_settings(load_settings(dmp_registry_url=f"{sim.base}/registry"))


def test_dmp_sim_command_refuses_inconsistent_options(pki) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from gateway.cli import main

    r = CliRunner().invoke(main, ["dmp-sim", "--port", "1", "--client-ca", str(pki.ca_cert)])
    assert r.exit_code == 2 and "--client-ca needs --tls-cert" in r.output
    r = CliRunner().invoke(main, ["dmp-sim", "--port", "1"])
    assert r.exit_code == 2 and "--trust-ca" in r.output


def test_vihf_subject_is_the_reports_author() -> None:
    """R6 / FAQ 8801: a publication from a CR is signed for the CR's author (the
    DocumentEntry's authorPerson); one without a report for the configured ``dmp_author_*``."""
    from adapters.dmp.transport import SystemPublisher
    from adapters.dmp.vihf import Role
    from gateway.identity.ins import Ins
    from gateway.manifest.xds_metadata import Author

    publisher = SystemPublisher(author_id="899700367909", author_name="Alain PAT-SIX",
                                structure_id="499700367909006", activity_sector="SA07",
                                roles=(Role("10", "1.2.250.1.213.1.1.5.5"),), lps_id="LPS",
                                lps_name="DRIMBOX", lps_version="1", lps_homologation_id="H")
    patient = Ins("279035121518989", "1.2.250.1.213.1.4.10")
    report = Author(person="801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
                    institution="Centre^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1750803447")
    v = publisher.vihf(patient, report)
    assert (v.subject_id, v.subject_name) == ("801234560801", "Jacques BIDEAULT")
    for none in (None, Author(institution="Centre^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1")):
        v = publisher.vihf(patient, none)
        assert (v.subject_id, v.subject_name) == ("899700367909", "Alain PAT-SIX")
