"""A test-only site client that lies: the federated client, with one site's answers corrupted on the way out.

``MONAI_CONTINUAL_TEST_ATTACK="beta:scale,count"`` makes site ``beta`` corrupt what it sends:

- ``count``: reports 10^9 training examples;
- ``scale``: publishes its weights x100;
- ``random``: publishes random weights (each tensor with its honest tensor's std);
- ``shift``: publishes a posterior whose means moved 10 prior stds;
- ``nan_scores``: reports NaN scores.

Every lie is self-consistent (the hash it reports is of what it sends), so only the server's bounds can catch it.
Self-contained, because NVFlare runs a copy of this file outside the tests folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ATTACKS = ("count", "scale", "random", "shift", "nan_scores")
_SEP = "|"


def _tensors(params: dict, role: str) -> dict:
    return {k.partition(_SEP)[2]: v for k, v in params.items() if k.partition(_SEP)[0] == role}


def corrupt(attacks, task: str, meta_in: dict, params_in: dict, answer: tuple) -> tuple:
    """``answer`` (params, meta, metrics) of a site with ``attacks`` applied, its reported hash made to match."""
    import torch

    from monai_continual.consolidation import DirectoryWeightStore, Posterior

    params, meta, metrics = dict(answer[0]), dict(answer[1]), dict(answer[2])
    if task == "evaluate" and "nan_scores" in attacks:
        metrics["scores"] = [float("nan")] * len(metrics["scores"])
    if task != "train":
        return params, meta, metrics
    if "count" in attacks:
        meta["num_examples"] = 10**9
    stage = meta_in["stage"]
    published = _tensors(params, "published")
    rng = np.random.default_rng(1234 + int(stage["number"]))
    if any(k.startswith("mean/") for k in published):
        if "shift" in attacks:
            reference = _tensors(params_in, "prior") or _tensors(params_in, "start")
            for key in [k for k in published if k.startswith("mean/")]:
                prior_std = reference["std/" + key.partition("/")[2]]
                published[key] = (published[key] + 10.0 * prior_std).astype(published[key].dtype)
        groups = {g: {k.partition("/")[2]: torch.as_tensor(v) for k, v in published.items() if k.startswith(g + "/")}
                  for g in ("mean", "std", "deterministic")}
        sha = Posterior(groups["mean"], groups["std"], groups["deterministic"], meta.get("metadata", {})).sha256()
    else:
        for key, value in published.items():
            if not np.issubdtype(value.dtype, np.floating):
                continue
            if "scale" in attacks:
                published[key] = (value * 100.0).astype(value.dtype)
            if "random" in attacks:
                published[key] = (rng.standard_normal(value.shape) * float(value.std() or 1.0)).astype(value.dtype)
        weights = {k.partition("/")[2]: torch.as_tensor(v) for k, v in published.items()}
        sha = DirectoryWeightStore.content_sha256(weights, stage["sites"][0], int(stage["number"]))
    params = {f"published{_SEP}{k}": v for k, v in published.items()}
    meta["published"] = sha
    return params, meta, metrics


def attacks_of(site: str, spec: str | None = None) -> tuple[str, ...]:
    """The attacks ``MONAI_CONTINUAL_TEST_ATTACK`` (``site:attack,attack``) sets for ``site``."""
    spec = os.environ.get("MONAI_CONTINUAL_TEST_ATTACK", "") if spec is None else spec
    name, _, attacks = spec.partition(":")
    chosen = tuple(a for a in attacks.split(",") if a) if name == site else ()
    unknown = [a for a in chosen if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {ATTACKS}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from monai_continual.federated.config import parse_config
    from monai_continual.federated.overrides import MONAI_SITE_KEYS, parse_overrides
    from monai_continual.federated.site_worker import SiteWorker, serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--accept-margin", type=float, default=None)
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set, MONAI_SITE_KEYS)
    flare.init()
    site = flare.get_site_name()
    site_dir = Path(args.workdir) / site
    runner = parse_config(
        args.config, {**overrides, "site": site, "site_dir": str(site_dir / "runner")}
    ).get_parsed_content("site_runner")
    worker = SiteWorker(lambda stages, run_dir: runner.executor(run_dir, stages), site, site_dir,
                        accept_margin=args.accept_margin)
    attacks = attacks_of(site)
    if attacks:
        honest = worker.handle
        worker.handle = lambda task, meta, params: corrupt(attacks, task, meta, dict(params or {}),
                                                           honest(task, meta, params))
    serve(worker)


if __name__ == "__main__":
    main()
