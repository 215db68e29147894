#!/usr/bin/env python3
"""The DRIM-M reference shape (SPEC R20): one CT series of 1,300 JPEG-LS lossless images
(512x512, 16 bits allocated, 12 stored), about 200 MB, retrieved through WADO-RS as stored and
transcoded to Explicit VR Little Endian.

    gen   --out DIR [--n 1300]           write the series (deterministic, seed 20), with the
                                         accession number's issuer (a Source can publish it)
    load  --dir DIR --scp H:P --aet AET  send it as stored with dcmtk storescu (association
                                         profile proposing JPEG-LS lossless only, TCP_NODELAY=1)
    time  --dir DIR --dicomweb URL --name NAME [--reps 3] [--pid PID] [--out JSON]
          GET /studies/{s}/series/{se} with
            stored:   multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80
            explicit: multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1
          per request: total seconds, MB/s of body, time to first byte, time to the end of the
          first part (first part complete = its closing delimiter seen), part count, the
          transfer syntax each part declares, and the first part's pixels compared with the
          source file. With --pid, VmRSS of that process is sampled every 50 ms.

Pixels: gen_corpus.py's thorax phantom (HU + Gaussian noise, sd 12) inside a circular
reconstruction field of view, padding (stored 0) outside it, as CT scanners write; that gives a
JPEG-LS lossless ratio of about 3.3:1 (~160 KB per image). Runs with the gateway's .venv
(pydicom 3 + pyjpegls); loopback only.

    .venv/bin/python bench/drim_reference.py gen --out /tmp/h10-drim-ref
    .venv/bin/python bench/drim_reference.py load --dir /tmp/h10-drim-ref --scp 127.0.0.1:11512 --aet DRIMBOX
    .venv/bin/python bench/drim_reference.py time --dir /tmp/h10-drim-ref --name drimbox \\
        --dicomweb http://127.0.0.1:18512/dicom-web --reps 3 --pid $(cat /tmp/h10-gw-bench/gateway.pid)
"""
from __future__ import annotations

import argparse
import io
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

