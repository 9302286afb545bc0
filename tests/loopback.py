"""An in-process transport for federated runs: the server's run and real site workers, without NVFlare.

The server side is :func:`~monai_continual.federated.server_run.run_on_server` and every site is a
:class:`~monai_continual.federated.SiteWorker` over its own MONAI executor, exactly as in the simulator; only the
messages are handed over in memory (checked by ``check_payload`` both ways, as the controller does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hostile_client import attacks_of, corrupt
from monai_continual.data import load_multisite_datalist
from monai_continual.federated.config import parse_config
from monai_continual.federated.payload import REPLY_KEYS, check_payload
from monai_continual.federated.server_run import run_on_server
from monai_continual.federated.site_worker import SiteWorker


def loopback_run(config, datalist, out: Path, strategy: str, options: dict, overrides: dict, *, sites=None,
                 attack: str = "", boundary=None, min_clients: int = 1, accept_margin=None) -> dict:
    """The federated run of ``strategy`` with every site in this process; ``attack`` as ``"site:attack,..."``."""
    data = load_multisite_datalist(datalist)
    training = [s for s in data.training_sites() if sites is None or s in sites]
    evaluating = [*training, *data.held_out_sites()]
    threads = torch.get_num_threads()
    workers = {}
    for site in evaluating:
        site_dir = out / "sites" / site
        runner = parse_config(config, {**overrides, "datalist": str(datalist), "site": site,
                                       "site_dir": str(site_dir / "runner")}).get_parsed_content("site_runner")
        workers[site] = SiteWorker(lambda stages, run_dir, runner=runner: runner.executor(run_dir, stages),
                                   site, site_dir, accept_margin=accept_margin)

    def send(task, site, params, meta):
        check_payload(meta, params, None)
        answer = workers[site].handle(task, meta, params)
        attacks = attacks_of(site, attack)
        if attacks:
            answer = corrupt(attacks, task, meta, dict(params), answer)
        reply = {k: v for k, v in answer[1].items() if k in REPLY_KEYS}  # what the controller passes on
        check_payload(reply, answer[0], answer[2])
        return answer[0], reply, answer[2]

    try:
        return run_on_server(strategy, options, training, evaluating, out / strategy, send,
                             settings={**overrides, "datalist": str(datalist)}, epochs=int(overrides.get("epochs", 1)),
                             min_clients=min_clients, boundary=boundary, log=None)
    finally:
        torch.set_num_threads(threads)
