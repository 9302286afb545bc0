"""Where a site's own files are: its copy of the config, its datalist, its working directory.

A job run on one machine (simulator, POC) passes these paths to every site. An exported job, for production, names
none of them: each hospital sets them in its own client's environment, and what a site sets there wins over any path
a job passes (a job must not choose which config a site evaluates or which files it reads) (for example in the
startup kit's ``sub_start.sh`` or the service that starts the client)::

    export MONAI_CONTINUAL_CONFIG=/opt/monai-continual/configs/federated.json
    export MONAI_CONTINUAL_DATALIST=/data/hospital_b/datalist.json   # this site's entry is read, no other
    export MONAI_CONTINUAL_WORKDIR=/data/hospital_b/federated
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["CONFIG_ENV", "DATALIST_ENV", "WORKDIR_ENV", "site_path"]

CONFIG_ENV = "MONAI_CONTINUAL_CONFIG"
DATALIST_ENV = "MONAI_CONTINUAL_DATALIST"
WORKDIR_ENV = "MONAI_CONTINUAL_WORKDIR"


def site_path(given: str | None, env: str, what: str, environ: Mapping[str, str] | None = None) -> str:
    """The site's own setting ``env`` when it is set, else ``given`` (a path the job passed: jobs run on one machine).

    Raises:
        ValueError: neither is set, naming the environment variable a hospital sets.

    Example::

        >>> site_path("/job/given.json", DATALIST_ENV, "datalist", {"MONAI_CONTINUAL_DATALIST": "/data/b/dl.json"})
        '/data/b/dl.json'
    """
    value = (os.environ if environ is None else environ).get(env, "") or given
    if not value:
        raise ValueError(f"this site has no {what}: the job names none (an exported job names no path of the machine "
                         f"that wrote it), so set {env} in this site's environment to its own {what}.")
    return value
