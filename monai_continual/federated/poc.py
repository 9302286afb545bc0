"""NVFlare's POC mode on this machine: a server and one client process per site, talking over mutual TLS on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PocDeployment", "ALLOWED_COMPONENTS"]

#: what a site must allow in its ``local/resources.json`` to run our jobs without shipping code (non-BYOC)
ALLOWED_COMPONENTS = ("monai_continual.federated.controller.StrategyController",)


class PocDeployment:
    """Prepare, start, use and stop a POC deployment in ``workspace`` (a context manager).

    ``nvflare poc prepare`` provisions a startup kit per site (certificates for mutual TLS, signed job submission);
    every participant's ``local/resources.json`` then allows :data:`ALLOWED_COMPONENTS` (our code is installed at
    each party, not shipped in the job, as a production site would have it); ``nvflare poc start`` launches the
    server and every client as separate processes on loopback. :meth:`submit_and_wait` submits a job through the
    admin API and waits for it. Leaving the context copies every log to ``logs_dir``, stops every process the
    deployment started and removes the workspace.

    Args:
        workspace: the POC workspace (``NVFLARE_POC_WORKSPACE`` of the ``nvflare`` commands).
        clients: the client (site) names.
        logs_dir: where every participant's logs are copied before the workspace is removed.
        start_timeout: seconds to wait for the services to be ready.
        stop_timeout: seconds :meth:`stop` keeps killing processes of the workspace before it raises.

    Example::

        >>> with PocDeployment("out/poc", ["site_a", "site_b"]) as poc:
        ...     status = poc.submit_and_wait(job)
    """

    def __init__(self, workspace: str | os.PathLike, clients: Sequence[str], logs_dir: str | os.PathLike | None = None,
                 start_timeout: int = 60, stop_timeout: float = 30.0) -> None:
        self.workspace = Path(workspace).resolve()
        self.clients = list(clients)
        self.logs_dir = None if logs_dir is None else Path(logs_dir)
        self.start_timeout = int(start_timeout)
        self.stop_timeout = float(stop_timeout)
        self._session: Any = None

    # ------------------------------------------------------------------------------------------------ commands

    def _nvflare(self, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
        env = dict(os.environ, NVFLARE_POC_WORKSPACE=str(self.workspace))
        command = [str(Path(sys.executable).with_name("nvflare")), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"`nvflare {' '.join(args)}` failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def _prod_dir(self) -> Path:
        matches = sorted(self.workspace.glob("*/prod_00"))
        if not matches:
            raise RuntimeError(f"no provisioned POC project in {self.workspace}.")
        return matches[0]

    def _allow_components(self) -> None:
        for default in self._prod_dir().glob("*/local/resources.json.default"):
            target = default.with_suffix("")
            resources = json.loads((target if target.exists() else default).read_text())
            allowed = list(resources.get("class_allow_list") or [])
            if not allowed:
                from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

                allowed = list(DEFAULT_CLASS_ALLOW_LIST)
            resources["class_allow_list"] = allowed + [c for c in ALLOWED_COMPONENTS if c not in allowed]
            target.write_text(json.dumps(resources, indent=4))

    def start(self) -> None:
        """Start (or restart) the server and the clients."""
        self._nvflare("poc", "start", "--timeout", str(self.start_timeout), timeout=self.start_timeout + 120)
        self._session = None

    def stop(self) -> None:
        """Stop the services (``nvflare poc stop``), then kill any process of this workspace still alive."""
        try:
            self._nvflare("poc", "stop", timeout=120)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        # a killed process stays listed until the kernel has torn it down, and a client may fork a job process while
        # being stopped: kill until nothing of this workspace is left (bounded)
        deadline = time.monotonic() + self.stop_timeout
        while (alive := self.pids()) and time.monotonic() < deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if alive:
            raise RuntimeError(f"processes {alive} of the POC workspace {self.workspace} survived SIGKILL for "
                               f"{self.stop_timeout} s.")
        if self.workspace.exists():  # pid files of killed processes would make the next start think they still run
            for marker in self.workspace.glob("*/prod_00/*/*.fl"):
                marker.unlink(missing_ok=True)
        self._session = None

    def pids(self, participant: str | None = None) -> list[int]:
        """Processes started from this workspace (optionally: one participant's, e.g. ``"server"``)."""
        marker = str(self._prod_dir() / participant) if participant else str(self.workspace)
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue  # dead, waiting to be reaped by its parent
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(proc / "cwd")
            except (OSError, PermissionError, IndexError):
                continue
            if marker in cmdline or cwd.startswith(marker):
                found.append(int(proc.name))
        return found

    # ------------------------------------------------------------------------------------------------ jobs

    def _session_manager(self) -> Any:
        if self._session is None:
            from nvflare.recipe.session_mgr import SessionManager

            self._session = SessionManager({"username": "admin@nvidia.com", "timeout": 30, "study": "default",
                                            "startup_kit_location": str(self._prod_dir() / "admin@nvidia.com")})
        return self._session

    def submit(self, job: Any) -> str:
        """Submit ``job``; return its id."""
        return self._session_manager().submit_job(job)

    def wait(self, job_id: str, timeout: float = 0.0) -> str | None:
        """Wait for a job to finish; return its status."""
        self._session_manager().get_job_result(job_id, timeout)
        return self._session_manager().get_job_status(job_id)

    def submit_and_wait(self, job: Any, timeout: float = 0.0) -> str | None:
        return self.wait(self.submit(job), timeout)

    # ------------------------------------------------------------------------------------------------ context

    def __enter__(self) -> PocDeployment:
        shutil.rmtree(self.workspace, ignore_errors=True)
        self.workspace.mkdir(parents=True)
        self._nvflare("poc", "prepare", "-c", *self.clients, "--force")
        self._allow_components()
        self.start()
        return self

    def collect_logs(self) -> None:
        """Copy every participant's ``log*.txt`` (server, sites, jobs) into ``logs_dir``."""
        if self.logs_dir is None or not self.workspace.exists():
            return
        for log in self.workspace.rglob("log*.txt"):
            target = self.logs_dir / log.relative_to(self.workspace)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)

    def __exit__(self, *exc: Any) -> None:
        try:
            self.collect_logs()
        finally:
            self.stop()
            shutil.rmtree(self.workspace, ignore_errors=True)
