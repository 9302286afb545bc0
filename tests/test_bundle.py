"""Every bundle config through the real `python -m monai.bundle run`, with tiny overrides."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation"
CONFIGS = BUNDLE / "configs"
TINY = ["--dataset_shape", "[16,20,16]"]


def bundle(command: str, configs, root: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    config_arg = str(CONFIGS / configs) if isinstance(configs, str) else json.dumps([str(CONFIGS / c) for c in configs])
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        command,
        "--config_file",
        config_arg,
        "--bundle_root",
        str(root),
        *overrides,
    ]
    if command == "verify_net_in_out":
        args += ["--meta_file", str(CONFIGS / "metadata.json"), "--net_id", "network_def"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    strategies = "['single_site','ensemble','cyclic_weight_transfer','fine_tuning','dwc','fedprox']"
    result = bundle("run", "experiment.json", root, *TINY, "--strategies", strategies, "--epochs", "1",
                    "--mc_samples", "2", "--orders", "2")
    return root, result


@pytest.mark.slow
def test_experiment_writes_summary_and_figures(experiment):
    root, result = experiment
    out = root / "outputs" / "experiment"
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["strategies"]
    assert list(rows) == ["single_site", "ensemble", "cyclic_weight_transfer", "fine_tuning", "dwc", "dwc_finetuned",
                          "fedprox"]
    for name, row in rows.items():
        assert set(row) >= {"sites", "weighted_average", "held_out", "bwt"}
        assert set(row["sites"]) == {"site_a", "site_b", "site_c", "site_d"} and set(row["held_out"]) == {"heldout_e"}
        assert 0 <= row["weighted_average"] <= 1
        assert (row["bwt"] is None) == (name not in ("cyclic_weight_transfer", "fine_tuning"))
    # the FedProx row: federated averaging with the proximal term, a run of its own
    fedprox = json.loads((out / "runs" / "fedprox" / "state.json").read_text())
    trained = [s for s in fedprox["config"]["stages"] if s["action"] == "train"]
    assert trained and all(s["proximal_mu"] == 0.01 for s in trained)
    assert summary["budget"]["fedprox"]["epochs_per_site"] > 0
    assert {c["a"] for c in summary["comparisons"]} >= {"dwc_finetuned", "cyclic_weight_transfer"}
    markdown = (out / "summary.md").read_text()
    assert "| strategy |" in markdown and "## Training budget and convergence" in markdown and "## Goals" in markdown
    # two site orders of each order-dependent strategy: the datalist's and a permutation of it, each its own run
    for name in ("cyclic_weight_transfer", "fine_tuning"):
        orders = summary["orders"][name]["orders"]
        assert orders[0] == ["site_a", "site_b", "site_c", "site_d"] and sorted(orders[1]) == orders[0] != orders[1]
        assert (out / "runs" / f"{name}@order2" / "state.json").is_file()
        assert summary["orders"][name]["bwt_std"] >= 0
    assert summary["budget"]["fine_tuning"]["epochs_per_site"] == 1 and summary["budget"]["dwc"]["judged"] == 0
    goals = {g["goal"]: g for g in summary["goals"]}
    assert goals["DWC (fine-tuned) beats the ensemble"]["mean_a"] == pytest.approx(
        np.mean([v for s in ("site_a", "site_b", "site_c", "site_d")
                 for v in summary["per_volume_dice"]["dwc_finetuned"][s]]))
    assert "weighted" in result.stdout and "dwc_finetuned" in result.stdout  # the table is printed
    goal = goals["DWC (fine-tuned) beats the ensemble"]
    assert goal["ci_low"] <= goal["difference"] <= goal["ci_high"]
    assert goal["difference"] == pytest.approx(goal["mean_a"] - goal["mean_b"])
    assert "| A - B (no margin) [95% CI] | d |" in markdown
    # calibration of every row's final model on every site it was scored on; MI for the Bayesian rows only
    calibration, training = summary["calibration"], ["site_a", "site_b", "site_c", "site_d"]
    assert list(calibration) == list(rows)
    for name, row in calibration.items():
        sites = training if name == "single_site" else training + ["heldout_e"]
        assert list(row["sites"]) == sites and row["bayesian"] == (name in ("dwc", "dwc_finetuned"))
        assert [row["sites"][s]["n"] for s in sites] == [summary["test_sizes"][s] for s in sites]
        assert 0 <= row["training"]["ece"] <= 1 and sum(row["training"]["bins"]["count"]) > 0
        assert (row["training"].get("mean_mi") is not None) == row["bayesian"]
    assert calibration["dwc_finetuned"]["held_out"]["mean_mi"] > 0
    assert "## Calibration and uncertainty" in markdown and "| mean MI held out |" in markdown
    uncertainty = {(g["goal"], g["a"]) for g in summary["goals"] if g["paper"].startswith("MC uncertainty")}
    assert uncertainty == {("uncertainty (mean MI) higher at the held-out sites", f"{n} (held out)")
                           for n in ("dwc", "dwc_finetuned")} | {
        ("MI detects the held-out sites' errors better than chance (AUROC)", n) for n in ("dwc", "dwc_finetuned")}
    for png in ["heatmaps/cyclic_weight_transfer.png", "heatmaps/dwc.png", "heatmaps/fedprox.png", "predictions.png",
                "reliability.png"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_experiment_resumes_instead_of_starting_over(experiment):
    root, _ = experiment
    out = root / "outputs" / "experiment"
    before = json.loads((out / "summary.json").read_text())
    stamp = (out / "runs" / "fine_tuning" / "final_model.safetensors").stat().st_mtime_ns
    strategies = "['single_site','ensemble','cyclic_weight_transfer','fine_tuning','dwc','fedprox']"
    bundle("run", "experiment.json", root, *TINY, "--strategies", strategies, "--epochs", "1", "--mc_samples", "2",
           "--orders", "2")
    after = json.loads((out / "summary.json").read_text())
    assert after["strategies"] == before["strategies"] and after["calibration"] == before["calibration"]
    assert after["seconds"] < before["seconds"]
    assert (out / "runs" / "fine_tuning" / "final_model.safetensors").stat().st_mtime_ns >= stamp


@pytest.mark.slow
def test_evaluate_and_inference_configs(experiment, tmp_path):
    root, _ = experiment
    runs = root / "outputs" / "experiment" / "runs"
    bundle("run", "evaluate.json", root, "--model_file", str(runs / "fine_tuning" / "final_model.safetensors"))
    scores = json.loads((root / "outputs" / "evaluation" / "scores.json").read_text())
    assert set(scores) == {"site_a", "site_b", "site_c", "site_d", "heldout_e"}
    images = sorted((root / "data" / "sites" / "heldout_e").glob("*_img.nii.gz"))[:2]
    bundle(
        "run",
        "inference.json",
        root,
        "--input_images",
        json.dumps([str(p) for p in images]),
        "--mc_samples",
        "2",
        "--roi_size",
        "[16,16,16]",
    )
    for image in images:
        name = image.name.split(".")[0]
        seg = nib.load(root / "outputs" / "inference" / f"{name}_seg.nii.gz")
        unc = nib.load(root / "outputs" / "inference" / f"{name}_uncertainty.nii.gz")
        source = nib.load(image)
        assert seg.shape == source.shape and unc.shape == source.shape + (3,)
        np.testing.assert_allclose(seg.affine, source.affine)
        assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3}
    two_channel = tmp_path / "two.nii.gz"
    data = np.asanyarray(source.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), source.affine), two_channel)
    bad = bundle(
        "run",
        "inference.json",
        root,
        "--input_images",
        json.dumps([str(two_channel)]),
        "--mc_samples",
        "1",
        check=False,
    )
    assert bad.returncode != 0 and "two.nii.gz' has 2 channel(s); the network expects 1" in bad.stderr


def test_verify_net_in_out():
    bundle("verify_net_in_out", "inference.json", BUNDLE)


@pytest.mark.slow
def test_overlay_adds_handlers_to_an_untouched_train_json(tmp_path):
    digest = hashlib.sha256((CONFIGS / "train.json").read_bytes()).hexdigest()
    bundle("run", ["train.json", "continual_handlers.json"], tmp_path, *TINY, "--epochs", "1")
    assert hashlib.sha256((CONFIGS / "train.json").read_bytes()).hexdigest() == digest
    shared = tmp_path / "outputs" / "shared"
    matrix = json.loads((shared / "R.json").read_text())
    assert matrix["stages"][0]["trained_on"] == ["site_a"] and len(matrix["sites"]) == 5
    entries = json.loads((shared / "weights" / "manifest.json").read_text())["entries"]
    assert [e["site"] for e in entries] == ["site_a"]
    assert json.loads((tmp_path / "outputs" / "replay_site_a" / "replay_manifest.json").read_text())["kept"]["site_a"]
    bundle("run", ["train.json", "continual_handlers.json"], tmp_path, *TINY, "--epochs", "1", "--site", "site_b")
    entries = json.loads((shared / "weights" / "manifest.json").read_text())["entries"]
    assert [e["site"] for e in entries] == ["site_a", "site_b"]  # site_b started from site_a's weights and published


@pytest.mark.slow
def test_bad_input_gives_clear_errors(tmp_path, small_sites):
    document = json.loads(Path(small_sites).read_text())
    document["sites"]["site_b"]["test"] = []
    for item in [
        i for s in document["sites"].values() for split in ("training", "validation", "test") for i in s[split]
    ]:
        for key in ("image", "label"):
            item[key] = str(Path(small_sites).parent / item[key])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    result = bundle("run", "experiment.json", tmp_path, "--datalist", str(broken), "--epochs", "1", check=False)
    assert result.returncode != 0 and "['site_b']" in result.stderr and "no test cases" in result.stderr
    (tmp_path / "afile").write_text("x")
    result = bundle(
        "run",
        "experiment.json",
        tmp_path,
        "--datalist",
        str(small_sites),
        "--output_dir",
        str(tmp_path / "afile"),
        check=False,
    )
    assert result.returncode != 0 and "afile' exists and is not a directory" in result.stderr
