"""docs/conformance-statement.md (PS3.2) says what the code registers, no more and no less.

Everything is read in process, no gateway started: the DICOM listener's presentation contexts
from a :class:`gateway.ingest.dimse.DicomService` built as ``drimbox serve`` builds it, the
associations the gateway opens by running each initiating code path against a stubbed
``AE.associate`` (it records what would be proposed), and the DICOMweb routes from the
FastAPI application (:func:`dicomweb.app.create_app`) and its OpenAPI document. A SOP class,
transfer syntax, initiated association or route added to the code without its line in the
statement fails here, and so does a line the code does not back.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from gateway.config import PeerAE, Settings

REPO = Path(__file__).resolve().parent.parent
STATEMENT = REPO / "docs" / "conformance-statement.md"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.M)
_UID = re.compile(r"`([0-9]+(?:\.[0-9]+){3,})`")
STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


# -- reading the statement ---------------------------------------------------------------


def statement() -> str:
    return STATEMENT.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under the heading that ends with ``title``, up to the next heading of the
    same or a higher level."""
    text = statement()
    headings = list(_HEADING.finditer(text))
    for i, match in enumerate(headings):
        if match.group(2).endswith(title):
            level = len(match.group(1))
            end = next((h.start() for h in headings[i + 1:] if len(h.group(1)) <= level),
                       len(text))
            return text[match.end():end]
    raise AssertionError(f"{STATEMENT.name} has no heading ending with {title!r}")


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text``, each as rows keyed by its header cells."""
    found: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in [*text.splitlines(), ""]:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            found.append([])
        elif not all(set(c) <= set("-: ") for c in cells):
            found[-1].append(dict(zip(header, cells, strict=False)))
    return found


def table(title: str, column: str) -> list[dict[str, str]]:
    """The rows of the table under ``title`` that has a ``column`` column."""
    for rows in tables(section(title)):
        if rows and column in rows[0]:
            return rows
    raise AssertionError(f"no table with a {column!r} column under {title!r}")


def uid(cell: str) -> str | None:
    found = _UID.findall(cell)
    assert len(found) <= 1, f"one UID per cell: {cell}"
    return found[0] if found else None


def uid_list(title: str) -> list[str]:
    return [u for row in table(title, "UID") if (u := uid(row["UID"]))]


SOP_CLASSES = "4.2.1.1 SOP Classes"
APPENDIX = "Appendix A: storage SOP classes"
INITIATION = "4.2.1.3 Association Initiation Policy"


def sop_class_rows() -> dict[str, dict[str, str]]:
    return {u: row for row in table(SOP_CLASSES, "UID") if (u := uid(row["UID"]))}


# -- the DICOM listener ------------------------------------------------------------------


def _settings(tmp: Path, **kw: object) -> Settings:
    base: dict[str, object] = dict(data_dir=tmp, query_retrieve=True, storage_commitment="peers",
                                   accept_unknown_sop_classes=False, roles="source")
    return Settings(**{**base, **kw})


def _service(settings: Settings):  # noqa: ANN202
    from gateway.ingest.dimse import DicomService
    from gateway.ingest.query_retrieve import build

    runtime = SimpleNamespace(index=None, store=None, restorer=None)
    unrestricted = _config.UNRESTRICTED_STORAGE_SERVICE
    try:
        return DicomService(settings, None, build(settings, runtime))
    finally:  # a module-level switch of pynetdicom: leave it as found
        _config.UNRESTRICTED_STORAGE_SERVICE = unrestricted


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The listener's supported presentation contexts with every optional service on."""
    service = _service(_settings(tmp_path_factory.mktemp("conformance")))
    return {str(cx.abstract_syntax): cx for cx in service.ae.supported_contexts}


def test_every_sop_class_the_listener_accepts_is_stated_and_no_other(contexts) -> None:
    registered = set(contexts)
    rows = sop_class_rows()
    appendix = uid_list(APPENDIX)
    assert len(appendix) == len(set(appendix)), "a storage SOP class listed twice in Appendix A"
    stated = {u for u, row in rows.items() if row["SCP"] == "Yes"} | set(appendix)
    missing, extra = sorted(registered - stated), sorted(stated - registered)
    assert not missing, f"SOP classes the listener accepts, not in {STATEMENT.name}: {missing}"
    assert not extra, f"SOP classes {STATEMENT.name} lists as SCP, not accepted: {extra}"
    assert set(appendix) == registered & STORAGE, "Appendix A is the storage SOP classes"
    assert not set(rows) & STORAGE, "storage SOP classes belong in Appendix A, not Table 4.2-1"


def test_the_setting_column_says_which_sop_classes_depend_on_a_setting(tmp_path: Path) -> None:
    bare = _service(_settings(tmp_path, query_retrieve=False, storage_commitment="off"))
    registered = {str(cx.abstract_syntax) for cx in bare.ae.supported_contexts} - STORAGE
    always = {u for u, row in sop_class_rows().items() if row["setting"] == "always"}
    assert registered == always == {str(Verification)}


