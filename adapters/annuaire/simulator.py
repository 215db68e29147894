"""``drimbox annuaire-sim``: an Annuaire Santé FHIR API on loopback, for tests and demos.

It answers what :class:`~adapters.annuaire.client.AnnuaireClient` asks the real API
(``https://gateway.api.esante.gouv.fr/fhir/v2``), with resources of the real shape read from a
JSON fixture (``{"resources": [...]}``, :file:`fixture.json` by default):

* ``GET /Practitioner?identifier=[system|]value`` and ``GET /Organization?identifier=...``:
  a FHIR R4 ``Bundle`` of type ``searchset`` (``total``, ``entry[].fullUrl``,
  ``entry[].search.mode = match``), empty when nothing matches;
* ``GET /PractitionerRole?practitioner=<id>[&active=true][&_include=PractitionerRole:organization]``:
  the activities of a practitioner, with their organizations as ``include`` entries;
* ``GET /{type}/{id}``: one resource, or 404 with an ``OperationOutcome``.

Like the real gateway it wants the ``ESANTE-API-KEY`` header on every request: missing or
wrong, the answer is **401** (with an ``OperationOutcome`` saying which). ``record`` keeps each
request's path and query (never the key) for tests.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

API_KEY_HEADER = "ESANTE-API-KEY"
FHIR_JSON = "application/fhir+json"
DEFAULT_FIXTURE = Path(__file__).with_name("fixture.json")
TYPES = ("Practitioner", "PractitionerRole", "Organization")


def load_fixture(path: Path) -> list[dict[str, Any]]:
    """The resources of a fixture file; ``ValueError`` names what is wrong."""
    data = json.loads(path.read_text("utf-8"))
    resources = data.get("resources") if isinstance(data, dict) else None
    if not isinstance(resources, list):
        raise ValueError(f"{path}: no \"resources\" list")
    for r in resources:
        if not isinstance(r, dict) or r.get("resourceType") not in TYPES or not r.get("id"):
            raise ValueError(f"{path}: a resource without an id, or not one of {TYPES}")
    return resources


def _outcome(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": text}]}, status, media_type=FHIR_JSON)


def _matches_identifier(resource: dict[str, Any], token: str) -> bool:
    system, sep, value = token.rpartition("|")
    for ident in resource.get("identifier") or ():
        if ident.get("value") == value and (not sep or ident.get("system") == system):
            return True
    return False


class AnnuaireSimulator:
    def __init__(self, resources: list[dict[str, Any]], api_key: str, base_url: str) -> None:
        self.resources = resources
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.record: list[str] = []
        self.app = self._build()

    def _of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == kind]

    def _get(self, kind: str, rid: str) -> dict[str, Any] | None:
        return next((r for r in self._of(kind) if r["id"] == rid), None)

    def _bundle(self, matches: list[dict[str, Any]],
                included: list[dict[str, Any]] = ()) -> JSONResponse:
        entries = [{"fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}", "resource": r,
                    "search": {"mode": mode}}
                   for mode, group in (("match", matches), ("include", included)) for r in group]
        return JSONResponse({"resourceType": "Bundle", "id": secrets.token_hex(8),
                             "type": "searchset", "total": len(matches), "entry": entries},
                            media_type=FHIR_JSON)

    def _build(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def api_key(request: Request, call_next):  # noqa: ANN001, ANN202
            self.record.append(str(request.url.path) + (f"?{request.url.query}"
                                                        if request.url.query else ""))
            given = request.headers.get(API_KEY_HEADER)
            if given is None:
                return _outcome(401, "login", f"missing {API_KEY_HEADER} header")
            if not secrets.compare_digest(given.encode(), self.api_key.encode()):
                return _outcome(401, "login", f"invalid {API_KEY_HEADER}")
            return await call_next(request)

        @app.get("/{kind}")
        def search(kind: str, request: Request) -> JSONResponse:
            if kind not in TYPES:
                return _outcome(404, "not-supported", f"unknown resource type {kind}")
            q = request.query_params
            found = self._of(kind)
            for token in q.getlist("identifier"):
                found = [r for r in found if _matches_identifier(r, token)]
            if q.get("active") == "true":
                found = [r for r in found if r.get("active", True)]
            included: list[dict[str, Any]] = []
            if kind == "PractitionerRole":
                who = q.get("practitioner")
                if who:
                    ref = who if "/" in who else f"Practitioner/{who}"
                    found = [r for r in found
                             if (r.get("practitioner") or {}).get("reference") == ref]
                if "PractitionerRole:organization" in q.getlist("_include"):
                    for r in found:
                        ref = (r.get("organization") or {}).get("reference", "")
                        org = self._get("Organization", ref.rpartition("/")[2])
                        if org is not None and org not in included:
                            included.append(org)
            return self._bundle(found, included)

        @app.get("/{kind}/{rid}")
        def read(kind: str, rid: str) -> JSONResponse:
            found = self._get(kind, rid) if kind in TYPES else None
            if found is None:
                return _outcome(404, "not-found", f"{kind}/{rid} is not known")
            return JSONResponse(found, media_type=FHIR_JSON)

        return app


def serve(sim: AnnuaireSimulator, host: str, port: int, tls_cert: Path | None = None,
          tls_key: Path | None = None) -> None:
    """Run the simulator with uvicorn (blocking): plain http, or https with ``tls_cert``."""
    import uvicorn

    uvicorn.run(sim.app, host=host, port=port, log_level="warning", proxy_headers=False,
                ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None)
