"""The sandbox, start to stop (``drimbox sandbox``, docs/sandbox.md).

1. ``--dir`` made fresh (a folder the sandbox made before is emptied; any other non-empty
   folder is refused), every port checked free;
2. a development PKI (:func:`gateway.pki.init_pki`), the development whitelist, the two
   gateways' TOML files;
3. the children, each waited for: ``dmp-sim`` (mutual TLS), ``psc-sim``, Orthanc when it is
   installed (the Consumer's PACS), the Source gateway, the Consumer gateway;
4. the sample study into the Source through ``drimbox import`` (the product's import path),
   then its report (ORU^R01 over MLLP, the product's client :func:`send_message`); the
   Source publishes to ``dmp-sim`` (R1, R4-R6), waited for;
5. "ready", the URLs, the certificates and the test practitioners; then it waits for SIGINT
   or SIGTERM (or a child's death) and stops every child.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.pki import DevPki, init_pki
from gateway.sandbox import configs, sample
from gateway.sandbox.layout import (
    CONSUMER_PSC_CLIENT,
    HOST,
    MARKER,
    ORTHANC_AE,
    SOURCE_AE,
    SOURCE_PSC_CLIENT,
    Layout,
)
from gateway.sandbox.supervisor import StartFailed, Supervisor, child_env, port_open

SHIM = Path(__file__).with_name("loopback_bind.c")
ORTHANC_PLUGINS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))


class SandboxError(RuntimeError):
    """The sandbox cannot start; the message says why."""


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    pass


def _on_signal(signum: int, _frame) -> None:  # noqa: ANN001
    raise _Stop(signal.Signals(signum).name)


def prepare_dir(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise SandboxError(f"{root} is not empty and was not made by the sandbox: "
                               "give another --dir")
        for entry in root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by drimbox sandbox; emptied at its next start\n")


def check_ports_free(layout: Layout) -> None:
    busy = []
    for name, port in layout.ports.items():
        with socket.socket() as s:
            # As the servers bind: a port left in TIME_WAIT by a previous run is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                busy.append(f"{port} ({name})")
    if busy:
        raise SandboxError(f"port(s) in use on {HOST}: {', '.join(busy)}; choose another "
                           "--base-port")


def orthanc_available() -> tuple[str | None, str]:
    """Orthanc's executable, or None with the reason."""
    exe = shutil.which("Orthanc")
    if exe is None:
        return None, "Orthanc is not installed (apt-get install orthanc): no PACS"
    if shutil.which("cc") is None:
        return None, "cc is missing, needed to keep Orthanc on loopback: no PACS"
    return exe, ""


