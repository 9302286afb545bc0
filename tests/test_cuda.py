"""On a CUDA device: the main job with mixed precision, patches and sliding windows runs to its summary and figures,
and a Bayesian stage under autocast keeps its variance path in float32. Skipped without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from monai_continual.bayes import bayesianize
from monai_continual.networks import MeshNet
from test_bundle import bundle

pytestmark = pytest.mark.cuda


@pytest.mark.slow
def test_the_main_job_runs_with_amp_on_a_gpu(tmp_path):
    bundle("run", "experiment.json", tmp_path, "--dataset_shape", "[32,40,32]", "--strategies",
           "['fine_tuning','dwc']", "--epochs", "2", "--orders", "1", "--mc_samples", "2", "--device", "cuda",
           "--amp", "True", "--patch_size", "[16,16,16]", "--samples_per_volume", "2", "--batch_size", "2")
    out = tmp_path / "outputs" / "experiment"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) >= {"fine_tuning", "dwc"}
    for row in summary["strategies"].values():
        assert 0 <= row["weighted_average"] <= 1
    assert (out / "summary.md").is_file() and (out / "predictions.png").is_file()


def test_a_bayesian_network_under_autocast_gives_finite_outputs_and_gradients():
    torch.manual_seed(0)
    net = bayesianize(MeshNet(3, 1, 4, channels=8)).cuda()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda") * 100  # large activations: x^2 overflows in float16
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    out.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
