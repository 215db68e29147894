"""The sandbox's settings: one TOML file per gateway (``source.toml``, ``consumer.toml`` in
``--dir``, readable and reusable with ``--config``), and the development ANS whitelist that
names the Source.

The Source answers HTTPS with the development PKI's server certificate and asks browsers and
consumers for an optional client certificate (R7); its DICOM and MLLP listeners are plain, on
loopback. It publishes to ``dmp-sim`` when the RIS's report arrives (``publication_trigger =
report``, the default with ``hl7_port``) and accepts the Consumer's PSC tokens
(introspection, audience ``drimbox-conso``). The Consumer runs the consumer role only, trusts
the Source through an unsigned development whitelist (``whitelist_insecure_allow_unsigned``),
retrieves with the PKI's client certificate and imports into Orthanc when there is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.pki import DevPki
from gateway.sandbox.layout import (
    CONSUMER_PSC_CLIENT,
    HOST,
    SOURCE_AE,
    SOURCE_PSC_CLIENT,
    Layout,
)

#: The test practitioners of ``psc-sim`` (adapters/psc/practitioners.py) the sandbox names.
STAFF_PRACTITIONER = "899999000001"
"""CLAIRE MARTIN: centre staff of the Source (roles viewer and admin)."""
CONSUMER_PRACTITIONER = "899999000002"
"""PAUL DURAND: a clinician of the consumer's centre (one activity: no choice page)."""

STRUCTURE_ID = "499700367909006"


def toml(settings: dict[str, Any]) -> str:
    """A flat TOML document (strings, numbers, booleans, lists, one-level tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, Path):
            v = str(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # a TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"no TOML for {v!r}")

    return "".join(f"{key} = {value(v)}\n" for key, v in settings.items())


def _dmp(layout: Layout, pki: DevPki) -> dict[str, Any]:
    return {
        "dmp_registry_url": f"{layout.dmp_url}/registry",
        "dmp_repository_url": f"{layout.dmp_url}/repository",
        "dmp_ca_bundle": pki.ca_cert.resolve(),
        "dmp_client_cert": pki.client_cert.resolve(),
        "dmp_client_key": pki.client_key.resolve(),
        "dmp_sign_cert": pki.sign_cert.resolve(),
        "dmp_sign_key": pki.sign_key.resolve(),
        "dmp_structure_id": STRUCTURE_ID,
        "dmp_activity_sector": "SA07",
        "dmp_author_id": "899700367909",
        "dmp_author_name": "Alain PAT-SIX",
        "dmp_lps_id": "LPS-SANDBOX",
        "dmp_lps_homologation_id": "HOMOL-SANDBOX",
    }


def source_settings(layout: Layout, pki: DevPki) -> dict[str, Any]:
    client_id, secret = SOURCE_PSC_CLIENT
    return {
        "roles": "source",
        "data_dir": layout.data("source").resolve(),
        "host": HOST,
        "ae_title": SOURCE_AE,
        "dicom_port": layout.port("source_dicom"),
        "http_port": layout.port("source_http"),
        "hl7_port": layout.port("source_hl7"),
        "public_url": layout.source_url,
        "tls_cert": pki.server_cert.resolve(),
        "tls_key": pki.server_key.resolve(),
        "tls_ca_bundle": pki.ca_cert.resolve(),
        "http_tls": "on",
        "http_tls_client_auth": "optional",
        "dicom_tls": "off",
        "hl7_tls": "off",
        "dicom_workers": 0,
        "repository_oid": "1.2.250.1.999.1.1",
        "institution_name": "CENTRE IMAGERIE SANDBOX",
        "structure_id": "300017985",
        "healthcare_facility_type": "SA07",
        "study_stable_seconds": 5.0,
        **_dmp(layout, pki),
        "dicomweb_auth": "psc",
        "psc_issuer": layout.psc_issuer,
        "psc_client_id": client_id,
        "psc_client_secret": secret,
        "psc_token_check": "introspection",
        "psc_audiences": [CONSUMER_PSC_CLIENT[0]],
        "staff_roles": {STAFF_PRACTITIONER: ["viewer", "admin"]},
    }


def consumer_settings(layout: Layout, pki: DevPki, whitelist: Path,
                      orthanc: bool) -> dict[str, Any]:
    client_id, secret = CONSUMER_PSC_CLIENT
    settings = {
        "roles": "consumer",
        "data_dir": layout.data("consumer").resolve(),
        "host": HOST,
        "http_port": layout.port("consumer_http"),
        "public_url": layout.consumer_url,
        "dicom_workers": 0,
        "institution_name": "CENTRE CONSOMMATEUR SANDBOX",
        **_dmp(layout, pki),
        "auto_publish": False,
        "dicomweb_auth": "psc",
        "psc_issuer": layout.psc_issuer,
        "psc_client_id": client_id,
        "psc_client_secret": secret,
        "whitelist_source": whitelist.resolve(),
        "whitelist_insecure_allow_unsigned": True,
        "consumer_source_client_cert": pki.client_cert.resolve(),
        "consumer_source_client_key": pki.client_key.resolve(),
        "consumer_source_ca_bundle": pki.ca_cert.resolve(),
        "consumer_source_timeout": 30.0,
        "staff_roles": {STAFF_PRACTITIONER: ["viewer", "admin"]},  # the console at /
    }
    if orthanc:
        settings.update(export_destination="orthanc", export_orthanc_url=layout.orthanc_url)
    return settings


def whitelist_xml(host: str, operator_dn: str) -> str:
    """An unsigned development ANS whitelist (R11) naming one Source: its DICOMweb host and
    its server certificate's subject DN."""
    from xml.sax.saxutils import escape

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA" '
        'versionFormat="1.0.0"><DateDeGeneration>2026-12-01T00:00:00Z</DateDeGeneration>'
        f"<ListeDomaines><Domaine><Identifiant>1</Identifiant><db>{escape(host)}</db><vi></vi>"
        "<Denomination>SOURCE SANDBOX</Denomination><DNCertificatOperateur>"
        f"{escape(operator_dn)}</DNCertificatOperateur>"
        "<SupportContact>sandbox@example.org</SupportContact>"
        "<DateMAJ>2026-12-01T00:00:00Z</DateMAJ></Domaine></ListeDomaines>"
        "</ListeBlancheDRIM-M>\n")


def orthanc_config(layout: Layout, plugins: list[str]) -> dict[str, Any]:
    """A private Orthanc: storage under ``--dir``, no remote access, no authentication (it
    listens on loopback only, :mod:`gateway.sandbox.supervisor` keeps it there)."""
    storage = str(layout.data("orthanc").resolve())
    return {
        "Name": "drimbox-sandbox-pacs",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "StorageCompression": False,
        "Plugins": plugins,
        "HttpServerEnabled": True,
        "HttpPort": layout.port("orthanc_http"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": layout.port("orthanc_dicom"),
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "SaveJobs": False,
    }
