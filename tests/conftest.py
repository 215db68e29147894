"""Shared fixtures: index back-ends (SQLite and PostgreSQL) and a real gateway process.

PostgreSQL: every machine here runs it at 127.0.0.1:5432 (database ``test``, user
``postgres``, trust auth). Each test that asks for it gets a database of its own, created from
``test`` and dropped afterwards, so runs never collide. ``DRIMBOX_TEST_PG`` overrides the
administrative URL. Without a reachable server the PostgreSQL cases fail under CI and skip
elsewhere.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import launcher
import psycopg
import pytest
from peers import free_port, in_ci

PG_ADMIN = os.environ.get("DRIMBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _pg_database() -> Iterator[str]:
    name = f"drimbox_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        msg = f"PostgreSQL not reachable at {PG_ADMIN}: {exc}"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the project once, before any gateway starts. Every test starts processes
    (``drimbox serve``, the simulators, the CLI) that import about a hundred of its modules;
    where ``PYTHONDONTWRITEBYTECODE`` is set (or the tree is fresh) each of them would compile
    those from source again, ~0.25 s of CPU per start. Only the controller compiles (under
    pytest-xdist the workers start after it)."""
    if hasattr(config, "workerinput"):
        return
    import compileall

    for package in ("gateway", "dicomweb", "adapters"):
        compileall.compile_dir(ARTIFACTS.parent / package, quiet=1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``: ``--dist loadgroup``) the tests that share a
    module-scoped fixture (e.g. one gateway loaded once for many read-only tests) go to one
    worker, so that it is set up once per back-end as in a serial run, not once per worker.

    The group is written here, as pytest-xdist would write an ``xdist_group`` mark's: after an
    ``@`` at the end of each node id, where its loadgroup scheduler reads it (the workers send
    the controller node ids only). Left to pytest-xdist 3.8 it never happened: its hook ran
    before this one (hence ``tryfirst``), it writes the node id in a form pytest 9.2 no longer
    reads (https://github.com/pytest-dev/pytest-xdist/issues/1386), and its scheduler ignores
    a group whose name holds a ``]``, as ``fixture[param]`` did."""
    if not getattr(config.option, "loadgroup", False):
        return  # not a pytest-xdist worker under --dist loadgroup
    for item in items:
        group = _shared_fixture_group(item)
        if group:
            _join_group(item, group)


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """``module:fixture=param,...`` over the module-scoped fixtures the test uses, or its own
    ``xdist_group`` mark; None when it shares nothing."""
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        name = str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    else:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            return None
        params = getattr(getattr(item, "callspec", None), "params", {})
        shared = sorted(f"{name}={params.get(name, '')}"
                        for name, defs in info.name2fixturedefs.items()
                        if defs and defs[-1].scope == "module")
        if not shared:
            return None
        name = f"{item.module.__name__}:{','.join(shared)}"
    return re.sub(r"[\[\]@]", "_", name)


def _join_group(item: pytest.Item, group: str) -> None:
    nodeid = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):  # pytest >= 9.2: a structured node id
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(nodeid)
    else:
        item._nodeid = nodeid


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty index database URL, once per back-end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        yield from _pg_database()


#: Test modules about the DICOM service itself (ingest, durability, bad input, association
#: admission, import, IOCM, the PACS peers): their gateways run the SCP in a worker process,
#: as the product does (the multi-worker behaviour has its own tests, which set the count).
DICOM_SERVICE_MODULES = frozenset({
    "test_dimse_store", "test_dimse_bad_input", "test_durability", "test_dicom_workers",
    "test_dimse_admission", "test_ingest_completeness", "test_import", "test_iocm",
    "test_interop_orthanc", "test_pacs_retrieve", "test_storage_and_header",
    "test_query_retrieve", "test_storage_commitment",
})


def _dicom_workers_for_this_test() -> str:
    """One DICOM worker process for the tests of the DICOM service; elsewhere (DICOMweb,
    publication, access, consumer...), where DICOM only seeds the data, the SCP runs in the
    main process (``dicom_workers = 0``, the same DicomService), which spares each start an
    interpreter: half the suite's CPU goes into starting gateways. A test may set its own."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    module = Path(current.split("::", 1)[0]).stem
    return "1" if module in DICOM_SERVICE_MODULES else "0"