SHARED = Path(os.environ.get("SHARED_BENCH", Path(__file__).resolve().parents[2] / "shared" / "bench"))
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")
JLS = "1.2.840.10008.1.2.4.80"
EXPLICIT = "1.2.840.10008.1.2.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def gen(args):
    sys.path.insert(0, str(SHARED))
    import gen_corpus as gc  # the harness's identifiers, dataset skeleton and phantom
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, JPEGLSLossless

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20)
    uid = gc.UidFactory(20)
    patient = gc.make_patient(rng, 0)
    study = {"StudyInstanceUID": uid("drimref", "study"), "StudyDate": "20260315",
             "StudyTime": "101500", "AccessionNumber": "DRIMREF0001",
             "InstitutionName": "CHU SYNTHETIQUE", "ReferringPhysicianName": "MEDECIN^TRAITANT",
             "StudyDescription": "CT TAP DRIM-M REFERENCE", "StudyID": "1"}
    series = {"SeriesInstanceUID": uid("drimref", "series"), "SeriesNumber": 2,
              "SeriesDescription": "CT TAP 0.625mm JPEG-LS", "Modality": "CT",
              "BodyPartExamined": "CHEST"}
    phantom = gc.CtPhantom(512)
    fov = (phantom.x ** 2 + phantom.y ** 2) <= 1.0
    total = 0
    t0 = time.monotonic()
    for k in range(args.n):
        sop = uid("drimref", "sop", k)
        ds = gc.base_dataset(patient, study, series, CT_STORAGE, sop, EXPLICIT, PYDICOM_IMPLEMENTATION_UID)
        ds.FrameOfReferenceUID = uid("drimref", "for")
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        z0 = -k * 0.625
        ds.ImagePositionPatient = [-250.0, -250.0, z0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z0
        ds.SliceThickness = 0.625
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.KVP = 120
        ds.ConvolutionKernel = "B30f"
        ds.PatientPosition = "HFS"
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = [40, -600]
        ds.WindowWidth = [400, 1500]
        ds.PixelPaddingValue = 0
        ds.IssuerOfAccessionNumberSequence = [accession_issuer()]  # publishable (R4)
        arr = phantom.slice(rng, k / max(1, args.n - 1))
        arr[~fov] = 0
        gc.set_pixels(ds, arr, bits_stored=12, signed=False)
        ds.compress(JPEGLSLossless, arr, encoding_plugin="pyjpegls", generate_instance_uid=False)
        path = out / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
        if (k + 1) % 100 == 0:
            print(f"{k + 1}/{args.n} files, {total / 1e6:.1f} MB, {time.monotonic() - t0:.0f}s", flush=True)
    raw = args.n * 512 * 512 * 2
    info = {"StudyInstanceUID": study["StudyInstanceUID"],
            "SeriesInstanceUID": series["SeriesInstanceUID"], "n": args.n, "bytes": total,
            "pixel_bytes_native": raw, "ratio": raw / total, "PatientID": patient["PatientID"]}
    (out / "series.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def accession_issuer():
    """The accession number's issuer (the RIS's OID), as the DRIM-M samples carry it: without
    it the Source cannot publish the KOS (the XDS referenceIdList needs it)."""
    from pydicom.dataset import Dataset

    issuer = Dataset()
    issuer.UniversalEntityID = "1.2.250.1.213.4.5.2.5"
    issuer.UniversalEntityIDType = "ISO"
    return issuer


def load(args):
    d = Path(args.dir)
    files = sorted(str(p) for p in d.glob("IM*.dcm"))
    profile = d / "storescu-jls.cfg"
    profile.write_text("[[TransferSyntaxes]]\n[TS0]\nTransferSyntax1 = " + JLS + "\n\n"
                       "[[PresentationContexts]]\n[PC]\nPresentationContext1 = " + CT_STORAGE + "\\TS0\n\n"
                       "[[Profiles]]\n[Test]\nPresentationContexts = PC\n")
    host, port = args.scp.rsplit(":", 1)
    check_loopback(host)
    t0 = time.monotonic()
    subprocess.run(["storescu", "-q", "-xf", str(profile), "Test", "-aet", "DRIMREF", "-aec", args.aet,
                    "-to", "30", "-ts", "60", host, port, *files],
                   check=True, timeout=3600, env=dict(os.environ, TCP_NODELAY="1"))
    sec = time.monotonic() - t0
    print(f"sent {len(files)} files in {sec:.1f}s ({len(files) / sec:.0f} inst/s)")


def check_loopback(host):
    addr = socket.getaddrinfo(host, None)[0][4][0]
    if not ipaddress.ip_address(addr).is_loopback:
        sys.exit(f"{host} is not loopback")


class RssSampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmRSS"):
                        self.samples.append(int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)


def boundary_of(ctype):
    for p in ctype.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "boundary":
            return v.strip().strip('"').encode()
    raise RuntimeError(f"no boundary in {ctype!r}")


def retrieve(session, url, ts, timeout):
    """Stream one multipart response; return figures and the first part's bytes."""
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
    t0 = time.perf_counter()
    r = session.get(url, headers={"Accept": accept, "Accept-Encoding": "identity"}, stream=True,
                    timeout=timeout)
    if r.status_code != 200:
        return {"status": r.status_code, "error": r.text[:300]}, None
    delim = b"--" + boundary_of(r.headers["Content-Type"])
    ttfb = first_part = None
    total = parts = 0
    head = bytearray()  # the stream until the end of the first part
    part_ts = {}
    carry = b""

    def scan(window, final):
        """Count delimiters in window and read each part's Content-Type; return what to carry."""
        nonlocal parts
        start = 0
        while (i := window.find(delim, start)) >= 0:
            if not final and i + 400 > len(window):
                return window[i:]  # headers may be cut: look again with the next chunk
            hdr = window[i:i + 400].split(b"\r\n\r\n", 1)[0].lower()
            for line in hdr.split(b"\r\n"):
                if line.startswith(b"content-type:") and b"transfer-syntax=" in line:
                    t = line.split(b"transfer-syntax=")[1].split(b";")[0].strip().strip(b'"').decode()
                    part_ts[t] = part_ts.get(t, 0) + 1
            parts += 1
            start = i + len(delim)
        return window[max(start, len(window) - (len(delim) - 1)):]

    for chunk in r.iter_content(chunk_size=1 << 20):
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        total += len(chunk)
        if first_part is None:
            head += chunk
            if head.count(delim) >= 2:
                first_part = time.perf_counter() - t0
        carry = scan(carry + chunk, False)
    scan(carry, True)
    sec = time.perf_counter() - t0
    first = None
    if head.count(delim) >= 2:
        seg = bytes(head).split(delim)[1]
        first = seg.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    return {"status": 200, "seconds": sec, "ttfb_s": ttfb, "first_part_s": first_part,
            "bytes": total, "mb_per_s": total / sec / 1e6, "parts": max(0, parts - 1),
            "part_transfer_syntaxes": part_ts,
            "content_type": r.headers.get("Content-Type", "")[:200]}, first


def time_cmd(args):
    import pydicom
    import requests

    d = Path(args.dir)
    info = json.loads((d / "series.json").read_text())
    check_loopback(urlparse(args.dicomweb).hostname)
    url = f"{args.dicomweb}/studies/{info['StudyInstanceUID']}/series/{info['SeriesInstanceUID']}"
    src = pydicom.dcmread(d / "IM00001.dcm")
    src_pixels = src.pixel_array
    s = requests.Session()
    results = {}
    for label, ts in (("stored", JLS), ("explicit", EXPLICIT)):
        reps = []
        for r in range(args.reps):
            sampler = RssSampler(args.pid) if args.pid else None
            if sampler:
                sampler.start()
            rec, first = retrieve(s, url, ts, args.timeout)
            if sampler:
                sampler.stop.set()
                sampler.join()
                if sampler.samples:
                    rec["rss_kb_min"], rec["rss_kb_max"] = min(sampler.samples), max(sampler.samples)
            if first is not None:
                ds = pydicom.dcmread(io.BytesIO(first))
                rec["first_part_ts"] = str(ds.file_meta.TransferSyntaxUID)
                rec["first_part_pixels_equal"] = bool(np.array_equal(ds.pixel_array, src_pixels))
            rec["parts_ok"] = rec.get("parts") == info["n"]
            reps.append(rec)
            if rec["status"] != 200:
                print(f"[{args.name}] {label} rep {r + 1}: HTTP {rec['status']} {rec['error']}", flush=True)
                continue
            rss = (f" rss {rec['rss_kb_min'] / 1024:.0f}-{rec['rss_kb_max'] / 1024:.0f} MiB"
                   if "rss_kb_max" in rec else "")
            print(f"[{args.name}] {label} rep {r + 1}/{args.reps}: {rec['seconds']:.2f}s "
                  f"{rec['bytes'] / 1e6:.1f}MB {rec['mb_per_s']:.1f} MB/s ttfb={rec['ttfb_s'] * 1000:.0f}ms "
                  f"first part={rec['first_part_s'] * 1000:.0f}ms parts={rec['parts']}/{info['n']} "
                  f"ts={rec['part_transfer_syntaxes']} first pixels equal={rec.get('first_part_pixels_equal')}"
                  f"{rss}", flush=True)
        ok = [x for x in reps if x["status"] == 200]
        summ = {"reps": reps}
        for key in ("seconds", "mb_per_s", "ttfb_s", "first_part_s"):
            v = [x[key] for x in ok if x.get(key) is not None]
            if v:
                summ[key] = [min(v), statistics.median(v), max(v)]
        results[label] = summ
        if ok:
            f = lambda k, m=1: " / ".join(f"{x * m:.3f}" for x in summ[k])  # noqa: E731
            print(f"[{args.name}] {label}: seconds {f('seconds')}  MB/s {f('mb_per_s')}  "
                  f"ttfb ms {f('ttfb_s', 1000)}  first part ms {f('first_part_s', 1000)} (min / median / max)")
    if args.out:
        Path(args.out).write_text(json.dumps({"target": args.name, "url": url, "series": info,
                                              "command": " ".join(sys.argv), "results": results},
                                             indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=int, default=1300)
    ld = sub.add_parser("load")
    ld.add_argument("--dir", required=True)
    ld.add_argument("--scp", required=True)
    ld.add_argument("--aet", required=True)
    t = sub.add_parser("time")
    t.add_argument("--dir", required=True)
    t.add_argument("--dicomweb", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--pid", type=int)
    t.add_argument("--timeout", type=float, default=900)
    t.add_argument("--out")
    args = ap.parse_args()
    {"gen": gen, "load": load, "time": time_cmd}[args.cmd](args)


if __name__ == "__main__":
    main()
