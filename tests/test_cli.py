"""The ``drimbox`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect

from gateway.config import Settings
from gateway.index.engine import create_index_engine, head_revision, upgrade
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=120, cwd=cwd)


def test_db_upgrade_creates_the_schema(database_url: str, tmp_path: Path) -> None:
    env = {"DRIMBOX_DATA_DIR": str(tmp_path / "data"), "DRIMBOX_DATABASE_URL": database_url}
    first = run_cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert f"index at revision {head_revision()}" in first.stdout
    engine = create_index_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"patients", "studies", "series", "instances", "alembic_version"} <= tables
    again = run_cli("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0 and f"index at revision {head_revision()}" in again.stdout


def test_default_index_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    proc = run_cli("db", "upgrade", env={}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "index.sqlite").is_file()


def test_version_and_help() -> None:
    assert run_cli("--version", env={}).returncode == 0
    helptext = run_cli("--help", env={}).stdout
    for command in ("serve", "db", "import"):
        assert command in helptext


def test_study_show_and_the_accession_issuer_default(tmp_path: Path) -> None:
    """A study whose instances carry an accession number without its issuer: the publication
    refuses it (the XDS-I.b referenceIdList needs the assigning authority), and ``study show``
    says so on its ``publishable`` line too, never "yes" beside the refusal. With the centre's
    ``accession_issuer_oid`` the same study is publishable, its referenceIdList under that OID.
    In process (click's runner): four commands as subprocesses cost ~10 s of CPU."""
    from click.testing import CliRunner

    from gateway.cli import main

    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    engine = create_index_engine(url)
    upgrade(engine)
    study = "1.2.826.0.1.3680043.10.1257.78.1"
    InstanceIndex(engine).record(
        InstanceHeader(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                       sop_instance_uid=study + ".1.1", study_instance_uid=study,
                       series_instance_uid=study + ".1", patient_id="279035121518989",
                       modality="CT", accession_number="ACN42", ins_matricule="279035121518989",
                       ins_oid="1.2.250.1.213.1.4.10"),
        StoredFile("1.2.840.10008.1.2.1", "a" * 64, 10, "k/1", "CT01"))
    engine.dispose()
    env = {"DRIMBOX_DATA_DIR": str(tmp_path / "data"), "DRIMBOX_DATABASE_URL": url,
           "DRIMBOX_REPOSITORY_OID": "1.2.250.1.999.1.1",
           "DRIMBOX_HEALTHCARE_FACILITY_TYPE": "SA07"}

    def drimbox(*args: str):  # noqa: ANN202 - click.testing.Result
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    refused = drimbox("publish", study)
    assert refused.exit_code == 1 and "accession number has no issuer OID" in refused.stderr
    shown = drimbox("study", "show", study).stdout
    assert "publishable  no: referenceIdList: the accession number has no issuer OID" in shown
    assert "publishable  yes" not in shown
    assert "not_publishable referenceIdList: the accession number has no issuer OID" in shown

    env["DRIMBOX_ACCESSION_ISSUER_OID"] = "1.2.250.1.999.2"
    assert "publishable  yes" in drimbox("study", "show", study).stdout
    entry = json.loads(drimbox("manifest", study).stdout)
    assert ("ACN42^^^&1.2.250.1.999.2&ISO^urn:ihe:iti:xds:2013:accession"
            in [r["value"] + "^^^&" + r["assigning_authority"] + "&ISO^" + r["kind"]
                for r in entry["reference_ids"]])
    with pytest.raises(ValidationError, match="accession_issuer_oid"):
        Settings(accession_issuer_oid="ACN-ISSUER")  # validated as an OID