class Gateway:
    """``drimbox serve`` as a child process on free loopback ports."""

    def __init__(self, data_dir: Path, database_url: str, **env: str) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.ae_title = "DRIMBOX"
        self.extra_env = env
        #: How the start-up check (and tests) verify our HTTPS certificate; with
        #: ``DRIMBOX_TLS_CERT`` the default trusts ``DRIMBOX_TLS_CA_BUNDLE`` (tests/dmp_pki.py's
        #: CA issues both sides' certificates).
        self.http_verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=env["DRIMBOX_TLS_CA_BUNDLE"])
            if "DRIMBOX_TLS_CA_BUNDLE" in env else True)
        self.proc: subprocess.Popen[bytes] | launcher.Launched | None = None
        self.log_path = data_dir.parent / f"gateway-{self.dicom_port}.log"
        self._http: httpx.Client | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
        env.update(
            DRIMBOX_DATA_DIR=str(self.data_dir),
            DRIMBOX_DATABASE_URL=self.database_url,
            DRIMBOX_DICOM_PORT=str(self.dicom_port),
            DRIMBOX_HTTP_PORT=str(self.http_port),
            DRIMBOX_AE_TITLE=self.ae_title,
            DRIMBOX_SHUTDOWN_GRACE="20",
            DRIMBOX_DICOM_WORKERS=_dicom_workers_for_this_test(),
            # Anonymous DICOMweb (loopback only) unless a test configures PSC.
            DRIMBOX_DICOMWEB_AUTH="none",
        )
        env.update(self.extra_env)
        return env

    @property
    def https(self) -> bool:
        """HTTP is TLS (``http_tls``, on by default with ``tls_cert``)."""
        env = self.extra_env
        mode = env.get("DRIMBOX_HTTP_TLS", "on" if env.get("DRIMBOX_TLS_CERT") else "off")
        return mode.lower() in ("on", "true", "1", "yes")

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> Gateway:
        """Start and wait until ``/healthz`` answers. ``timeout``: a start with a DICOM worker
        process costs ~5 s of CPU from ``exec``, which took more than 30 s of wall time on a
        2-core machine loaded by other runs."""
        env = self.env
        with open(self.log_path, "ab") as log:
            if launcher.enabled() and env["DRIMBOX_DICOM_WORKERS"] == "0":
                # Forked from an interpreter that imported the gateway already (~1.5 s of
                # CPU less per start). Not with DICOM worker processes: tests/launcher.py.
                self.proc = launcher.popen(["serve"], env=env, stdout=log,
                                           stderr=subprocess.STDOUT)
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "serve"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + timeout
        # One client for the whole wait: ``httpx.get`` builds a client, and with it a TLS
        # context that loads the CA bundle (~20 ms of CPU), at every call of the poll.
        with httpx.Client(timeout=1, verify=self.http_verify) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited at start-up:\n{self.log()}")
                try:
                    if http.get(f"{self.url}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.proc.kill()  # not left behind, serving nobody
        self.proc.wait()
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    @property
    def http(self) -> httpx.Client:
        """An HTTP client kept until :meth:`stop`, for tests that make many requests: each
        ``httpx.get`` builds a client and a TLS context with it (~22 ms of CPU)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=60)
        return self._http

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5, verify=self.http_verify).text


@contextmanager
def module_gateway(backend: str, tmp: Path, **env: str) -> Iterator[Gateway]:
    """A running gateway on an empty index of ``backend`` ("sqlite" or "postgresql"), for a
    module-scoped fixture whose tests only read what it was loaded with: one start per
    back-end instead of one per test (a start costs ~1.6 s of CPU). Its tests stay on one
    pytest-xdist worker (:func:`pytest_collection_modifyitems`)."""
    databases = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'index.sqlite'}"
    else:
        databases = _pg_database()
        url = next(databases)
    gw = Gateway(tmp / "data", url, **env)
    try:
        yield gw.start()
    finally:
        if gw.proc is not None:
            gw.stop()
        if databases is not None:
            databases.close()  # drops the database


@pytest.fixture
def gateway_factory(tmp_path: Path, database_url: str) -> Iterator:
    """Make (not start) gateways sharing this test's data dir and index."""
    made: list[Gateway] = []

    def make(**env: str) -> Gateway:
        gw = Gateway(tmp_path / "data", database_url, **env)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        if gw.proc is not None:
            gw.stop(signal.SIGKILL)


@pytest.fixture
def gateway(gateway_factory) -> Gateway:
    """A running gateway with default settings."""
    return gateway_factory().start()
