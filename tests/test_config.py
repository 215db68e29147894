"""Configuration of ``drimbox serve``: a wrong setting stops it with exit status 2 and a message
naming the setting; a TOML file given with ``--config`` is used and ``DRIMBOX_*`` environment
variables override it.

The error cases run the real command line in a child process and never reach the server start,
so they are fast. One test starts the server from a TOML file to show its values really apply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from peers import free_port, require_tool

from gateway.config import ConfigError, load_settings


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any DRIMBOX_* variable, plus ``extra``. The data dir
    and ports point at the test's own places in case a case unexpectedly starts a server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(
        DRIMBOX_DATA_DIR=str(tmp_path / "data"),
        DRIMBOX_DICOM_PORT=str(free_port()),
        DRIMBOX_HTTP_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        env=_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


ENV_ERRORS: dict[str, tuple[dict[str, str], list[str]]] = {
    "port-not-a-number": ({"DRIMBOX_DICOM_PORT": "notanumber"}, ["dicom_port",
                                                                 "DRIMBOX_DICOM_PORT"]),
    "port-out-of-range": ({"DRIMBOX_HTTP_PORT": "70000"}, ["http_port", "DRIMBOX_HTTP_PORT"]),
    "ae-title-17-chars": ({"DRIMBOX_AE_TITLE": "ABCDEFGHIJKLMNOPQ"}, ["ae_title",
                                                                     "DRIMBOX_AE_TITLE"]),
    "ae-title-backslash": ({"DRIMBOX_AE_TITLE": "DRIM\\BOX"}, ["ae_title"]),
    "database-mysql": ({"DRIMBOX_DATABASE_URL": "mysql://x"}, ["database_url",
                                                               "DRIMBOX_DATABASE_URL"]),
    "duplicate-policy": ({"DRIMBOX_DUPLICATE_POLICY": "overwrite"}, ["duplicate_policy"]),
    "boolean": ({"DRIMBOX_RESTRICT_CALLERS": "maybe"}, ["restrict_callers"]),
    "peers-not-json": ({"DRIMBOX_PEERS": "PACS@10.0.0.5:104"}, ["peers"]),
    "peer-bad-port": (
        {"DRIMBOX_PEERS": '[{"ae_title": "PACS", "host": "10.0.0.5", "port": 0}]'},
        ["peers", "port"],
    ),
    "restrict-without-peers": ({"DRIMBOX_RESTRICT_CALLERS": "true"}, ["restrict_callers"]),
    "log-level": ({"DRIMBOX_LOG_LEVEL": "CHATTY"}, ["log_level"]),
    "public-url": ({"DRIMBOX_PUBLIC_URL": "drimbox.example.org"}, ["public_url"]),
}


@pytest.mark.parametrize("case", list(ENV_ERRORS))
def test_wrong_environment_setting_stops_serve(tmp_path: Path, case: str) -> None:
    """A wrong DRIMBOX_* value ends ``drimbox serve`` with status 2 and a
    message that names the setting; nothing is created on disk."""
    env, names = ENV_ERRORS[case]
    proc = _serve(tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists()


TOML_ERRORS: dict[str, tuple[str, list[str]]] = {
    "unknown-key": ('dicom_prot = 104\n', ["dicom_prot"]),
    "wrong-type": ('max_associations = "many"\n', ["max_associations"]),
    "out-of-range": ('network_timeout = 0\n', ["network_timeout"]),
    "bad-ae-title": ('ae_title = "MUCH_TOO_LONG_AE_TITLE"\n', ["ae_title"]),
    "bad-peer": ('[[peers]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = "x"\n',
                 ["peers", "port"]),
    "not-toml": ('dicom_port = \n', ["drimbox.toml"]),
}


@pytest.mark.parametrize("case", list(TOML_ERRORS))
def test_wrong_toml_file_stops_serve(tmp_path: Path, case: str) -> None:
    """A TOML file with an unknown key, a wrong value or broken syntax
    ends ``drimbox serve --config`` with status 2 and a message naming the key (or the file)."""
    text, names = TOML_ERRORS[case]
    config = tmp_path / "drimbox.toml"
    config.write_text(text)
    proc = _serve(tmp_path, "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    assert "configuration error" in proc.stderr
    # (the environment of _serve sets no key these files get wrong: it would win over them)
    for name in names:
        assert name in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists()


def test_missing_config_file_stops_serve(tmp_path: Path) -> None:
    """``--config`` naming a file that does not exist is an error (2)."""
    missing = tmp_path / "nowhere" / "drimbox.toml"
    proc = _serve(tmp_path, "--config", str(missing))
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr


def test_toml_values_apply_and_environment_overrides(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Precedence environment > TOML file > defaults, as load_settings
    builds it."""
    # load_settings sets DRIMBOX_CONFIG in os.environ: register it so that monkeypatch's undo
    # removes it again, then clear every DRIMBOX_* variable for the test.
    monkeypatch.setenv("DRIMBOX_CONFIG", "")
    for k in list(os.environ):
        if k.startswith("DRIMBOX_"):
            monkeypatch.delenv(k)
    config = tmp_path / "drimbox.toml"
    config.write_text(
        'ae_title = "TOMLBOX"\ndicom_port = 10104\nduplicate_policy = "refuse"\n'
        '[[peers]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
    )
    monkeypatch.setenv("DRIMBOX_DICOM_PORT", "10105")
    s = load_settings(config)
    assert s.ae_title == "TOMLBOX"  # from the file
    assert s.duplicate_policy == "refuse"  # from the file
    assert [(p.ae_title, p.host, p.port) for p in s.peers] == [("PACS", "10.0.0.5", 104)]
    assert s.dicom_port == 10105  # the environment wins
    assert s.http_port == 8080  # the default
    monkeypatch.setenv("DRIMBOX_AE_TITLE", "ENVBOX")
    assert load_settings(config).ae_title == "ENVBOX"
    monkeypatch.setenv("DRIMBOX_AE_TITLE", "X" * 17)
    with pytest.raises(ConfigError, match="ae_title"):
        load_settings(config)
    assert os.environ["DRIMBOX_CONFIG"] == str(config)


