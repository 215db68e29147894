"""``drimbox pacs speedtest`` (DB.SO.102, R20) against a real Orthanc playing the PACS.

The command moves a study from the PACS to a C-STORE SCP of its own and reports the time to
the first image, the bytes and the throughput; these tests check what it reports against what
the PACS holds, and that every way it can go wrong ends with exit status 1 or 2 and a message
saying what to fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import launcher
import pytest
from dicom_factory import make_instance, to_bytes
from orthanc import Orthanc
from peers import free_port
from pydicom.uid import generate_uid

from adapters.pacs.speedtest import REFERENCE_STUDY

ROOT = "1.2.826.0.1.3680043.10.1257."  # the tests' UID prefix (tests/dicom_factory.py)
STUDY = generate_uid(ROOT)
N = 12


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, int, int]]:
    """Orthanc as the PACS, holding one study of N CT instances in two series, taking
    requests from the gateway's AE title (DRIMBOX, the default ``ae_title``) and knowing the
    speed test's AE title SPEEDTEST at a free port; the data sets' total size."""
    port = free_port()
    orthanc = Orthanc(tmp_path_factory.mktemp("pacs"), aet="PACS",
                      modalities={"speedtest": ("SPEEDTEST", "127.0.0.1", port),
                                  "drimbox": ("DRIMBOX", "127.0.0.1", free_port())}).start()
    try:
        total = 0
        series = [generate_uid(ROOT), generate_uid(ROOT)]
        with httpx.Client(timeout=30) as http:
            for i in range(N):
                ds = make_instance(study_uid=STUDY, series_uid=series[i % 2],
                                   instance_number=i + 1, rows=128, cols=128, seed=i)
                data = to_bytes(ds)
                group_len = int.from_bytes(data[140:144], "little")
                total += len(data) - 144 - group_len  # the data set a C-STORE carries
                http.post(f"{orthanc.url}/instances", content=data).raise_for_status()
        yield orthanc, port, total
    finally:
        orthanc.stop()


def speedtest(*args: str, **settings: str) -> tuple[int, dict | None, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(settings)
    done = launcher.run(["pacs", "speedtest", *args], env=env, timeout=120)
    try:
        report = json.loads(done.stdout) if "--json" in args else None
    except json.JSONDecodeError:
        report = None
    return done.returncode, report, done.stdout + done.stderr


def test_speedtest_reports_every_image_its_bytes_and_its_times(pacs) -> None:  # noqa: ANN001
    """DB.SO.102: every instance of the study arrives at the test's SCP, as the PACS keeps it
    (Explicit VR Little Endian here); the bytes are the data sets' own; the first image comes
    before the end; throughput is bytes over the total time."""
    orthanc, port, total = pacs
    code, report, output = speedtest("--pacs", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                                     "--study", STUDY, "--ae-title", "SPEEDTEST",
                                     "--port", str(port), "--bind", "127.0.0.1", "--json")
    assert code == 0, output
    assert report is not None
    assert report["ok"] is True and report["error"] == ""
    assert report["status"] == "0x0000"
    assert report["instances"] == N and report["completed"] == N and report["failed"] == 0
    assert report["bytes"] == total
    assert report["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    assert 0 < report["association_s"] <= report["first_image_s"] <= report["total_s"]
    assert report["mbit_per_s"] == pytest.approx(total * 8 / 1e6 / report["total_s"], rel=1e-3)
    assert report["instances_per_s"] == pytest.approx(N / report["total_s"], rel=1e-3)
    assert report["pacs"] == f"PACS@127.0.0.1:{orthanc.dicom_port}"


def test_speedtest_prints_a_readable_report_from_the_pacs_settings(
        pacs, tmp_path: Path) -> None:  # noqa: ANN001
    """Without --pacs the configured PACS (``pacs_*`` settings) is measured; the text report
    names the figures ANS's script names."""
    orthanc, port, total = pacs
    config = tmp_path / "drimbox.toml"
    config.write_text(f'pacs_ae_title = "PACS"\npacs_host = "127.0.0.1"\n'
                      f"pacs_port = {orthanc.dicom_port}\n"
                      f'data_dir = "{tmp_path / "data"}"\n')
    code, _, output = speedtest("--config", str(config), "--study", STUDY,
                                "--ae-title", "SPEEDTEST", "--port", str(port),
                                "--bind", "127.0.0.1")
    assert code == 0, output
    assert f"study {STUDY}" in output
    assert f"instances        {N} (C-MOVE status 0x0000; completed {N}, failed 0" in output
    assert f"data received    {total / 1e6:.1f} MB in 1.2.840.10008.1.2.1" in output
    assert "first image" in output and "Mbit/s" in output and "images/s" in output


