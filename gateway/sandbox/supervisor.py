"""The sandbox's child processes: started one by one, each in a session of its own (a
terminal's Ctrl-C reaches the sandbox only, which stops them in order), each told by the
kernel to stop if the sandbox dies without stopping them (``PR_SET_PDEATHSIG``), each
writing to its log under ``--dir/logs``.

:meth:`Supervisor.stop_all` sends SIGTERM to each process group (newest first; a gateway
stops its own workers), waits, then SIGKILLs what is left, so that no process and no port
stays behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1


class StartFailed(RuntimeError):
    """A child exited or did not answer in time; the message names it and its log."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not Linux: the sandbox's own stop still applies
        pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without ``DRIMBOX_*`` (the children read their own TOML files: a
    variable of the shell would override them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(extra or {})
    return env


@dataclass
class Child:
    name: str
    args: Sequence[str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Supervisor:
    logs: Path
    cwd: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        child = Child(name, list(args), self.logs / f"{name}.log")
        with open(child.log_path, "ab") as log:
            child.proc = subprocess.Popen(
                list(args), cwd=self.cwd, env=env if env is not None else child_env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.children.append(child)
        return child

    def drimbox(self, name: str, *args: str) -> Child:
        """``drimbox ARGS`` with this interpreter (the gateway installed here)."""
        return self.start(name, [sys.executable, "-m", "gateway.cli", *args])

    def wait_ready(self, child: Child, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise StartFailed(f"{child.name} exited ({child.proc.returncode}); its log "
                                  f"{child.log_path}:\n{child.log_tail()}")
            try:
                if ready():
                    return
            except (OSError, ssl.SSLError, httpx.HTTPError):
                pass  # not listening yet
            time.sleep(0.2)
        raise StartFailed(f"{child.name} did not answer within {timeout:.0f} s; its log "
                          f"{child.log_path}:\n{child.log_tail()}")

    def stop_all(self, grace: float = 20.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group too: a worker or helper the child started and did not stop.
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            child.proc.wait()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.create_connection((host, port), timeout=1):
        return True
