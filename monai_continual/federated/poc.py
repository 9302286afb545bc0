"""NVFlare's POC mode on this machine: a server and one client process per site, talking over mutual TLS on loopback."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PocDeployment"]


class PocDeployment:
    """Prepare, start, use and stop a POC deployment in ``workspace`` (a context manager).

    ``nvflare poc prepare`` provisions a startup kit per site (certificates for mutual TLS, signed job submission),
    ``poc start`` launches the server and every client as separate processes; :meth:`submit_and_wait` submits a job
    through the admin API and waits for it; leaving the context stops every process and removes the workspace.

    Args:
        workspace: the POC workspace (``NVFLARE_POC_WORKSPACE`` while in use).
        clients: the client (site) names.

    Example::

        >>> with PocDeployment("out/poc", ["site_a", "site_b"]) as poc:
        ...     poc.submit_and_wait(job)
    """

    def __init__(self, workspace: str | os.PathLike, clients: Sequence[str]) -> None:
        self.workspace = Path(workspace).resolve()
        self.clients = list(clients)
        self.env: Any = None
        self._saved: str | None = None

    def __enter__(self) -> PocDeployment:
        from nvflare.recipe.poc_env import PocEnv

        self._saved = os.environ.get("NVFLARE_POC_WORKSPACE")
        os.environ["NVFLARE_POC_WORKSPACE"] = str(self.workspace)
        self.env = PocEnv(clients=self.clients)
        return self

    def submit_and_wait(self, job: Any, timeout: float = 0.0) -> str | None:
        """(Re)start the services, submit ``job``, wait until it finishes; return its status."""
        job_id = self.env.deploy(job)
        self.env.get_job_result(job_id, timeout=timeout)
        return self.env.get_job_status(job_id)

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.env is not None:
                self.env.stop(clean_up=True)
        finally:
            if self._saved is None:
                os.environ.pop("NVFLARE_POC_WORKSPACE", None)
            else:
                os.environ["NVFLARE_POC_WORKSPACE"] = self._saved
