"""Worker processes forked from a process that has already imported torch, MONAI and the package.

The crash and resume tests start the same worker many times (a reference run, one process per crash point, the
final run). Each is a real, separate process that dies for real (``os._exit`` at a fault point, or SIGKILL), but
forking it from multiprocessing's fork server, which imported the heavy modules once, saves the seconds that every
fresh interpreter spends importing them. The fork server is a child of the test process and ends with it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: what the workers import (the fork server imports it once, before any torch operation has run): the tests' worker
#: modules, and what the workers would otherwise import on their first optimizer (torch._dynamo) and R matrix plot
PRELOAD = ["runner_utils", "resume_worker", "torch._dynamo", "matplotlib.pyplot"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _ensure_fork_server() -> None:
    """Start the fork server with this folder on its import path (Python 3.11's fork server imports its preload
    modules before it would apply the parent's sys.path; a module it cannot import is skipped silently)."""
    from multiprocessing import forkserver

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), *([saved] if saved else [])])
    try:
        if forkserver._forkserver._forkserver_pid is None:
            atexit.register(_stop_fork_server)
        forkserver.ensure_running()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _stop_fork_server() -> None:
    """Stop the fork server and multiprocessing's resource tracker when the test session ends (waits for both)."""
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()
    resource_tracker._resource_tracker._stop()


def _child(target: Callable[[Sequence[str]], object], argv: Sequence[str], env: Mapping[str, str], log: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    code = target(list(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(code, int) and code:
        sys.exit(code)  # a command line's exit status


class ForkedWorker:
    """A started worker: ``pid``, ``poll()``, ``wait()`` like :class:`subprocess.Popen`; ``output`` once it ended."""

    def __init__(self, target: Callable[[Sequence[str]], object], argv: Sequence[str],
                 env: Mapping[str, str] | None = None) -> None:
        handle, self._log = tempfile.mkstemp(prefix="forked_worker_", suffix=".log")
        os.close(handle)
        self.args = [getattr(target, "__module__", "?"), *argv]
        _ensure_fork_server()
        self._process = _context.Process(target=_child, args=(target, list(argv), dict(env or os.environ), self._log))
        self._process.start()
        self.pid = self._process.pid
        #: what the worker wrote to stdout and stderr, once it ended
        self.output = ""

    def poll(self) -> int | None:
        code = self._process.exitcode
        if code is not None:
            self._collect()
        return code

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
            self._collect()
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self._collect()
        return self._process.exitcode

    def _collect(self) -> None:
        """Keep what the ended worker wrote to stdout and stderr, and remove its log file."""
        path = Path(self._log)
        if path.is_file():
            self.output = path.read_text(errors="replace")
            path.unlink()


def run_forked(target: Callable[[Sequence[str]], object], argv: Sequence[str], env: Mapping[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``target(argv)`` in a forked worker until it ends; its exit status (``os._exit``'s, ``sys.exit``'s or the
    integer ``target`` returned) and output like :func:`subprocess.run`."""
    worker = ForkedWorker(target, argv, env)
    code = worker.wait(timeout)
    return subprocess.CompletedProcess(worker.args, code, worker.output, worker.output)
