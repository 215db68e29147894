"""A client of the Annuaire Santé FHIR API (ANS), the gateway's
:class:`~gateway.directory.professionals.ProfessionalDirectory`.

Requests, each with the ``ESANTE-API-KEY`` header (``annuaire_api_key``) to ``annuaire_url``
(the API's base, ``https://gateway.api.esante.gouv.fr/fhir/v2`` in production):

* a professional by national identifier: ``GET Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1|<IdNat_PS>``
  (IdNat_PS = ``8`` + RPPS or ``0`` + ADELI; a bare 11-digit RPPS gets its ``8``), then their
  activities ``GET PractitionerRole?practitioner=<id>&active=true&_include=PractitionerRole:organization``;
* a structure by FINESS: ``GET Organization?identifier=https://finess.esante.gouv.fr|<FINESS>``
  (or ``urn:oid:1.2.250.1.71.4.2.2|<IdNat_Struct>`` for a 10-character identifier).

What is read (FHIR R4, fr-core and ANS annuaire profiles): the usual name; the profession
(TRE_G15) of the activity's ``code`` or the practitioner's ``qualification``; the specialty
(TRE_R38) of the activity; the activity's organization (IdNat_Struct, FINESS, name); the
MSSanté mailboxes: ``telecom`` of system ``email`` carrying the ANS MSSanté mailbox extension
or an address of the ``mssante.fr`` domains, the activity's before the practitioner's.

Answers are cached for ``annuaire_cache_seconds`` (in memory, per process), unknown
identifiers too; failures are not. HTTP 401/403 raise
:class:`~gateway.directory.professionals.DirectoryAccessRefused` (the API key is missing or
wrong: said as such), 5xx, timeouts and connection failures
:class:`~gateway.directory.professionals.DirectoryUnavailable`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from gateway.directory.professionals import (
    OID_IDNPS,
    OID_IDNST,
    DirectoryAccessRefused,
    DirectoryError,
    DirectoryUnavailable,
    Professional,
    Structure,
    idnps_of,
)
from gateway.manifest.xds_metadata import Code
from gateway.reports.cda import is_mssante_address

API_KEY_HEADER = "ESANTE-API-KEY"
SYSTEM_FINESS = "https://finess.esante.gouv.fr"
SYSTEM_RPPS = "https://rpps.esante.gouv.fr"
MAILBOX_MSS_EXTENSION = "mailbox-mss"
"""Part of the URL of the ANS extension marking an MSSanté mailbox on a ``telecom``."""
TRE_G15, TRE_R38 = "TRE_G15", "TRE_R38"


def _coding(concepts: list[dict[str, Any]] | None, table: str) -> Code | None:
    """The first coding of ``concepts`` whose system names the NOS table ``table``."""
    for concept in concepts or ():
        for c in concept.get("coding") or ():
            if table in (c.get("system") or "") and c.get("code"):
                return Code(c["code"], c.get("system", ""), c.get("display", ""))
    return None


def mssante_addresses(telecoms: list[dict[str, Any]] | None) -> tuple[str, ...]:
    out = []
    for t in telecoms or ():
        value = (t.get("value") or "").strip()
        if t.get("system") != "email" or "@" not in value:
            continue
        marked = any(MAILBOX_MSS_EXTENSION in (e.get("url") or "")
                     for e in t.get("extension") or ())
        if marked or is_mssante_address(value):
            out.append(value)
    return tuple(out)


def _identifier(resource: dict[str, Any], system: str) -> str:
    return next((i.get("value", "") for i in resource.get("identifier") or ()
                 if i.get("system") == system), "")


def _name(practitioner: dict[str, Any]) -> tuple[str, str]:
    names = practitioner.get("name") or []
    name = next((n for n in names if n.get("use") == "usual"), names[0] if names else {})
    return name.get("family", ""), " ".join(name.get("given") or [])


def structure_of(org: dict[str, Any]) -> Structure:
    return Structure(name=org.get("name", ""), idnst=_identifier(org, f"urn:oid:{OID_IDNST}"),
                     finess=_identifier(org, SYSTEM_FINESS),
                     mssante_addresses=mssante_addresses(org.get("telecom")))


class AnnuaireClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0,
                 cache_seconds: float = 86400.0, verify: str | bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify,
                                  headers={API_KEY_HEADER: api_key,
                                           "Accept": "application/fhir+json"})
        self._cache: dict[tuple[str, str], tuple[float, object]] = {}
        self._lock = threading.Lock()
        self.requests = 0
        """How many HTTP requests were made (the cache's effect, for tests and metrics)."""

    @classmethod
    def from_settings(cls, settings) -> AnnuaireClient:  # noqa: ANN001 - gateway.config.Settings
        if not settings.annuaire_url:
            raise ValueError("annuaire_url is not set")
        if settings.annuaire_api_key is None:
            raise ValueError("annuaire_url needs annuaire_api_key (the ESANTE-API-KEY of the "
                             "centre's Annuaire Santé API subscription)")
        return cls(settings.annuaire_url, settings.annuaire_api_key.get_secret_value(),
                   timeout=settings.annuaire_timeout,
                   cache_seconds=settings.annuaire_cache_seconds,
                   verify=str(settings.annuaire_ca_bundle) if settings.annuaire_ca_bundle
                   else True)

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------------------- cache

    def _cached(self, kind: str, key: str, fetch: Callable[[], object]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._cache.get((kind, key))
            if hit is not None and hit[0] > now:
                return hit[1]
        value = fetch()
        with self._lock:
            self._cache[(kind, key)] = (now + self.cache_seconds, value)
        return value

    # ------------------------------------------------------------------------------ HTTP

    def _search(self, kind: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The entries (resources) of a searchset Bundle."""
        self.requests += 1
        try:
            r = self._http.get(f"/{kind}", params=params)
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"Annuaire Santé {self.base_url} unreachable: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if r.status_code in (401, 403):
            raise DirectoryAccessRefused(
                f"the Annuaire Santé refused our API key (HTTP {r.status_code} on {kind}): "
                "check annuaire_api_key (header ESANTE-API-KEY)")
        if r.status_code >= 500 or r.status_code == 429:
            raise DirectoryUnavailable(f"Annuaire Santé answered HTTP {r.status_code} on {kind}")
        if r.status_code != 200:
            raise DirectoryError(f"Annuaire Santé refused the {kind} search "
                                 f"(HTTP {r.status_code}): {r.text[:200]}")
        try:
            bundle = r.json()
        except ValueError as exc:
            raise DirectoryUnavailable(f"Annuaire Santé answered a {kind} search with no "
                                       "JSON") from exc
        if bundle.get("resourceType") != "Bundle":
            raise DirectoryUnavailable(f"Annuaire Santé answered a {kind} search with no Bundle")
        return [e["resource"] for e in bundle.get("entry") or ()
                if isinstance(e.get("resource"), dict)]

    # ------------------------------------------------------------------------------ port

    def professional(self, national_id: str) -> Professional | None:
        idnps = idnps_of(national_id)
        if not idnps:
            return None
        return self._cached("professional", idnps, lambda: self._professional(idnps))

    def _professional(self, idnps: str) -> Professional | None:
        found = self._search("Practitioner", [("identifier", f"urn:oid:{OID_IDNPS}|{idnps}")])
        practitioners = [r for r in found if r.get("resourceType") == "Practitioner"]
        if not practitioners:
            return None
        p = practitioners[0]
        family, given = _name(p)
        resources = self._search("PractitionerRole", [
            ("practitioner", p["id"]), ("active", "true"),
            ("_include", "PractitionerRole:organization")])
        roles = [r for r in resources if r.get("resourceType") == "PractitionerRole"]
        orgs = {f"Organization/{r['id']}": r for r in resources
                if r.get("resourceType") == "Organization"}
        # The activity that says most: one with an MSSanté mailbox, else the first.
        role = next((r for r in roles if mssante_addresses(r.get("telecom"))),
                    roles[0] if roles else {})
        org = orgs.get((role.get("organization") or {}).get("reference", ""))
        profession = (_coding(role.get("code"), TRE_G15)
                      or _coding([q.get("code", {}) for q in p.get("qualification") or ()],
                                 TRE_G15))
        addresses = mssante_addresses(role.get("telecom")) + tuple(
            a for a in mssante_addresses(p.get("telecom"))
            if a not in mssante_addresses(role.get("telecom")))
        return Professional(idnps=idnps, family=family, given=given, profession=profession,
                            specialty=_coding(role.get("specialty"), TRE_R38),
                            structure=structure_of(org) if org is not None else None,
                            mssante_addresses=addresses)

    def structure(self, finess: str) -> Structure | None:
        value = finess.strip()
        if not value:
            return None
        system = f"urn:oid:{OID_IDNST}" if len(value) == 10 else SYSTEM_FINESS

        def fetch() -> Structure | None:
            found = self._search("Organization", [("identifier", f"{system}|{value}")])
            orgs = [r for r in found if r.get("resourceType") == "Organization"]
            return structure_of(orgs[0]) if orgs else None

        return self._cached("structure", value, fetch)
