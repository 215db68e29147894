"""Access-control settings (R10, R12): anonymous DICOMweb is off by default,
``none`` stays loopback-only, PSC settings are checked; a gateway with ``psc`` and no issuer
still starts (``make run`` on a fresh checkout) and says why it refuses; the audit's client
address honours trusted proxies only."""

from __future__ import annotations

import os
from types import SimpleNamespace

import httpx
import pytest
from starlette.requests import Request

from dicomweb.urls import client_address
from gateway.config import ConfigError, load_settings


def test_anonymous_dicomweb_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DRIMBOX_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert settings.dicomweb_auth == "psc"
    assert settings.psc_discovery_path == "/.well-known/wallet-openid-configuration"
    assert settings.psc_token_check == "introspection"
    # psc may listen on the network (behind https: cookies and tokens never cross plain http,
    # R12; here a proxy terminates TLS); none may not.
    assert load_settings(http_host="0.0.0.0", http_tls="proxy",
                         public_url="https://drimbox.example").dicomweb_auth == "psc"
    with pytest.raises(ConfigError, match="https"):
        load_settings(http_host="0.0.0.0")
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(http_host="0.0.0.0", dicomweb_auth="none")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"psc_issuer": "http://psc.example/realm", "psc_client_id": "x"}, "https"),
    ({"psc_issuer": "not a url", "psc_client_id": "x"}, "http"),
    ({"psc_issuer": "https://psc.example/realm"}, "psc_client_id"),
    ({"psc_issuer": "https://psc.example/realm", "psc_client_id": "x"}, "psc_client_secret"),
    ({"dicomweb_auth": "bearer"}, "dicomweb_auth"),
])
def test_wrong_psc_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_psc_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    bas = "https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet"
    monkeypatch.setenv("DRIMBOX_PSC_ISSUER", bas + "/")
    monkeypatch.setenv("DRIMBOX_PSC_CLIENT_ID", "drimbox")
    monkeypatch.setenv("DRIMBOX_PSC_TOKEN_CHECK", "jwt")
    monkeypatch.setenv("DRIMBOX_STAFF_ROLES", '{"899700427885": ["viewer", "admin"]}')
    s = load_settings()
    assert s.psc_issuer == bas
    assert s.staff_roles == {"899700427885": ["viewer", "admin"]}
    # Loopback http is allowed (the simulator).
    assert load_settings(psc_issuer="http://127.0.0.1:8180/auth/realms/esante-wallet").psc_issuer


def test_psc_without_issuer_starts_and_explains(gateway_factory) -> None:
    """A fresh checkout's ``make run``: starts, warns, 401 without a token, 503 with one."""
    gw = gateway_factory(DRIMBOX_DICOMWEB_AUTH="psc").start()
    assert "no PSC issuer is configured" in gw.log()
    base = f"{gw.url}/dicom-web"
    r = httpx.get(f"{base}/studies")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="DRIMbox"'
    r = httpx.get(f"{base}/studies", headers={"Authorization": "Bearer abc.def.ghi"})
    assert r.status_code == 503 and "DRIMBOX_PSC_ISSUER" in r.json()["detail"]
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
    assert "abc.def.ghi" not in gw.log()


def _request(peer: str, headers: dict[str, str], trusted: list[str]) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(runtime=SimpleNamespace(
        settings=SimpleNamespace(trusted_proxies=trusted))))
    return Request({"type": "http", "app": app, "client": (peer, 5000),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_client_address_honours_trusted_proxies_only() -> None:
    fwd = {"Forwarded": 'for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"',
           "X-Forwarded-For": "198.51.100.7"}
    assert client_address(_request("10.0.0.9", fwd, [])) == "10.0.0.9"
    assert client_address(_request("10.0.0.9", fwd, ["10.0.0.0/8"])) == "2001:db8::1"
    xff = {"X-Forwarded-For": "203.0.113.5, 198.51.100.7:8443"}
    assert client_address(_request("10.0.0.9", xff, ["10.0.0.0/8"])) == "198.51.100.7"
    bad = {"X-Forwarded-For": "not-an-address"}
    assert client_address(_request("10.0.0.9", bad, ["10.0.0.0/8"])) == "10.0.0.9"