def _echo(port: int, aec: str) -> int:
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-aec", aec, "-to", "5", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode


def test_serve_uses_toml_file_with_environment_override(tmp_path: Path) -> None:
    """``drimbox serve --config FILE`` really runs with the file's values
    (AE title, HTTP port, data dir) except those the environment overrides (DICOM port)."""
    toml_dicom, env_dicom, http = free_port(), free_port(), free_port()
    data_dir = tmp_path / "toml-data"
    config = tmp_path / "drimbox.toml"
    config.write_text(
        f'ae_title = "TOMLBOX"\ndata_dir = "{data_dir}"\n'
        f'dicom_port = {toml_dicom}\nhttp_port = {http}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env["DRIMBOX_DICOM_PORT"] = str(env_dicom)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=1) as client:  # one client (and TLS context) for the poll
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get(f"http://127.0.0.1:{http}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert (data_dir / "storage").is_dir()  # data_dir from the file
        assert _echo(env_dicom, "TOMLBOX") == 0  # AE title from the file, port from env
        assert _echo(env_dicom, "DRIMBOX") != 0  # the default AE title is not ours
        assert _echo(toml_dicom, "TOMLBOX") != 0  # the file's port was overridden
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()


def test_misspelled_environment_variable_is_refused(tmp_path: Path) -> None:
    """A typo in a DRIMBOX_* variable stops start-up instead of being ignored."""
    env = {**os.environ, "DRIMBOX_DATA_DIR": str(tmp_path / "data"), "DRIMBOX_RESTRICT_CALERS": "true"}
    env = {k: v for k, v in env.items() if not (k.startswith("DRIMBOX_") and k not in (
        "DRIMBOX_DATA_DIR", "DRIMBOX_RESTRICT_CALERS"))}
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "DRIMBOX_RESTRICT_CALERS" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("env", "trigger"), [
    ({}, "stable"),
    ({"DRIMBOX_HL7_PORT": "12575"}, "report"),
    ({"DRIMBOX_HL7_PORT": "12575", "DRIMBOX_PUBLICATION_TRIGGER": "stable"}, "stable"),
    ({"DRIMBOX_PUBLICATION_TRIGGER": "report"}, "report"),
])
def test_publication_trigger_default_follows_hl7(env: dict, trigger: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports publish by default when the RIS can send them."""
    monkeypatch.setenv("DRIMBOX_CONFIG", "")
    for k in list(os.environ):
        if k.startswith("DRIMBOX_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_settings(None).effective_publication_trigger == trigger


def test_unknown_publication_trigger_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIMBOX_CONFIG", "")
    for k in list(os.environ):
        if k.startswith("DRIMBOX_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("DRIMBOX_PUBLICATION_TRIGGER", "hourly")
    with pytest.raises(ConfigError, match="publication_trigger"):
        load_settings(None)