def test_a_destination_the_pacs_does_not_know_is_said(pacs) -> None:  # noqa: ANN001
    orthanc, _, _ = pacs
    code, report, output = speedtest("--pacs", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                                     "--study", STUDY, "--ae-title", "NOTKNOWN",
                                     "--port", str(free_port()), "--bind", "127.0.0.1", "--json")
    assert code == 1, output
    assert report is not None and report["ok"] is False and report["instances"] == 0
    assert report["status"] not in (None, "0x0000"), report["error"]
    assert "does the PACS know NOTKNOWN" in output


def test_a_pacs_that_refuses_our_ae_title_is_said(pacs) -> None:  # noqa: ANN001
    """The C-MOVE is asked with the gateway's AE title: a PACS that does not take requests
    from it ends the association; the message names the AE title to declare."""
    orthanc, port, _ = pacs
    code, report, output = speedtest("--pacs", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                                     "--study", STUDY, "--ae-title", "SPEEDTEST",
                                     "--port", str(port), "--bind", "127.0.0.1", "--json",
                                     DRIMBOX_AE_TITLE="STRANGER")
    assert code == 1, output
    assert report is not None and report["instances"] == 0
    assert "does it take C-MOVE requests from STRANGER?" in report["error"]


def test_a_study_the_pacs_does_not_have_is_said(pacs) -> None:  # noqa: ANN001
    """The reference study by default: this PACS does not have it."""
    orthanc, port, _ = pacs
    code, report, output = speedtest("--pacs", f"PACS@127.0.0.1:{orthanc.dicom_port}",
                                     "--ae-title", "SPEEDTEST", "--port", str(port),
                                     "--bind", "127.0.0.1", "--json")
    assert code == 1, output
    assert report is not None and report["study_uid"] == REFERENCE_STUDY
    assert report["instances"] == 0 and report["first_image_s"] is None
    assert report["error"], output


def test_a_pacs_that_does_not_answer_is_said(tmp_path: Path) -> None:
    closed = free_port()
    code, report, output = speedtest("--pacs", f"PACS@127.0.0.1:{closed}", "--study", STUDY,
                                     "--port", str(free_port()), "--bind", "127.0.0.1", "--json")
    assert code == 1, output
    assert report is not None and report["association_s"] is None
    assert f"no association with PACS at 127.0.0.1:{closed}" in report["error"]


def test_wrong_arguments_and_a_busy_port_end_with_a_message() -> None:
    code, _, output = speedtest("--pacs", "PACS-127.0.0.1")
    assert code == 2 and "expected AET@HOST:PORT" in output
    code, _, output = speedtest("--pacs", "PACS@127.0.0.1:1", "--study", "1.2.x")
    assert code == 2 and "not a DICOM UID" in output
    code, _, output = speedtest()  # no --pacs and no pacs_* settings
    assert code == 2 and "no PACS" in output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, output = speedtest("--pacs", "PACS@127.0.0.1:1", "--study", STUDY,
                                    "--port", str(busy.getsockname()[1]),
                                    "--bind", "127.0.0.1")
    assert code == 1 and "cannot listen on port" in output
