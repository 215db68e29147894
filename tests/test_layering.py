"""Imports go one way (the house rule; docs/architecture.md): faces -> wiring -> workflows ->
index and storage -> domain. Read from the code's own imports (``ast``), never from a list
kept by hand of who imports whom.

* **faces** translate a protocol: the HTTP app (``dicomweb``), the DICOM SCP and its guard and
  workers, the MLLP listener, the CLI and ``serve``, ``drimbox import``, the simulators.
* **wiring** builds the objects a process runs with (``gateway.runtime``,
  ``gateway.reports.wiring``) and the **adapters** to the outside world (DMP, PSC, PACS,
  MHD, whitelist): they may use everything below, never a face.
* **workflows** decide and act (ingest, publication, reports into publication, retrieval and
  queries, sessions and share links, audit, the consumer's steps, backup and restore); they
  read and write the index and the file store.
* **index and storage**: ``gateway.index``, the file store, configuration (and the listeners'
  TLS contexts built from it, ``gateway.tls``), metrics. The index
  speaks in domain types, so it imports the domain, never a workflow.
* **domain**: value types and pure rules (INS, KOS and XDS-I.b metadata, CDA and HL7 reading,
  DICOM header and completeness rules, rendering and transcoding, principals, the consumer's
  context, trust rules and Source port, the multipart codec). A domain module imports only
  the domain.

A module may import modules of its own layer or of a layer below, and the import graph has
no cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("face", "wiring", "workflow", "store", "domain")

FACES = (
    "dicomweb", "gateway.cli", "gateway.server", "gateway.ingest.dimse",
    "gateway.ingest.dimse_guard",
    "gateway.ingest.query_retrieve", "gateway.ingest.workers",
    "gateway.ingest.importer", "gateway.ingest.storage_commitment",
    "gateway.reports.mllp", "adapters.dmp.simulator", "adapters.dmp.sim_store",
    "adapters.psc.simulator", "adapters.mhd.recipient", "adapters.annuaire.simulator",
    # The development PKI (``drimbox pki init``): a tool beside the simulators.
    "gateway.pki",
    # ``drimbox sandbox``: runs the other faces (gateways, simulators) as processes.
    "gateway.sandbox",
)
WIRING = ("gateway.runtime", "gateway.reports.wiring", "adapters")
STORE = ("gateway.index", "gateway.ingest.storage", "gateway.ingest.processes",
         "gateway.config", "gateway.tls", "gateway.metrics")
DOMAIN = (
    "gateway.identity", "gateway.manifest.facts", "gateway.manifest.kos",
    "gateway.manifest.xds_metadata", "gateway.manifest.fhir_twin", "gateway.imaging.locations",
    "gateway.imaging.rendering", "gateway.imaging.transcode", "gateway.imaging.pixels",
    "gateway.imaging.pixel_description", "gateway.imaging.integers",
    "gateway.imaging.native_xml", "gateway.imaging.charsets", "gateway.ingest.header",
    "gateway.ingest.part10",
    "gateway.ingest.uids", "gateway.ingest.completeness", "gateway.reports.cda",
    "gateway.reports.workflow", "gateway.reports.hl7_reader", "gateway.access.principal",
    "gateway.publication.transport", "gateway.consumer.context", "gateway.consumer.trust",
    "gateway.consumer.source", "gateway.directory",
    # A codec with no I/O of its own, read by a face (STOW-RS) and an adapter (the consumer's
    # WADO-RS client): it imports nothing of the project.
    "dicomweb.multipart_reader",
)


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    for name, prefixes in (("domain", DOMAIN), ("face", FACES), ("store", STORE),
                           ("wiring", WIRING)):
        if _under(module, prefixes):
            return name
    if module.startswith("gateway."):
        return "workflow"
    return "domain"  # the package roots (``gateway``: its version string)


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("gateway", "dicomweb", "adapters"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue  # Alembic's scripts: they import the models only, at upgrade time
            found[".".join(parts).removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, wherever the import stands (functions too)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            target = _resolve(name)
            if target and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_read() -> None:
    assert len(MODULES) > 60 and "gateway.ingest.ingestor" in MODULES


def upward(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that reach a layer above its own."""
    mine = LAYERS.index(layer_of(module))
    return sorted(f"{t} ({layer_of(t)})" for t in imports if LAYERS.index(layer_of(t)) < mine)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module: str) -> None:
    bad = upward(module, GRAPH[module])
    assert not bad, f"{module} ({layer_of(module)}) imports a layer above it: {bad}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_rule_catches_an_upward_import() -> None:
    """The check itself: a domain module importing a workflow or a face, or the index
    importing a workflow, is named; the same imports downward are not."""
    assert upward("gateway.identity.ins", {"dicomweb.wado", "gateway.publication.outbox"}) == [
        "dicomweb.wado (face)", "gateway.publication.outbox (workflow)"]
    assert upward("gateway.index.store", {"gateway.ingest.ingestor"}) == [
        "gateway.ingest.ingestor (workflow)"]
    assert upward("dicomweb.wado", {"gateway.identity.ins", "gateway.publication.outbox"}) == []
    assert "gateway.ingest.ingestor" in imports_of("gateway.ingest.dimse")
