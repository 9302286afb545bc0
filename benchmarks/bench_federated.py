"""The federated engine's cost: simulator wall time of a 2-client, 2-round FedAvg of the embedded MeshNet against the
same schedule in-process, and the bytes that cross the network per round against the model's size.

Prints both wall times and their difference per round (NVFlare's overhead), and for every payload kind the bytes of
tensors sent and received, next to the size of the network's full (Bayesian) state dict.

Run: ``.venv/bin/python benchmarks/bench_federated.py``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from monai_continual.bayes import bayesianize
from monai_continual.consolidation import Posterior
from monai_continual.data import SiteProfile, make_sites
from monai_continual.federated import FederatedRun
from monai_continual.federated.config import parse_config
from monai_continual.federated.payload import model_to_params

CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
OVERRIDES = {"epochs": 1, "mc_samples": 2, "device": "cpu", "threads": 1}


def _bytes(params: dict) -> int:
    return int(sum(np.asarray(v).nbytes for v in params.values()))


def _times(tmp: str, datalist: Path, rounds: int) -> tuple[float, float]:
    start = time.perf_counter()
    parser = parse_config(CONFIG, {**OVERRIDES, "datalist": str(datalist), "output_dir": f"{tmp}/in_process{rounds}"})
    parser.get_parsed_content("runner").run("federated_averaging", rounds=rounds)
    in_process = time.perf_counter() - start
    start = time.perf_counter()
    FederatedRun(CONFIG, "federated_averaging", datalist, Path(tmp) / f"federated{rounds}", options={"rounds": rounds},
                 overrides=OVERRIDES, payload_log=f"{tmp}/payloads{rounds}.jsonl").run()
    return in_process, time.perf_counter() - start


def main(rounds: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sites = [SiteProfile("site_a", 6, "t1", noise=0.02), SiteProfile("site_b", 6, "t2", noise=0.03, scale=50.0)]
        datalist = make_sites(Path(tmp) / "data", sites=sites, seed=0, shape=(24, 28, 24), figure=False, progress=False)
        parser = parse_config(CONFIG, {**OVERRIDES, "datalist": str(datalist)})
        in_process, federated = _times(tmp, datalist, rounds)
        in_process_more, federated_more = _times(tmp, datalist, rounds + 2)
        per_round = ((federated_more - in_process_more) - (federated - in_process)) / 2
        fixed = (federated - in_process) - rounds * per_round

        network = parser.get_parsed_content("network")
        plain = _bytes(model_to_params("m", network.state_dict()))
        bayes = bayesianize(network)
        full_bayes = _bytes(model_to_params("m", bayes.state_dict()))
        posterior = _bytes(model_to_params("m", Posterior.from_model(bayes)))
        sent = [json.loads(line) for line in Path(f"{tmp}/payloads{rounds}.jsonl").read_text().splitlines()]
    print("2 clients, FedAvg, MeshNet 16 channels, 24x28x24 volumes, 1 local epoch per round")
    print(
        f"  {rounds} rounds: in-process {in_process:.1f} s, "
        f"NVFlare simulator {federated:.1f} s (ratio {federated / in_process:.1f})"
    )
    print(f"  {rounds + 2} rounds: in-process {in_process_more:.1f} s, NVFlare simulator {federated_more:.1f} s")
    print(f"  the engine's overhead: {fixed:.1f} s fixed (start and stop), {per_round:.1f} s per round "
          f"(2 training and 2 evaluation round trips)")
    print(f"  payloads per round: {len([p for p in sent if p['direction'] == 'sent']) // rounds} sent, "
          f"{len([p for p in sent if p['direction'] == 'received']) // rounds} received")
    print(f"  deterministic weights: {plain / 1e3:.1f} kB per model sent or received (the whole state dict)")
    print(
        f"  Bayesian state dict {full_bayes / 1e3:.1f} kB ({full_bayes / plain:.2f}x): mean, rho, prior mean, prior std"
    )
    print(f"  Bayesian payload {posterior / 1e3:.1f} kB ({posterior / plain:.2f}x): the posterior's mean and std only; "
          f"the prior is the receiving stage's own input and never travels back")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
