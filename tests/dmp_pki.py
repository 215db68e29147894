"""The tests' throw-away PKI (R7, R12): the product's development PKI (``drimbox pki init``,
:mod:`gateway.pki`) with its negative set, valid two days. A CA, a TLS server certificate for
127.0.0.1/localhost, a client ORG authentication certificate, an ORG signature certificate;
expired ones, and ones from another (rogue) CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.pki import init_pki

#: The subject of the server certificate: the shape of the ANS whitelist's
#: ``DNCertificatOperateur`` (``CN=<host>,OU=<structure id>,O=<centre>,ST=...,C=FR``).
SERVER_DN = "CN=localhost,OU=499700367909006,O=CENTRE IMAGERIE TEST,ST=Paris (75),C=FR"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    sign_cert: Path
    sign_key: Path
    rogue_ca_cert: Path
    rogue_sign_cert: Path
    rogue_sign_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    expired_server_cert: Path
    expired_server_key: Path


def make_pki(d: Path) -> Pki:
    p = init_pki(d, days=2, with_negative=True)
    n = p.negative
    assert n is not None and p.server_dn == SERVER_DN, p.server_dn
    return Pki(p.ca_cert, p.server_cert, p.server_key, p.client_cert, p.client_key,
               p.sign_cert, p.sign_key, n.other_ca_cert, n.other_sign_cert, n.other_sign_key,
               n.other_client_cert, n.other_client_key, n.expired_client_cert,
               n.expired_client_key, n.expired_server_cert, n.expired_server_key)