class Sandbox:
    def __init__(self, layout: Layout, echo: Callable[[str], None], *,
                 with_orthanc: bool = True) -> None:
        self.layout = layout
        self.echo = echo
        self.with_orthanc = with_orthanc
        self.sup = Supervisor(layout.logs, layout.root)
        self.pki: DevPki | None = None
        self.orthanc = False
        self.kos_uid = ""

    # -- 2. files -------------------------------------------------------------------------

    def write_files(self) -> None:
        lay = self.layout
        self.pki = init_pki(lay.pki, hosts=(HOST, "localhost"), days=30)
        (lay.root / "whitelist.xml").write_text(
            configs.whitelist_xml(HOST, self.pki.server_dn), "utf-8")

    def write_configs(self) -> None:
        lay, pki = self.layout, self.pki
        assert pki is not None
        (lay.root / "source.toml").write_text(
            configs.toml(configs.source_settings(lay, pki)), "utf-8")
        (lay.root / "consumer.toml").write_text(configs.toml(configs.consumer_settings(
            lay, pki, lay.root / "whitelist.xml", self.orthanc)), "utf-8")

    # -- 3. children ----------------------------------------------------------------------

    def start_simulators(self) -> None:
        lay, pki = self.layout, self.pki
        assert pki is not None
        dmp = self.sup.drimbox(
            "dmp-sim", "dmp-sim", "--host", HOST, "--port", str(lay.port("dmp_sim")),
            "--db", str(lay.root / "dmp-sim.sqlite"), "--tls-cert", str(pki.server_cert),
            "--tls-key", str(pki.server_key), "--client-ca", str(pki.ca_cert))
        clients = []
        for (client_id, secret), url in ((SOURCE_PSC_CLIENT, lay.source_url),
                                         (CONSUMER_PSC_CLIENT, lay.consumer_url)):
            clients += ["--client", f"{client_id}:{secret}:{url}/auth/callback,"
                                    f"{url}/auth/logged-out"]
        psc = self.sup.drimbox(
            "psc-sim", "psc-sim", "--host", HOST, "--port", str(lay.port("psc_sim")),
            "--key-file", str(lay.root / "psc-sim-key.pem"), *clients)
        client_tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        client_tls.load_cert_chain(str(pki.client_cert), str(pki.client_key))

        def dmp_ready() -> bool:
            with socket.create_connection((HOST, lay.port("dmp_sim")), timeout=2) as raw, \
                    client_tls.wrap_socket(raw, server_hostname=HOST):
                return True

        self.sup.wait_ready(dmp, dmp_ready, 60)
        discovery = f"{lay.psc_issuer}/.well-known/wallet-openid-configuration"
        self.sup.wait_ready(psc, lambda: httpx.get(discovery, timeout=2).status_code == 200, 60)

    def start_orthanc(self) -> None:
        if not self.with_orthanc:
            self.echo("Orthanc not started (--no-orthanc): the Consumer has no PACS")
            return
        exe, why = orthanc_available()
        if exe is None:
            self.echo(why)
            return
        lay = self.layout
        work = lay.data("orthanc")
        work.mkdir(parents=True, exist_ok=True)
        shim = work / "loopback_bind.so"
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM), "-ldl"],
                       check=True, capture_output=True, timeout=120)
        plugins = [str(d / "libOrthancDicomWeb.so") for d in ORTHANC_PLUGINS
                   if (d / "libOrthancDicomWeb.so").exists()][:1]
        config = work / "orthanc.json"
        config.write_text(json.dumps(configs.orthanc_config(lay, plugins), indent=2))
        proc = self.sup.start("orthanc", [exe, str(config)],
                              env=child_env({"LD_PRELOAD": str(shim)}))
        self.sup.wait_ready(
            proc, lambda: httpx.get(f"{lay.orthanc_url}/system", timeout=2).status_code == 200,
            90)
        self.orthanc = True

    def start_gateways(self) -> None:
        lay, pki = self.layout, self.pki
        assert pki is not None
        source = self.sup.drimbox("source", "serve", "--config", str(lay.root / "source.toml"))
        consumer = self.sup.drimbox("consumer", "serve", "--config",
                                    str(lay.root / "consumer.toml"))
        self.sup.wait_ready(source, lambda: httpx.get(
            f"{lay.source_url}/healthz", verify=str(pki.ca_cert), timeout=2).status_code == 200,
            120)
        self.sup.wait_ready(consumer, lambda: httpx.get(
            f"{lay.consumer_url}/healthz", timeout=2).status_code == 200, 120)

    # -- 4. the sample --------------------------------------------------------------------

    def load_sample(self, timeout: float = 180) -> None:
        lay = self.layout
        files = sample.write_study(lay.root / "sample")
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "import", str(lay.root / "sample"),
             "--config", str(lay.root / "source.toml"), "--quiet", "--json"],
            cwd=lay.root, env=child_env(), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise SandboxError(f"drimbox import of the sample failed ({done.returncode}): "
                               f"{done.stdout[-500:]} {done.stderr[-1500:]}")
        self.echo(f"sample study {sample.STUDY_UID}: {len(files)} instances imported "
                  f"into the Source")
        from gateway.reports.mllp import ack_summary, send_message

        ack = ack_summary(send_message(sample.report_message("SANDBOX-ORU-1"), HOST,
                                       lay.port("source_hl7"), timeout=timeout))
        if ack.get("ack") != "AA":
            raise SandboxError(f"the Source refused the sample report: {ack}")
        self.echo("its report (ORU^R01, exam G's CDA) accepted over MLLP; publishing...")
        self.kos_uid = self.wait_published(timeout)

    def wait_published(self, timeout: float) -> str:
        from gateway.index.engine import create_index_engine
        from gateway.index.store import InstanceIndex
        from gateway.publication.workflow import publication_status

        db = (self.layout.data("source") / "index.sqlite").resolve()
        engine = create_index_engine(f"sqlite:///{db}")
        try:
            index = InstanceIndex(engine)
            deadline = time.monotonic() + timeout
            status = None
            while time.monotonic() < deadline:
                status = publication_status(index, sample.STUDY_UID)
                if status.state == "published" and status.current_kos_uid:
                    return status.current_kos_uid
                for child in self.sup.children:
                    if not child.alive():
                        raise StartFailed(f"{child.name} exited; its log {child.log_path}")
                time.sleep(0.5)
            raise SandboxError(f"the sample study was not published within {timeout:.0f} s "
                               f"(state {status.state if status else '?'}); see "
                               f"{self.layout.logs / 'source.log'}")
        finally:
            engine.dispose()

    # -- 5. ready -------------------------------------------------------------------------

    def ready_text(self) -> str:
        from adapters.psc.practitioners import PRACTITIONERS

        lay, pki = self.layout, self.pki
        assert pki is not None

        def who(subject: str) -> str:
            p = PRACTITIONERS[subject]
            return f"{subject} ({p['given_name']} {p['family_name']})"

        lines = [
            f"DRIMbox sandbox on {HOST}, state in {lay.root.resolve()} (Ctrl-C stops it all)",
            "",
            f"  Source console          {lay.source_url}/",
            f"  Source viewer           {lay.source_url}/viewer",
            f"  Source DICOMweb         {lay.source_url}/dicom-web",
            f"  Source DICOM            AE {SOURCE_AE} at {HOST}:{lay.port('source_dicom')}",
            f"  Source HL7 (MLLP)       {HOST}:{lay.port('source_hl7')}",
            f"  Consumer console        {lay.consumer_url}/",
            f"  Consumer appel contextuel  POST {lay.consumer_url}/consumer/context",
            f"  Consumer viewer         {lay.consumer_url}/viewer",
            f"  DMP simulator           {lay.dmp_url}/registry, /repository, /fhir "
            "(mutual TLS)",
            f"  PSC simulator           {lay.psc_issuer}",
        ]
        if self.orthanc:
            lines.append(f"  PACS (Orthanc)          {lay.orthanc_url}/app/explorer.html, "
                         f"AE {ORTHANC_AE} at {HOST}:{lay.port('orthanc_dicom')}")
        else:
            lines.append("  PACS (Orthanc)          not running")
        lines += [
            f"  Certificates            {pki.directory.resolve()}/ (ca.pem, server.pem, "
            "client.pem, sign.pem and their .key)",
            f"  Configuration           {(lay.root / 'source.toml').resolve()}, "
            f"{(lay.root / 'consumer.toml').resolve()}",
            f"  Logs                    {lay.logs.resolve()}/",
            "",
            f"  Sample study            {sample.STUDY_UID} (INS {sample.INS}, "
            f"accession {sample.ACCESSION}), published: KOS {self.kos_uid}",
            f"  Source staff login      {who(configs.STAFF_PRACTITIONER)}: roles viewer, admin",
            f"  Consumer clinician      {who(configs.CONSUMER_PRACTITIONER)}",
            "  (psc-sim's login page offers every test practitioner; no password)",
            "",
            "ready",
        ]
        return "\n".join(lines)


