"""The base of every URI we emit: configured public URL, or a trusted proxy's forwarded headers
. Unit tests of ``dicomweb.urls`` and of the ``trusted_proxies`` setting; the
STOW tests check the same rule through a real server."""

from __future__ import annotations

import pytest

from dicomweb.urls import DicomWebURLs, effective_public_url, is_trusted_proxy
from gateway.config import ConfigError, load_settings

PUBLIC = "https://drimbox.chu.example/imaging"


def eff(peer: str | None, headers: dict[str, str], trusted: list[str] | None = None) -> str:
    return effective_public_url(
        PUBLIC, peer, {k.lower(): v for k, v in headers.items()}, trusted or []
    )


def test_without_trusted_proxies_headers_and_host_are_ignored() -> None:
    headers = {
        "Host": "evil.example",
        "Forwarded": "proto=http;host=evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Prefix": "/evil",
    }
    assert eff("127.0.0.1", headers) == PUBLIC
    assert eff("10.0.0.9", headers, ["10.0.0.1"]) == PUBLIC  # peer not in the list
    assert eff(None, headers, ["10.0.0.1"]) == PUBLIC


def test_trusted_proxy_x_forwarded_headers() -> None:
    headers = {
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gw.hop.example:8443",
        "X-Forwarded-Prefix": "/drim/",
    }
    assert eff("10.0.0.1", headers, ["10.0.0.1"]) == "http://gw.hop.example:8443/drim"
    # Only some parts forwarded: the others come from the configured URL.
    assert eff("10.0.0.1", {"X-Forwarded-Host": "a.example"}, ["10.0.0.0/24"]) == (
        "https://a.example/imaging"
    )
    assert eff("10.0.0.1", {"X-Forwarded-Prefix": "/"}, ["10.0.0.1"]) == (
        "https://drimbox.chu.example"
    )


def test_trusted_proxy_forwarded_header_last_element_wins() -> None:
    # A client may send its own Forwarded header; the proxy appends its element last.
    headers = {
        "Forwarded": 'for=1.2.3.4;host=evil.example;proto=http, '
        'for=192.0.2.60;proto=https;host="viewer.example"',
        "X-Forwarded-Host": "ignored.example",
    }
    assert eff("::1", headers, ["::1"]) == "https://viewer.example/imaging"
    assert eff("10.0.0.1", {"X-Forwarded-Host": "x.example, y.example"}, ["10.0.0.1"]) == (
        "https://y.example/imaging"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "evil.example/path"},
        {"X-Forwarded-Host": "evil.example@other"},
        {"X-Forwarded-Proto": "javascript"},
        {"X-Forwarded-Prefix": "no-leading-slash"},
        {"X-Forwarded-Prefix": "/a b"},
        {"X-Forwarded-Prefix": '/"><script>'},
        {"Forwarded": "host=evil.example;;;garbage"},
        {"Forwarded": 'host="evil.example/x"'},
    ],
)
def test_malformed_forwarded_values_are_ignored(headers: dict[str, str]) -> None:
    assert eff("10.0.0.1", headers, ["10.0.0.1"]) == PUBLIC


def test_is_trusted_proxy_addresses_and_networks() -> None:
    assert is_trusted_proxy("10.1.2.3", ["10.1.0.0/16"])
    assert is_trusted_proxy("::1", ["::1/128"])
    assert not is_trusted_proxy("10.2.0.1", ["10.1.0.0/16"])
    assert not is_trusted_proxy("testclient", ["10.1.0.0/16"])
    assert not is_trusted_proxy("127.0.0.1", [])


def test_urls_from_effective_base() -> None:
    urls = DicomWebURLs("http://gw.example/drim")
    assert urls.instance("1.2.3", "4.5", "6.7") == (
        "http://gw.example/drim/dicom-web/studies/1.2.3/series/4.5/instances/6.7"
    )
    with pytest.raises(ValueError):
        urls.study("1.2/../3")


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIMBOX_CONFIG", raising=False)
    monkeypatch.setenv("DRIMBOX_TRUSTED_PROXIES", '["127.0.0.1", "10.0.0.0/8", "::1"]')
    assert load_settings().trusted_proxies == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert load_settings(trusted_proxies=[]).trusted_proxies == []
    monkeypatch.setenv("DRIMBOX_TRUSTED_PROXIES", '["proxy.example"]')
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings()
