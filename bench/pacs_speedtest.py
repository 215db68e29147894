#!/usr/bin/env python3
"""DB.SO.102 (R20): ``drimbox pacs speedtest`` against Orthanc and against the gateway, both
playing the PACS, with the DRIM-M reference shape (1,300 JPEG-LS lossless CT images).

A private Orthanc and a private gateway (``drimbox serve`` from a ``git archive`` of ``--ref``,
SQLite, product defaults: the classes of ``bench/cfind.py``) each receive the series written
by ``bench/drim_reference.py gen`` (sent as stored, JPEG-LS, by its ``load``); both know the
speed test's C-STORE SCP (``SPEEDTEST`` on a free loopback port) as a move destination and take
C-MOVE requests from the bench's AE title. Then, round by round, ``drimbox pacs speedtest``
(this working tree's command, the JSON report) moves the study from one and then the other
(the order alternates per round, so that a change of load hits both alike). Per server and
round: time to the first image, total time, throughput (Mbit/s of data sets, images/s), the
transfer syntax received; then medians and the gateway / Orthanc ratios.

    .venv/bin/python bench/drim_reference.py gen --out /tmp/drim-ref
    .venv/bin/python bench/pacs_speedtest.py --dir /tmp/drim-ref --rounds 5 --out /tmp/speedtest.json

Needs Orthanc, dcmtk, cc; loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
import drim_reference  # noqa: E402
from cfind import ROOT, SCU_AET, Gateway, Orthanc, free_port, settle, snapshot, uptime  # noqa: E402

DEST_AET = "SPEEDTEST"


def speedtest(server, study: str, port: int) -> dict:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_AE_TITLE=SCU_AET, DRIMBOX_DATA_DIR=tempfile.mkdtemp(prefix="speedtest-"),
               PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "pacs", "speedtest", "--pacs",
         f"{server.aet}@127.0.0.1:{server.port}", "--study", study, "--ae-title", DEST_AET,
         "--port", str(port), "--bind", "127.0.0.1", "--json"],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    shutil.rmtree(env["DRIMBOX_DATA_DIR"], ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"speedtest against {server.name} failed ({done.returncode}):\n"
                 f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True, help="drim_reference.py gen's output")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pacs-speedtest-bench"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ref", default="HEAD", help="commit whose gateway plays the PACS")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    files = sorted(args.dir.glob("IM*.dcm"))
    if not files:
        sys.exit(f"no IM*.dcm in {args.dir}: run bench/drim_reference.py gen first")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = work / "src"
    rev = snapshot(args.ref, src)
    port = free_port()
    result: dict = {"argv": sys.argv, "gateway_source": rev, "study": study,
                    "uptime_start": uptime(), "rounds": []}
    print(result["uptime_start"], flush=True)
    orthanc = Orthanc(work, "Always", modalities={"speedtest": [DEST_AET, "127.0.0.1", port]})
    gateway = Gateway(work, src, None,
                      peers=[{"ae_title": DEST_AET, "host": "127.0.0.1", "port": port}])
    servers = [orthanc, gateway]
    try:
        for s in servers:
            s.start()
            drim_reference.load(SimpleNamespace(dir=str(args.dir), scp=f"127.0.0.1:{s.port}",
                                                aet=s.aet))
        for s in servers:
            settle(s)
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            row = {}
            for s in order:
                rep = speedtest(s, study, port)
                row[s.name] = rep
                print(f"round {r + 1} {s.name:8s} first image {rep['first_image_s']:.3f} s  "
                      f"total {rep['total_s']:.2f} s  {rep['mbit_per_s']:.0f} Mbit/s  "
                      f"{rep['instances_per_s']:.0f} images/s  {rep['instances']} images "
                      f"{rep['bytes'] / 1e6:.1f} MB {','.join(rep['transfer_syntaxes'])}",
                      flush=True)
            result["rounds"].append(row)
    finally:
        for s in servers:
            s.stop()
    result["uptime_end"] = uptime()
    print(result["uptime_end"])
    for key, label in (("first_image_s", "first image (s)"), ("total_s", "total (s)"),
                       ("mbit_per_s", "Mbit/s")):
        o = [row["orthanc"][key] for row in result["rounds"]]
        g = [row["gateway"][key] for row in result["rounds"]]
        ratios = [round(b / a, 2) for a, b in zip(o, g, strict=True)]
        print(f"{label:16s} orthanc {min(o):.3f} / {statistics.median(o):.3f} / {max(o):.3f}  "
              f"gateway {min(g):.3f} / {statistics.median(g):.3f} / {max(g):.3f}  "
              f"gateway/orthanc per round {ratios} median {statistics.median(ratios):.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
