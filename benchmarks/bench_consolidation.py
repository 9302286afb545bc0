"""Peak memory of DWC consolidation streamed over site files, measured side by side in one run.

Writes S site posterior files of a network with P weights (default 5M, as in the issue), then consolidates them
from their paths in a fresh process and reads the process's peak RSS. Reports the peak above the interpreter's
baseline in units of one posterior (mean + std, float32) for S = 10 and S = 100: streaming keeps it flat in S.

Run: ``.venv/bin/python benchmarks/bench_consolidation.py [--params 5000000] [--sites 10 100]``
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm


def _child(prior: str, sites: list[str], baseline_only: bool) -> None:
    from monai_continual.consolidation import consolidate_dwc

    start = time.perf_counter()
    if not baseline_only:
        consolidate_dwc(prior, sites)
    print(
        json.dumps(
            {
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def _measure(prior: Path, sites: list[Path], baseline_only: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(prior), *map(str, sites)]
    if baseline_only:
        cmd.append("--baseline-only")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=5_000_000)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1:], args.baseline_only)
        return

    from monai_continual.consolidation import Posterior

    shapes = {"conv1.weight": (args.params // 2,), "conv2.weight": (args.params - args.params // 2,)}
    posterior_mb = 2 * 4 * args.params / 2**20
    workdir = Path(tempfile.mkdtemp(prefix="dwc-bench-"))
    try:
        g = torch.Generator().manual_seed(0)
        prior = Posterior({k: torch.zeros(s) for k, s in shapes.items()}, {k: torch.ones(s) for k, s in shapes.items()})
        prior_path = prior.save(workdir / "prior.safetensors")
        files = []
        for i in tqdm(range(max(args.sites)), desc="writing site files"):
            post = Posterior(
                {k: torch.randn(s, generator=g) for k, s in shapes.items()},
                {k: 0.1 + 0.5 * torch.rand(s, generator=g) for k, s in shapes.items()},
                metadata={"num_examples": 10 + i, "site": f"site{i}"},
            )
            files.append(post.save(workdir / f"site{i}.safetensors"))
        baseline = _measure(prior_path, files[:1], baseline_only=True)["peak_mb"]
        results = {"params": args.params, "posterior_mb": posterior_mb, "baseline_mb": baseline}
        for count in args.sites:
            m = _measure(prior_path, files[:count])
            results[f"S{count}_peak_above_baseline_mb"] = m["peak_mb"] - baseline
            results[f"S{count}_in_posteriors"] = (m["peak_mb"] - baseline) / posterior_mb
            results[f"S{count}_seconds"] = m["seconds"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    for count in args.sites:
        print(
            f"S = {count:>3}: peak above baseline {results[f'S{count}_peak_above_baseline_mb']:.0f} MB = "
            f"{results[f'S{count}_in_posteriors']:.1f} posteriors of {posterior_mb:.0f} MB, "
            f"{results[f'S{count}_seconds']:.1f} s"
        )
    first, last = args.sites[0], args.sites[-1]
    print(
        f"ratio S={last} / S={first}: "
        f"{results[f'S{last}_peak_above_baseline_mb'] / results[f'S{first}_peak_above_baseline_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