def run(base_port: int, root: Path, echo: Callable[[str], None], *,
        with_orthanc: bool = True, publish_timeout: float = 180) -> int:
    """Run the sandbox until SIGINT/SIGTERM; the exit status (0 stopped by a signal, 1 a
    child died or the start failed)."""
    layout = Layout(base_port, root)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    box = Sandbox(layout, echo, with_orthanc=with_orthanc)
    status = 0
    try:
        prepare_dir(root)
        check_ports_free(layout)
        box.write_files()
        box.start_simulators()
        box.start_orthanc()
        box.write_configs()
        box.start_gateways()
        box.load_sample(publish_timeout)
        echo(box.ready_text())
        while True:
            for child in box.sup.children:
                if not child.alive():
                    raise StartFailed(f"{child.name} exited ({child.proc.returncode}); its "
                                      f"log {child.log_path}:\n{child.log_tail()}")
            time.sleep(0.5)
    except _Stop as sig:
        echo(f"{sig}: stopping")
    except (SandboxError, StartFailed, OSError, subprocess.SubprocessError,
            httpx.HTTPError) as exc:
        echo(f"drimbox sandbox: {exc}")
        status = 1
    finally:
        try:
            box.sup.stop_all()
        except _Stop:  # a second Ctrl-C while stopping: stop harder
            box.sup.stop_all(grace=0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    echo("stopped")
    return status


__all__ = ["run", "SandboxError", "port_open"]
