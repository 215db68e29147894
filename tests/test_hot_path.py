"""The hot read path (``dicomweb.hot_path``): QIDO-RS, one instance and frames answered without
FastAPI's routing must be answered exactly as the routed way answers them.

Each request is sent twice to one application on a real index (both back-ends): once on the
hot path, once with it switched off (``app.hot_routes = None``, the FastAPI route). Status,
headers, body (the multipart boundary aside) and the audit row (R15: one per request, same
decision, same UIDs and INS) must be the same. The router itself must pick, for every hot
path, the route function the hot path calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import make_instance, to_bytes
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomweb.app import create_app
from gateway.config import Settings
from gateway.index.models import AuditEvent
from gateway.ingest.ingestor import Incoming
from gateway.runtime import Runtime

INS = "248092700000000"
MR = 'multipart/related; type="application/dicom"'


def _dataset_bytes(ds) -> tuple[bytes, str]:
    raw = to_bytes(ds)
    group_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_len:], str(ds.file_meta.TransferSyntaxUID)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        dicomweb_auth="none", public_url="http://gw.test")
    runtime = Runtime.build(settings)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def loaded(runtime: Runtime) -> dict[str, str]:
    study, series = generate_uid(), generate_uid()
    sops = []
    for n in (1, 2):
        ds = make_instance(study_uid=study, series_uid=series, instance_number=n, seed=n,
                           patient_id=INS)
        data, ts = _dataset_bytes(ds)
        runtime.ingestor.ingest(Incoming(dataset=data, transfer_syntax_uid=ts, source="T"))
        sops.append(str(ds.SOPInstanceUID))
    other = make_instance(patient_id="OTHER-1", seed=9)
    data, ts = _dataset_bytes(other)
    runtime.ingestor.ingest(Incoming(dataset=data, transfer_syntax_uid=ts, source="T"))
    return {"study": study, "series": series, "sop": sops[0]}


def _requests(u: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    s, se, i = u["study"], u["series"], u["sop"]
    inst = f"/dicom-web/studies/{s}/series/{se}/instances/{i}"
    json_ = {"Accept": "application/dicom+json"}
    return [
        (f"/dicom-web/studies?PatientID={INS}", json_),
        ("/dicom-web/studies?PatientID=NOBODY", json_),
        ("/dicom-web/studies?includefield=all&limit=1&offset=1", json_),
        ("/dicom-web/series?Modality=CT", json_),
        (f"/dicom-web/instances?SOPInstanceUID={i}", json_),
        (f"/dicom-web/studies/{s}/series", json_),
        (f"/dicom-web/studies/{s}/instances", json_),
        (f"/dicom-web/studies/{s}/series/{se}/instances?InstanceNumber=2", json_),
        (f"/dicom-web/studies?PatientID={INS}",
         {"Accept": 'multipart/related; type="application/dicom+xml"'}),
        ("/dicom-web/studies?PatientID=NOBODY",                        # 204
         {"Accept": 'multipart/related; type="application/dicom+xml"'}),
        ("/dicom-web/studies?NoSuchKey=1", json_),                      # 400, names it
        ("/dicom-web/studies?StudyDate=2026-01-01", json_),            # 400
        ("/dicom-web/studies/not-a-uid/series", json_),                # 400
        (f"/dicom-web/studies?PatientID={INS}", {"Accept": "image/png"}),  # 406
        (inst, {"Accept": f"{MR}; transfer-syntax=*"}),
        (inst, {"Accept": f"{MR}; transfer-syntax=1.2.840.10008.1.2"}),  # transcoded
        (inst, {"Accept": "application/json"}),                        # 406
        (f"/dicom-web/studies/{s}/series/{se}/instances/{generate_uid()}", {}),  # 404
        (f"/dicom-web/studies/{s}/series/{se}/instances/x..1", {}),    # 400
        (f"{inst}/frames/1", {"Accept": "multipart/related; type=application/octet-stream"}),
        (f"{inst}/frames/1,1", {"Accept": "multipart/related; type=application/octet-stream"}),
        (f"{inst}/frames/7", {}),                                      # 404, no such frame
        (f"{inst}/frames/0", {}),                                      # 400
    ]


def _boundary_free(response) -> tuple[int, dict[str, str], bytes]:
    headers = dict(response.headers)
    body = response.content
    found = re.search(r'boundary="?([^";]+)"?', headers.get("content-type", ""))
    if found:
        boundary = found.group(1)
        headers["content-type"] = headers["content-type"].replace(boundary, "B")
        body = body.replace(boundary.encode(), b"B")
    return response.status_code, headers, body


def _audit_rows(runtime: Runtime) -> list[tuple]:
    with runtime.index.read() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        return [(r.principal_kind, r.subject, r.action, r.outcome, r.reason,
                 r.study_instance_uid, r.series_instance_uid, r.sop_instance_uids,
                 r.patient_ins, r.kos_uid, r.client_address) for r in rows]


def test_hot_and_routed_answers_and_audit_rows_are_the_same(
        runtime: Runtime, loaded: dict[str, str]) -> None:
    """R10/R15: the same answer and the same audit row, hot or routed."""
    app = create_app(runtime)
    hot = app.hot_routes
    assert hot is not None
    statuses = []
    with TestClient(app) as client:
        for url, headers in _requests(loaded):
            before = len(_audit_rows(runtime))
            app.hot_routes = hot
            assert hot.find({"type": "http", "method": "GET", "path": url.split("?")[0]})
            fast = client.get(url, headers=headers)
            app.hot_routes = None
            routed = client.get(url, headers=headers)
            rows = _audit_rows(runtime)[before:]
            assert len(rows) == 2, (url, rows)
            assert rows[0] == rows[1], url
            assert _boundary_free(fast) == _boundary_free(routed), url
            statuses.append(fast.status_code)
    # the cases above do reach every kind of answer
    assert {200, 204, 400, 404, 406} <= set(statuses), statuses
    assert statuses.count(200) >= 12


def test_unauthenticated_requests_are_refused_and_audited_alike(
        tmp_path: Path, database_url: str) -> None:
    """R15: a request without credentials is 401 with its challenge and a denied audit row,
    hot or routed."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url,
                        dicomweb_auth="psc", public_url="https://gw.test")
    runtime = Runtime.build(settings)
    try:
        app = create_app(runtime)
        hot = app.hot_routes
        with TestClient(app) as client:
            for url in ("/dicom-web/studies?PatientID=X",
                        "/dicom-web/studies/1.2/series/1.3/instances/1.4"):
                answers = []
                for routes in (hot, None):
                    app.hot_routes = routes
                    answers.append(client.get(url))
                assert [a.status_code for a in answers] == [401, 401]
                assert answers[0].headers["www-authenticate"] == \
                    answers[1].headers["www-authenticate"] == 'Bearer realm="DRIMbox"'
                assert answers[0].json() == answers[1].json()
        rows = _audit_rows(runtime)
        assert [(r[3], r[4]) for r in rows] == [("denied", "no_credentials")] * 4
    finally:
        runtime.close()


