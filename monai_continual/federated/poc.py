"""NVFlare's POC mode on this machine: a server and one client process per site, talking over mutual TLS on loopback."""

from __future__ import annotations

import json
import os
import re
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

#: the only address the POC server listens on and every party connects to
LOOPBACK = "127.0.0.1"

# characters that end a path inside a command line (as a regex character class body): the argument separator NUL,
# blanks, quotes, ``--set key=value``, ``a:b`` lists
_PATH_END = r"\0\s" + "\"',:;="


def _loopback_target(target: Any, path: Path) -> str:
    """``host:port`` -> ``127.0.0.1:port``."""
    _, colon, port = str(target).rpartition(":")
    if not colon or not port.isdigit():
        raise RuntimeError(f"unexpected service target {target!r} in {path} (expected host:port).")
    return f"{LOOPBACK}:{port}"


def _holds_private_key(path: Path) -> bool:
    """``*.key``, ``cert.json`` (the provisioner's state: the root CA's key) or any file with a PEM private key."""
    if path.suffix == ".key" or path.name == "cert.json":
        return True
    with path.open("rb") as file:
        return b"PRIVATE KEY" in file.read(1 << 20)


class PocDeployment:
    """Prepare, start, use and stop a POC deployment in ``workspace`` (a context manager).

    :meth:`prepare` runs ``nvflare poc prepare``, which provisions a startup kit per site (certificates for mutual
    TLS, signed job submission), then makes every private key readable by its owner only, makes the server listen
    and every party connect on 127.0.0.1 only, and lets every participant's ``local/resources.json`` allow
    :data:`ALLOWED_COMPONENTS` (our code is installed at each party, not shipped in the job, as a production site
    would have it). :meth:`start` (``nvflare poc start``) launches the server and every client as separate
    processes. :meth:`submit_and_wait` submits a job through the admin API and waits for it. Leaving the context,
    or a failed :meth:`prepare` or :meth:`start`, stops every process of the workspace, copies every log to
    ``logs_dir`` and removes the workspace (with its keys).

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
        # umask: what prepare provisions (keys, the CA's cert.json) and what the services write later (logs, jobs)
        # is created owner-only, with no window before _protect_keys runs
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, umask=0o077)
        if done.returncode != 0:
            raise RuntimeError(
                f"`nvflare {' '.join(args)}` failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
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

    def _bind_loopback(self) -> None:
        """Make the server listen, and every client and admin connect, on 127.0.0.1 only.

        ``nvflare poc prepare`` writes the server's service target as ``server:8002``, and NVFlare's server binds a
        target host that is not a loopback name or address on every interface (``FederatedServer.deploy``).

        Raises:
            RuntimeError: a startup kit's configuration is missing or not laid out as NVFlare 2.9 writes it.
        """
        prod = self._prod_dir()
        server_configs = sorted(prod.glob("*/startup/fed_server.json"))
        if not server_configs:
            raise RuntimeError(f"no */startup/fed_server.json in {prod}.")
        for path in [*server_configs, *sorted(prod.glob("*/startup/fed_client.json")),
                     *sorted(prod.glob("*/startup/fed_admin.json"))]:
            try:
                config = json.loads(path.read_text())
                if path.name == "fed_admin.json":
                    config["admin"]["host"] = LOOPBACK
                elif not config["servers"]:
                    raise ValueError("no servers")
                else:
                    for server in config["servers"]:
                        server["service"]["target"] = _loopback_target(server["service"]["target"], path)
                        if "admin_host" in server:
                            server["admin_host"] = LOOPBACK
            except (KeyError, TypeError, AttributeError, ValueError) as error:
                raise RuntimeError(f"unexpected layout of {path}: {error!r}") from error
            path.write_text(json.dumps(config, indent=2))

    def _protect_keys(self) -> None:
        """Make every private key (``*.key``, ``cert.json``, any PEM private key) 0o600, the folders holding them and
        the workspace 0o700.

        Raises:
            RuntimeError: a key file or its folder is still accessible to others after ``chmod``.
        """
        self.workspace.chmod(0o700)
        for root, _, names in os.walk(self.workspace):
            for name in names:
                path = Path(root, name)
                if path.is_symlink() or not path.is_file() or not _holds_private_key(path):
                    continue
                path.chmod(0o600)
                path.parent.chmod(0o700)
                for protected in (path, path.parent):
                    if protected.stat().st_mode & 0o077:
                        raise RuntimeError(f"{protected} is still accessible to group or others after chmod.")

    def prepare(self) -> None:
        """Provision a fresh workspace: startup kits, keys owner-only, loopback only, our components allowed.

        On any failure the workspace (with whatever keys it holds) is removed and the error raised again.
        """
        try:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace.mkdir(mode=0o700, parents=True)
            self._nvflare("poc", "prepare", "-c", *self.clients, "--force")
            self._protect_keys()
            self._bind_loopback()
            self._allow_components()
        except BaseException as error:
            self._close_after(error)
            raise

    def start(self) -> None:
        """Start (or restart) the server and the clients.

        If they do not come up in time (or anything else fails), the deployment is closed (every process of the
        workspace stopped, the logs copied, the workspace removed) before the error is raised again.
        """
        try:
            self._nvflare("poc", "start", "--timeout", str(self.start_timeout), timeout=self.start_timeout + 120)
        except BaseException as error:
            self._close_after(error)
            raise
        self._session = None

    def stop(self, graceful: bool = True) -> None:
        """Stop the services (``nvflare poc stop``), then kill any process of this workspace still alive.

        Args:
            graceful: ask the services to shut down first; ``False`` kills them right away.
        """
        if graceful and self.pids():  # with nothing running, `nvflare poc stop` still waits ~13 s for a shutdown
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
        """Processes started from this workspace (optionally: one participant's, e.g. ``"server"``).

        A process belongs to it when its command line names the workspace's path, or a path inside it, or its
        working directory is inside it; a sibling whose name only starts the same (``poc2`` for ``poc``) does not.
        """
        marker = str(self._prod_dir() / participant) if participant else str(self.workspace)
        in_cmdline = re.compile(f"(?<![^{_PATH_END}]){re.escape(marker)}(?![^/{_PATH_END}])")
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue  # dead, waiting to be reaped by its parent
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                cwd = os.readlink(proc / "cwd").removesuffix(" (deleted)")
            except (OSError, PermissionError, IndexError):
                continue
            if in_cmdline.search(cmdline) or cwd == marker or cwd.startswith(marker + "/"):
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
        self.prepare()
        self.start()
        return self

    def collect_logs(self) -> None:
        """Copy every participant's ``log*.txt`` (server, sites, jobs) and ``poc_console.log`` (what a service printed,
        e.g. why it did not start) into ``logs_dir``."""
        if self.logs_dir is None or not self.workspace.exists():
            return
        for log in [*self.workspace.rglob("log*.txt"), *self.workspace.rglob("poc_console.log")]:
            target = self.logs_dir / log.relative_to(self.workspace)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)

    def close(self, graceful: bool = True) -> None:
        """Stop every process of the workspace, copy the logs, remove the workspace.

        The workspace stays (and the error is raised) when processes of it survive :meth:`stop`.

        Args:
            graceful: see :meth:`stop`.
        """
        stopped = False
        try:
            self.stop(graceful)
            stopped = True
        finally:
            try:
                self.collect_logs()
            finally:
                if stopped:
                    shutil.rmtree(self.workspace, ignore_errors=True)
                    if self.workspace.exists():
                        shutil.rmtree(self.workspace)  # raises, naming what could not be removed

    def _close_after(self, error: BaseException) -> None:
        """Kill and :meth:`close` after ``error`` (half-started services cannot be asked to shut down); a failure to
        close is added to ``error``'s notes, not raised instead."""
        try:
            self.close(graceful=False)
        except Exception as failure:
            error.add_note(f"closing the POC deployment in {self.workspace} failed too: {failure!r}")

    def __exit__(self, *exc: Any) -> None:
        self.close()
