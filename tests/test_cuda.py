"""On a CUDA device: the main job with mixed precision, patches and sliding windows runs to its summary and figures,
and a Bayesian stage under autocast keeps its variance path in float32. Skipped without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # calibration and uncertainty from the GPU's probabilities: ECE for both rows, MI for the Bayesian ones
    calibration = summary["calibration"]
    assert all(0 <= row["training"]["ece"] <= 1 for row in calibration.values())
    assert calibration["dwc_finetuned"]["held_out"]["mean_mi"] > 0 and (out / "reliability.png").is_file()


def test_a_bayesian_network_under_autocast_gives_finite_outputs_and_gradients():
    torch.manual_seed(0)
    net = bayesianize(MeshNet(3, 1, 4, channels=8)).cuda()
    x = torch.randn(2, 1, 32, 32, 32, device="cuda") * 100  # large activations: x^2 overflows in float16
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    out.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["cyclic_weight_transfer", "vcl"])
def test_nnunet_sites_train_on_a_gpu_with_nnunets_defaults(tmp_path, monkeypatch, strategy):
    """``sites`` on CUDA as nnU-Net trains there: mixed precision and ``torch.compile`` (its default on a GPU), for
    nnU-Net's own trainer and for our Bayesian one; every stage scored on every site."""
    pytest.importorskip("nnunetv2")
    from monai_continual.nnunet import export_nnunet_datasets, plan_and_preprocess_sites
    from runner_utils import tiny_sites

    folders = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for key, value in {**folders, "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("nnUNet_compile", raising=False)
    names = list(export_nnunet_datasets(tiny_sites(tmp_path / "data"), folders["nnUNet_raw"], first_id=931).values())
    plan_and_preprocess_sites(names)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "monai_continual.nnunet", "sites", strategy, *names, "-o", str(run),
                           "--epochs", "2", "--iterations-per-epoch", "4", "--val-iterations-per-epoch", "2",
                           "-device", "cuda"], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                                           os.environ.get("PYTHONPATH", "")])))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    matrix = json.loads((run / "R.json").read_text())
    assert len(matrix["stages"]) >= len(names) and all(set(s["scores"]) == set(names) for s in matrix["stages"])
    assert all(0 <= v <= 1 and v == v for s in matrix["stages"] for v in s["scores"].values())
    logs = [p.read_text() for folder in (run, folders["nnUNet_results"]) for p in folder.rglob("training_log_*.txt")]
    assert logs and all("Using torch.compile" in text for text in logs), "nnU-Net did not compile on the GPU"
