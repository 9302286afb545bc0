"""Cost of Bayesian convolutions, measured side by side in one run.

1. Train step (forward + backward) of BayesConv3d (local reparameterization) vs nn.Conv3d of the same shape
   (32 -> 32 channels, 3x3x3, dilation 2, batch 2, 32^3, 2 threads). Target <= 2.05x (floor 2.0: two convolutions).
   bayesian-torch's Conv3dFlipout is timed too when it is installed.
2. Monte Carlo inference, T = 10 passes with weight sampling vs 10 plain forwards. Target <= 1.1x.
3. Peak memory (max RSS of a fresh process) of MCInferer with T = 50 vs T = 1. Target within 10%.
4. Train step of the main job's Bayesian MeshNet (12 channels, batch 1, 16x20x16) with the CPU's fused convolution
   (one grouped convolution of [x, x^2]) vs the two convolutions of local reparameterization. Target <= 0.7x.

Ratios are medians of back-to-back pairs (a shared CPU drifts by tens of percent between runs).

Run: ``.venv/bin/python benchmarks/bench_bayes_conv.py [--repeats 20]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from monai_continual.bayes import BayesConv3d, BayesianModule, MCInferer, bayesianize
from monai_continual.networks import MeshNet


def _paired(fn_a, fn_b, pairs: int, warmup: int = 2) -> tuple[float, float, float]:
    """Time ``fn_a`` and ``fn_b`` back to back ``pairs`` times; return both medians and the median of the ratios.

    Each pair runs under the same load, so the per-pair ratio cancels most of a shared machine's drift.
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b, ratios = [], [], []
    for _ in range(pairs):
        start = time.perf_counter()
        fn_a()
        mid = time.perf_counter()
        fn_b()
        end = time.perf_counter()
        times_a.append(mid - start)
        times_b.append(end - mid)
        ratios.append((end - mid) / (mid - start))
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def _train_step(layer: nn.Module, x: torch.Tensor):
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.square().mean().backward()

    return step


def bench_train_step(repeats: int) -> dict[str, float]:
    x = torch.randn(2, 32, 32, 32, 32)
    plain = nn.Conv3d(32, 32, 3, padding=2, dilation=2).train()
    bayes = BayesConv3d(32, 32, 3, padding=2, dilation=2).train()
    t_plain, t_bayes, ratio = _paired(_train_step(plain, x), _train_step(bayes, x), repeats)
    results = {"conv3d_train_step_s": t_plain, "bayesconv3d_train_step_s": t_bayes, "train_step_ratio": ratio}
    try:
        from bayesian_torch.layers import Conv3dFlipout

        flipout = Conv3dFlipout(32, 32, 3, padding=2, dilation=2).train()
        _, t_flip, flip_ratio = _paired(_train_step(plain, x), _train_step(flipout, x), repeats)
        results["flipout_train_step_s"], results["flipout_ratio"] = t_flip, flip_ratio
    except ImportError:
        results["flipout_ratio"] = float("nan")
    return results


def bench_mc(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    plain = MeshNet(3, 1, 4, channels=32).eval()
    bayes = bayesianize(plain).eval()
    x = torch.randn(1, 1, 40, 40, 40)
    inferer = MCInferer(10, mode="weights")

    def plain_passes() -> None:
        with torch.no_grad():
            for _ in range(10):
                torch.softmax(plain(x), 1)

    def mc_passes() -> None:
        inferer(x, bayes)

    t_plain, t_mc, ratio = _paired(plain_passes, mc_passes, max(3, repeats // 3), warmup=1)
    return {"plain_10_forwards_s": t_plain, "mc_10_passes_s": t_mc, "mc_ratio": ratio}


def bench_fused(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = MeshNet(3, 1, 4, channels=12, dilations=(1, 1, 2, 4, 1), bayesian=True).train()
    x = torch.randn(1, 1, 16, 20, 16)
    layers = [m for m in net.modules() if isinstance(m, BayesConv3d)]

    def two_convolutions() -> None:
        for layer in layers:  # the instance attribute hides the class's fused method
            layer._mean_and_var = BayesianModule._mean_and_var.__get__(layer)
        try:
            _train_step(net, x)()
        finally:
            for layer in layers:
                del layer._mean_and_var

    t_two, t_fused, ratio = _paired(two_convolutions, _train_step(net, x), repeats)
    return {"meshnet_two_convolutions_s": t_two, "meshnet_fused_s": t_fused, "fused_ratio": ratio}


def _peak_rss_child(num_samples: int) -> None:
    torch.manual_seed(0)
    net = MeshNet(3, 1, 4, channels=16, bayesian=True).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    MCInferer(num_samples, return_uncertainty=True)(x, net)
    print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def bench_memory() -> dict[str, float]:
    peaks = {}
    for t in (1, 50):
        out = subprocess.run(
            [sys.executable, __file__, "--child-peak", str(t)], check=True, capture_output=True, text=True
        ).stdout
        peaks[t] = json.loads(out.strip().splitlines()[-1])["peak_rss_kb"] / 1024
    return {"peak_rss_mb_T1": peaks[1], "peak_rss_mb_T50": peaks[50], "peak_ratio": peaks[50] / peaks[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child-peak", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_peak:
        _peak_rss_child(args.child_peak)
        return
    results = {**bench_train_step(args.repeats), **bench_mc(args.repeats), **bench_memory(),
               **bench_fused(args.repeats)}
    print(json.dumps(results, indent=2))
    print(f"train step  BayesConv3d / Conv3d       = {results['train_step_ratio']:.2f}x  (target <= 2.05x)")
    print(f"train step  Conv3dFlipout / Conv3d     = {results['flipout_ratio']:.2f}x  (reference, nan = not installed)")
    print(f"MC T=10 weight sampling / 10 forwards  = {results['mc_ratio']:.2f}x  (target <= 1.1x)")
    print(f"peak memory MC T=50 / T=1              = {results['peak_ratio']:.3f}   (target <= 1.10)")
    print(f"Bayesian MeshNet step fused / two convs = {results['fused_ratio']:.2f}x  (target <= 0.7x, batch 1)")


if __name__ == "__main__":
    main()
