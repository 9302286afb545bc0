"""Per-round cost of the federated server's checks and bounds, measured side by side in one run.

For a network of P weights (default 5M, float32, in 20 tensors) and S sites (3 and 10), one FedAvg round on the
server: what it always did (content hash of each received model, then the weighted average) against what it does
now (the same plus the in-memory check of each model against the start model, the update-norm bound and the
cosine screen), and, for DWC, the posterior screen of one site posterior against its prior. Reports seconds and the
ratio new / old; medians of back-to-back pairs.

Run: ``.venv/bin/python benchmarks/bench_boundary.py [--params 5000000] [--sites 3 10] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from monai_continual.consolidation import Posterior, weighted_average
from monai_continual.consolidation.robust import robust_average
from monai_continual.consolidation.screening import posterior_shift
from monai_continual.federated.boundary import BoundaryPolicy, check_model
from monai_continual.utils.hashing import tensors_sha256


def _model(params: int, generator: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    size = params // 20
    return {f"layers.{i}.weight": torch.randn(size, generator=generator) * scale for i in range(20)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=5_000_000)
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    policy = BoundaryPolicy()
    start = _model(args.params, g)
    print(f"{args.params / 1e6:.1f}M weights, {args.repeats} back-to-back pairs, medians")
    for sites in args.sites:
        states = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in start.items()} for _ in range(sites)]

        def old() -> None:
            for state in states:
                tensors_sha256(state)
            weighted_average(states)

        def new() -> None:
            for state in states:
                check_model(state, start, "site", policy)
                tensors_sha256(state)
            robust_average(states, start, norm_bound=policy.norm_bound, min_cosine=policy.min_cosine)

        old(), new()  # warm-up: allocator and thread pool
        pairs = [(_timed(old), _timed(new)) for _ in range(args.repeats)]
        before, after = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        print(f"FedAvg round, S={sites}: hash + average {before:.2f} s; with checks, norm bound and cosine screen "
              f"{after:.2f} s; ratio {after / before:.2f}x")
    prior = Posterior(start, {k: torch.full_like(v, 0.1) for k, v in start.items()})
    site = Posterior({k: v + 0.01 for k, v in start.items()}, {k: torch.full_like(v, 0.05) for k, v in start.items()})
    hashing = statistics.median(_timed(site.sha256) for _ in range(args.repeats))
    screen = statistics.median(
        _timed(lambda: posterior_shift(prior, site, policy.max_mean_shift)) for _ in range(args.repeats)
    )
    print(f"DWC site posterior: content hash {hashing:.2f} s; shift and precision screen {screen:.2f} s; "
          f"ratio {screen / hashing:.2f}x")


if __name__ == "__main__":
    main()
