"""Start ``python -m gateway.cli ...`` processes from an interpreter that has imported the
gateway already (tests only).

Why. The suite starts ``drimbox serve`` about 270 times, and the simulators and short CLI
commands hundreds of times more. Each start from ``exec`` spends ~1.6 s of CPU importing
(SQLAlchemy, pydicom and numpy, FastAPI and pydantic, pynetdicom, Alembic, uvicorn) before
it does anything: a third of the suite's CPU on a 2-core machine. Here one *launcher*
process per pytest process imports all that once; every start is a ``fork`` of it, which
then runs ``gateway.cli`` exactly as ``python -m gateway.cli`` would (``runpy``, its own
``sys.argv``, environment, working directory, standard streams), so a start costs what the
command itself does.

How. The launcher is a child of the pytest process (started on first use, no threads, so
forking it is safe). For each start it forks twice: the grandchild runs the command, the
intermediate child exits at once, and the grandchild is re-parented to the pytest process,
which made itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``). So the test waits for the
command with ``waitpid`` and reads its exit status as for any child; :class:`Launched` has
the part of :class:`subprocess.Popen`'s interface the tests use. The standard streams are
passed as file descriptors over the launcher's socket (``SCM_RIGHTS``).

What still starts from ``exec``: gateways with DICOM worker processes (``prometheus_client``
must be imported after its multiprocess directory is set, and the launcher has imported it),
and the CLI's own tests (``tests/test_cli.py``), which check the entry point of a fresh
interpreter. ``DRIMBOX_TEST_LAUNCHER=0`` turns the launcher off for a whole run.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
PR_SET_CHILD_SUBREAPER = 36
#: What the launcher imports before its first fork: every module a start would import,
#: and the lazily imported ones some commands use.
PRELOAD = (
    "gateway.cli", "gateway.server", "gateway.runtime", "dicomweb.app",
    "gateway.index.engine", "alembic.command", "alembic.runtime.migration",
    "uvicorn", "uvicorn.config", "uvicorn.server", "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.auto", "uvicorn.lifespan.on", "uvicorn.loops.asyncio",
    "psycopg", "sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.sqlite",
    "httpx", "highdicom", "fhir.resources", "joserfc", "authlib",
)


def enabled() -> bool:
    return os.environ.get("DRIMBOX_TEST_LAUNCHER", "1") != "0"


# -- the test's side -------------------------------------------------------------------


class Launched:
    """A process started by the launcher: a child of this process (re-parented), with the
    part of :class:`subprocess.Popen`'s interface the tests use."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        fd = os.pidfd_open(self.pid)
        try:
            if not select.select([fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
        finally:
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """The launcher process of this pytest process, and the socket to it."""

    _lock = threading.Lock()
    _instance: Launcher | None = None

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
             f"import launcher; launcher.serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours

    @classmethod
    def get(cls) -> Launcher:
        with cls._lock:
            if cls._instance is None or cls._instance.proc.poll() is not None:
                cls._instance = Launcher()
            return cls._instance

    def start(self, argv: Sequence[str], env: dict[str, str], streams: Sequence[int],
              cwd: str | os.PathLike[str] | None = None) -> Launched:
        """Run ``python -m gateway.cli *argv`` with ``env`` and ``streams`` (the file
        descriptors of its stdin, stdout and stderr)."""
        request = {"argv": list(argv), "env": env, "cwd": str(cwd or os.getcwd())}
        with self._lock:
            socket.send_fds(self.sock, [json.dumps(request).encode()], list(streams))
            reply = self.sock.recv(64)
        if not reply.strip().isdigit() or int(reply) <= 0:
            raise RuntimeError(f"the test launcher could not start {argv!r}: {reply!r}")
        return Launched(int(reply), [sys.executable, "-m", "gateway.cli", *argv])


def _null(mode: int) -> int:
    return os.open(os.devnull, mode)


def popen(argv: Sequence[str], *, env: dict[str, str] | None = None,
          stdout: IO[Any] | int | None = None, stderr: IO[Any] | int | None = None,
          cwd: str | os.PathLike[str] | None = None) -> Launched:
    """``subprocess.Popen([sys.executable, "-m", "gateway.cli", *argv], stdin=DEVNULL,
    stdout=..., stderr=...)`` through the launcher (or from ``exec`` when it is turned off).
    ``stdout``/``stderr``: a file, a file descriptor, ``subprocess.DEVNULL``,
    ``subprocess.STDOUT`` (stderr only) or None (this process's)."""
    env = dict(os.environ) if env is None else env
    if not enabled():
        return subprocess.Popen(  # type: ignore[return-value]
            [sys.executable, "-m", "gateway.cli", *argv], env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)

    opened = [_null(os.O_RDONLY)]

    def fd_of(stream: IO[Any] | int | None, default: int) -> int:
        if stream is None:
            return default
        if stream == subprocess.DEVNULL:
            opened.append(_null(os.O_WRONLY))
            return opened[-1]
        if isinstance(stream, int) and stream < 0:
            raise ValueError(f"not supported by the test launcher: {stream}")
        return stream if isinstance(stream, int) else stream.fileno()

    try:
        out = fd_of(stdout, 1)
        err = out if stderr == subprocess.STDOUT else fd_of(stderr, 2)
        return Launcher.get().start(argv, env, [opened[0], out, err], cwd)
    finally:
        for fd in opened:
            os.close(fd)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None,
        timeout: float | None = None, cwd: str | os.PathLike[str] | None = None,
        input: str | None = None,  # noqa: A002
        capture_output: bool = True, text: bool = True) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([sys.executable, "-m", "gateway.cli", *argv], capture_output=True,
    text=True, ...)`` through the launcher (or from ``exec`` when it is turned off)."""
    if not (capture_output and text):
        raise ValueError("the test launcher runs commands with capture_output and text only")
    env = dict(os.environ) if env is None else env
    if not enabled():
        return subprocess.run([sys.executable, "-m", "gateway.cli", *argv], env=env,
                              timeout=timeout, cwd=cwd, input=input, capture_output=True,
                              text=True)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = Launcher.get().start(argv, env, [in_r, out_w, err_w], cwd)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    with os.fdopen(in_w, "w") as feed, os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        chunks: dict[str, list[str]] = {"out": [], "err": []}
        readers = [threading.Thread(target=lambda f=f, k=k: chunks[k].append(f.read()))
                   for f, k in ((out, "out"), (err, "err"))]
        for t in readers:
            t.start()
        if input:
            feed.write(input)
        feed.close()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            for t in readers:
                t.join()
    return subprocess.CompletedProcess(proc.args, code, "".join(chunks["out"]),
                                       "".join(chunks["err"]))


# -- the launcher's side ------------------------------------------------------------------


def serve(fd: int) -> None:
    """The launcher: import everything, then fork one command per request until the test
    process closes the socket."""
    import gc
    import importlib

    sys.path[0:0] = [str(REPO)]
    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # the collector leaves the imported objects alone: their pages stay shared
    sock = socket.socket(fileno=fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        except OSError:
            return
        if not message:
            return
        request = json.loads(message)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:  # the intermediate child: fork the command and exit
            try:
                grandchild = os.fork()
            except BaseException:
                os._exit(1)
            if grandchild:
                os._exit(0)
            sock.close()
            os.close(ready_r)
            _command(request, fds, ready_w)  # never returns
        os.close(ready_w)
        for f in fds:
            os.close(f)
        os.waitpid(child, 0)
        with os.fdopen(ready_r, "rb") as ready:
            pid = ready.read().strip() or b"0"
        sock.send(pid)


def _command(request: dict[str, Any], fds: list[int], ready_w: int) -> None:
    """In the grandchild: become ``python -m gateway.cli <argv>`` and exit with its status."""
    import runpy
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [str(REPO / "gateway" / "cli.py"), *request["argv"]]
    os.write(ready_w, f"{os.getpid()}\n".encode())
    os.close(ready_w)
    # Run as ``-m`` runs it: a fresh ``__main__`` from the module's file (the launcher's
    # import of it stays out of the way, without runpy's warning about it).
    sys.modules.pop("gateway.cli", None)
    try:
        runpy.run_module("gateway.cli", run_name="__main__", alter_sys=True)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: Any) -> None:
    """End as the interpreter would (non-daemon threads joined, ``atexit`` handlers run,
    streams flushed) but without tearing down every module one by one: that writes to every
    object the launcher imported, copying each page of the heap it shares (seconds of CPU)."""
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