def test_query_retrieve_and_commitment_are_stated_with_their_roles(contexts) -> None:
    from gateway.ingest.query_retrieve import FIND, GET, MOVE

    rows = sop_class_rows()
    for models, operation in ((FIND, "FIND"), (MOVE, "MOVE"), (GET, "GET")):
        for sop, model in models.items():
            row = rows[sop]
            assert row["SOP Class"].lower().startswith(f"{model.lower()} root")
            assert row["SOP Class"].endswith(operation)
            assert row["SCP"] == "Yes" and "query_retrieve" in row["setting"]
    commitment = rows[str(StorageCommitmentPushModel)]
    assert commitment["SCP"] == "Yes" and "storage_commitment" in commitment["setting"]
    for sop, cx in contexts.items():
        if sop in STORAGE:  # C-STORE SCP, and SCU of C-GET sub-operations by role selection
            assert (cx.scu_role, cx.scp_role) == (True, True), sop
        else:  # default roles: the requester is the SCU, we are the SCP
            assert (cx.scu_role, cx.scp_role) == (None, None), sop
    for row in table(APPENDIX, "UID"):
        assert (row["SCP"], row["SCU"]) == ("Yes", "Yes"), row


def test_transfer_syntaxes_and_their_order_are_the_statements(contexts) -> None:
    from gateway.ingest.dimse import STORAGE_TRANSFER_SYNTAXES
    from gateway.ingest.query_retrieve import QR_TRANSFER_SYNTAXES

    storage = uid_list("Presentation contexts: storage")
    query_retrieve = uid_list("Presentation contexts: query/retrieve")
    other = uid_list("Presentation contexts: verification and storage commitment")
    assert storage == [str(ts) for ts in STORAGE_TRANSFER_SYNTAXES]
    assert query_retrieve == [str(ts) for ts in QR_TRANSFER_SYNTAXES]
    qr_classes = {u for u, row in sop_class_rows().items() if "query_retrieve" in row["setting"]}
    for sop, cx in contexts.items():
        expected = storage if sop in STORAGE else query_retrieve if sop in qr_classes else other
        # pynetdicom accepts the first of *our* list the requester proposes: order matters.
        assert [str(ts) for ts in cx.transfer_syntax] == expected, sop


def test_the_generated_tables_are_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "conformance_tables", REPO / "docs" / "tools" / "conformance_tables.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = statement()
    assert tool.regenerate(text) == text, "run `make conformance` and commit the statement"


# -- associations the gateway opens ----------------------------------------------------