def test_the_router_picks_the_route_function_the_hot_path_calls(runtime: Runtime) -> None:
    """Whatever routes come before them, the paths the hot path takes are those of these
    functions for FastAPI's router too; a trailing slash, HEAD and other paths stay routed."""
    app = create_app(runtime)
    hot = app.hot_routes
    app.hot_routes = None

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict) -> None:
        return None

    import anyio

    def routed_endpoint(path: str):
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "headers": [], "scheme": "http",
                 "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
                 "http_version": "1.1", "asgi": {"version": "3.0"}}
        anyio.run(app, scope, receive, send)
        route = scope.get("route")
        return route.endpoint if route is not None else None

    assert len(hot.routes) == 8
    for route in hot.routes:
        parts = [s if s is not None else ("1" if n == "frames" else f"1.2.{k}")
                 for k, (s, n) in enumerate(zip(route.segments, _names(route), strict=True))]
        path = "/dicom-web/" + "/".join(parts)
        found = hot.find({"type": "http", "method": "GET", "path": path})
        assert found is not None and found[0] is route, path
        assert routed_endpoint(path) is route.endpoint, path
    for path in ("/dicom-web/studies/", "/dicom-web/studies/1.2/metadata",
                 "/dicom-web/studies/1.2/series/1.3/instances/1.4/metadata",
                 "/dicom-web/studies/1.2/series/1.3", "/dicom-web/studies//series",
                 "/studies", "/dicom-web/studies/1.2/series/1.3/instances/1.4/rendered"):
        assert hot.find({"type": "http", "method": "GET", "path": path}) is None, path
    assert hot.find({"type": "http", "method": "HEAD", "path": "/dicom-web/studies"}) is None
    assert hot.find({"type": "http", "method": "GET", "path": "/dicom-web/studies",
                     "root_path": "/pacs"}) is None


def _names(route) -> list[str | None]:
    names = iter(route.names)
    return [next(names) if s is None else None for s in route.segments]


def test_an_unexpected_error_is_a_plain_500_either_way(
        runtime: Runtime, loaded: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a hot route is answered as Starlette's error middleware answers it (500,
    ``Internal Server Error``, the exception left for the server to log), and the request
    is still audited (R15)."""
    from dicomweb import qido

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(qido, "search", broken)
    app = create_app(runtime)
    hot = app.hot_routes
    answers = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for routes in (hot, None):
            app.hot_routes = routes
            before = len(_audit_rows(runtime))
            answers.append(client.get(f"/dicom-web/studies?PatientID={INS}"))
            assert len(_audit_rows(runtime)) == before + 1
    assert [(a.status_code, a.text) for a in answers] == [(500, "Internal Server Error")] * 2
    app.hot_routes = hot
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug"):
        client.get(f"/dicom-web/studies?PatientID={INS}")
