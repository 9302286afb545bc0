"""PocDeployment's hardening: the server on loopback only, private keys readable by their owner only, nothing left
behind when the services fail to start, and a sibling folder's processes not taken for the workspace's own."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvflare")
psutil = pytest.importorskip("psutil")

from monai_continual.federated.poc import PocDeployment  # noqa: E402

LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}


def _workspace_processes(workspace: Path) -> list[int]:
    """Live processes with an argument or working directory inside ``workspace`` (independent of ``pids()``)."""
    root = str(workspace)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            paths = [*proc.cmdline(), proc.cwd().removesuffix(" (deleted)")]
        except psutil.Error:
            continue
        if any(p == root or p.startswith(root + "/") for p in paths):
            found.append(proc.pid)
    return found


def _kill_left_overs(workspace: Path) -> None:
    """Whatever of ``workspace`` a failing test left running (so a failure does not leak services)."""
    for pid in _workspace_processes(workspace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A deployment after its prepare step, nothing started (``start`` replaced by a no-op)."""
    workspace = tmp_path_factory.mktemp("prepared") / "poc"
    poc = PocDeployment(workspace, ["site_a", "site_b"], stop_timeout=10)
    poc.start = lambda: None  # this instance only
    try:
        with poc:
            yield poc
    finally:
        _kill_left_overs(workspace)


@pytest.mark.timeout(120)
def test_prepared_configs_bind_and_connect_on_loopback_only(prepared):
    """NVFlare's server binds every interface unless its service target's host is loopback (``server:8002`` as
    ``nvflare poc prepare`` writes it is not); clients and admins must connect to loopback as well."""
    prod = next(prepared.workspace.glob("*/prod_00"))
    configs = sorted(prod.glob("*/startup/fed_*.json"))
    assert {path.name for path in configs} == {"fed_server.json", "fed_client.json", "fed_admin.json"}
    hosts = {}
    for path in configs:
        config = json.loads(path.read_text())
        if path.name == "fed_admin.json":
            hosts[f"{path}: admin.host"] = config["admin"]["host"]
            continue
        for number, server in enumerate(config["servers"]):
            hosts[f"{path}: servers[{number}].service.target"] = server["service"]["target"].rpartition(":")[0]
            if "admin_host" in server:
                hosts[f"{path}: servers[{number}].admin_host"] = server["admin_host"]
    assert {key: host for key, host in hosts.items() if host not in LOOPBACK_HOSTS} == {}


@pytest.mark.timeout(120)
def test_private_keys_are_readable_by_their_owner_only(prepared):
    """cert.json (the root CA's key) and every participant's key: 0o600, in folders 0o700, the workspace 0o700."""
    workspace = prepared.workspace
    keys = [p for p in workspace.rglob("*") if p.is_file() and not p.is_symlink()
            and (p.suffix == ".key" or p.name == "cert.json" or b"PRIVATE KEY" in p.read_bytes())]
    names = {p.relative_to(workspace).as_posix() for p in keys}
    assert "example_project/state/cert.json" in names
    assert {"server/startup/server.key", "site_a/startup/client.key", "site_b/startup/client.key",
            "admin@nvidia.com/startup/client.key"} <= {n.split("prod_00/", 1)[-1] for n in names}
    assert {str(p): oct(_mode(p)) for p in keys if _mode(p) != 0o600} == {}
    assert {str(p.parent): oct(_mode(p.parent)) for p in keys if _mode(p.parent) != 0o700} == {}
    assert _mode(workspace) == 0o700


@pytest.mark.timeout(60)
def test_pids_ignores_processes_of_a_sibling_folder(tmp_path):
    """``<ws>2`` starts with ``<ws>`` and ``site2`` with ``site``: neither's processes belong to ``<ws>`` / ``site``."""
    workspace, sibling = tmp_path / "poc", tmp_path / "poc2"
    prod = workspace / "example_project" / "prod_00"
    for folder in (prod / "site" / "startup", prod / "site2" / "startup", workspace / "gone", sibling / "startup"):
        folder.mkdir(parents=True)
    poc = PocDeployment(workspace, ["site", "site2"])

    def spawn(*args: Path, cwd: Path = tmp_path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *map(str, args)], cwd=cwd)

    procs = {"sibling argument": spawn(sibling / "startup"), "sibling cwd": spawn(cwd=sibling / "startup"),
             "other participant": spawn(prod / "site2" / "startup"), "own argument": spawn(prod / "site" / "startup"),
             "own cwd": spawn(cwd=workspace), "own removed cwd": spawn(cwd=workspace / "gone")}
    try:
        (workspace / "gone").rmdir()  # its cwd now reads "<ws>/gone (deleted)"
        listed = {name for name, proc in procs.items() if proc.pid in poc.pids()}
        in_site = {name for name, proc in procs.items() if proc.pid in poc.pids("site")}
        assert listed == {"own argument", "own cwd", "own removed cwd", "other participant"}
        assert in_site == {"own argument"}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_start_that_fails_leaves_no_process_and_no_workspace_and_keeps_the_logs(tmp_path, monkeypatch):
    """The services cannot be ready within 1 s: the error comes through, and by then every process of the
    workspace is gone, the workspace (with the keys) is removed and the server's console log is in logs_dir."""
    workspace, logs = tmp_path / "poc", tmp_path / "logs"
    running_when_start_failed = []
    nvflare = PocDeployment._nvflare

    def record(self, *args, **kwargs):
        try:
            return nvflare(self, *args, **kwargs)
        except RuntimeError:
            if args[:2] == ("poc", "start"):
                running_when_start_failed.extend(_workspace_processes(workspace))
            raise

    monkeypatch.setattr(PocDeployment, "_nvflare", record)
    try:
        with pytest.raises(RuntimeError, match="poc start"):
            with PocDeployment(workspace, ["site_a"], logs_dir=logs, start_timeout=1, stop_timeout=20):
                pytest.fail("the services were ready within 1 s")
        assert running_when_start_failed  # the failure happened with services running: there was something to stop
        assert _workspace_processes(workspace) == []
        assert not workspace.exists()
        assert (logs / "example_project" / "prod_00" / "server" / "poc_console.log").is_file()
    finally:
        _kill_left_overs(workspace)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_started_services_listen_on_loopback_only(tmp_path):
    """Every socket the started server and client bind is on 127.0.0.1; leaving stops them all."""
    workspace = tmp_path / "poc"
    try:
        with PocDeployment(workspace, ["site_a"], start_timeout=120, stop_timeout=20) as poc:
            assert poc.pids("server") and poc.pids("site_a")
            bound = []
            for pid in poc.pids():
                try:
                    connections = psutil.Process(pid).net_connections(kind="inet")
                except psutil.NoSuchProcess:
                    continue
                bound += [(pid, c.laddr) for c in connections
                          if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr)]
            assert any(address.port == 8002 for _, address in bound), bound
            assert [(pid, address) for pid, address in bound if not ipaddress.ip_address(address.ip).is_loopback] == []
        assert _workspace_processes(workspace) == [] and not workspace.exists()
    finally:
        _kill_left_overs(workspace)