def _initiated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[list, object]]:
    """Run every code path that opens an association against an ``AE.associate`` that only
    records what it was asked to propose (and refuses, as a peer that says no)."""
    from adapters.pacs.export import CStoreDestination, DestinationUnavailable
    from adapters.pacs.query_retrieve import PacsClient
    from gateway.consumer.export import CachedInstance
    from gateway.ingest.query_retrieve import _Sink
    from gateway.ingest.storage_commitment import StorageCommitmentSCP
    from gateway.reports.workflow import PacsUnavailable

    calls: list[tuple[list, object]] = []

    def associate(self: AE, addr: str, port: int, *args: object, **kw: object) -> object:
        calls.append(([(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                       for cx in self.requested_contexts], kw.get("ext_neg")))
        return SimpleNamespace(is_established=False, is_rejected=True, is_aborted=False)

    monkeypatch.setattr(AE, "associate", associate)
    settings = _settings(tmp_path)
    pacs = PacsClient(our_ae_title="DRIMBOX", pacs_ae_title="PACS", host="127.0.0.1", port=104)
    with pytest.raises(PacsUnavailable):
        pacs.find_study("1.2.3")
    with pytest.raises(PacsUnavailable):
        pacs.retrieve_study("1.2.3")
    instance = CachedInstance(path=tmp_path / "x.dcm", sop_class_uid=str(CTImageStorage),
                              sop_instance_uid="1.2.3.4", transfer_syntax=str(JPEG2000Lossless),
                              study_uid="1.2.3", series_uid="1.2.3.5")
    export = CStoreDestination(our_ae_title="DRIMBOX", ae_title="PACS", host="127.0.0.1",
                               port=104)
    assert export.present([instance]) is None
    with pytest.raises(DestinationUnavailable):
        list(export.send([instance], lambda i: None))
    peer = PeerAE(ae_title="PEER", host="127.0.0.1", port=104)
    assert StorageCommitmentSCP(settings, None)._on_new(peer, 1, Dataset()) is False
    retrieve = SimpleNamespace(scp=SimpleNamespace(settings=settings))
    item = SimpleNamespace(sop_class_uid=str(CTImageStorage),
                           transfer_syntax_uid=str(JPEG2000Lossless))
    assert _Sink(retrieve, peer, [item]).__enter__() is None  # C-MOVE sub-operations
    return calls


def test_every_association_the_gateway_opens_is_stated(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    calls = _initiated(monkeypatch, tmp_path)
    rows = table(INITIATION, "UID")
    stated = {uid(row["UID"]) for row in rows} - {None}
    proposed = {sop for contexts, _ in calls for sop, _ in contexts}
    assert proposed - STORAGE == stated, (
        f"{STATEMENT.name} Table 4.2-3 lists {sorted(stated)}; the gateway proposes "
        f"{sorted(proposed - STORAGE)}")
    default = uid_list("Presentation contexts: verification and storage commitment")
    names = ("Implicit VR LE", "Explicit VR LE", "Deflated Explicit VR LE", "Explicit VR BE")
    for contexts, _ in calls:
        for sop, syntaxes in contexts:
            if sop not in STORAGE:
                assert syntaxes == default, sop  # pynetdicom's four default syntaxes
    for row in rows:
        if uid(row["UID"]) and row["proposed transfer syntaxes"] != "as above":
            assert all(n in row["proposed transfer syntaxes"] for n in names), row
    # Storage: each instance's stored syntax, and the little endian pair in a context of its own.
    storage_rows = [row for row in rows if not uid(row["UID"])]
    assert storage_rows and all("Appendix A" in row["SOP Class"] for row in storage_rows)
    sends = [contexts for contexts, _ in calls if any(s in STORAGE for s, _ in contexts)]
    assert len(sends) == len(storage_rows) == 2  # C-MOVE sub-operations, export
    for contexts in sends:
        assert contexts == [(str(CTImageStorage), [str(JPEG2000Lossless)]),
                            (str(CTImageStorage), ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])]
    # The Storage Commitment result proposes the SCP role (SCP/SCU Role Selection).
    (commitment,) = [ext for contexts, ext in calls
                     if contexts and contexts[0][0] == str(StorageCommitmentPushModel)]
    (role,) = commitment
    assert role.scp_role is True and not role.scu_role
    row = next(r for r in rows if uid(r["UID"]) == str(StorageCommitmentPushModel))
    assert row["role"].startswith("SCP") and "Role Selection" in row["role"]
    for row in rows:
        if uid(row["UID"]) != str(StorageCommitmentPushModel):
            assert row["role"] == "SCU", row
    scu = {u for u, r in sop_class_rows().items() if r["SCU"] == "Yes"}
    assert scu == stated - {str(StorageCommitmentPushModel)}, "Table 4.2-1's SCU column"


def test_every_module_that_opens_an_association_is_in_the_initiation_table() -> None:
    """A new SCU elsewhere (a C-ECHO to a peer, a C-STORE somewhere new) needs its row."""
    opening = {str(p.relative_to(REPO)) for d in ("gateway", "adapters", "dicomweb")
               for p in (REPO / d).rglob("*.py")
               if re.search(r"\.associate\(",
                            p.read_text(encoding="utf-8"))}
    stated = {c.strip("`") for row in table(INITIATION, "UID") for c in [row["code"]]}
    assert opening == stated


# -- DICOMweb ----------------------------------------------------------------------------


def _path(template: str) -> str:
    return re.sub(r":\w+\}", "}", template)


def _concrete(template: str) -> str:
    return (template.replace("{frames}", "1").replace("{tag_path}", "7FE00010")
            .replace("{study}", "1.2.3").replace("{series}", "1.2.3.4")
            .replace("{instance}", "1.2.3.4.5").replace("{sop}", "1.2.3.4.5"))


def _routes(title: str) -> dict[str, set[str]]:
    out = {}
    for row in table(title, "path"):
        path = row["path"].strip("`")
        assert path not in out, f"{path} twice"
        out[path] = {m.strip() for m in row["methods"].split(",")}
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from dicomweb.app import create_app

    settings = _settings(tmp_path_factory.mktemp("conformance-http"), dicomweb_auth="psc")
    return create_app(SimpleNamespace(settings=settings, index=None))


def test_every_dicomweb_route_is_stated_and_no_other(app) -> None:
    from dicomweb.http_methods import allowed_methods

    registered = {_path(p) for p in app.openapi()["paths"]
                  if p.startswith("/dicom-web/") or p == "/dicom-web" or p == "/wado"}
    stated = _routes("5.1 Resources")
    assert not registered - set(stated), (
        f"DICOMweb routes {STATEMENT.name} does not list: {sorted(registered - set(stated))}")
    assert not set(stated) - registered, (
        f"routes {STATEMENT.name} lists that are not registered: "
        f"{sorted(set(stated) - registered)}")
    for path, methods in stated.items():
        scope = {"type": "http", "path": _concrete(path), "method": "GET", "root_path": "",
                 "headers": [], "query_string": b""}
        assert set(allowed_methods(app, scope)) == methods, path


def test_every_consumer_dicomweb_route_is_stated_and_no_other() -> None:
    from dicomweb import consumer_dicomweb

    registered: dict[str, set[str]] = {}
    for route in consumer_dicomweb.router.routes:
        registered.setdefault(_path(route.path), set()).update(route.methods)
    assert _routes("5.4 The consumer role's DICOMweb") == registered
