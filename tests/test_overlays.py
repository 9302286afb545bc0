"""The overlays compose with a model-zoo training config that knows nothing of this package, one site at a time."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_continual.consolidation import DirectoryWeightStore, Posterior
from monai_continual.handlers import assemble_site_scores

OVERLAYS = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "overlays"

# a training config in the layout of the MONAI model zoo's spleen_ct_segmentation bundle, shrunk for a CPU
MODEL_ZOO_TRAIN = {
    "imports": ["$import glob", "$import os", "$import torch"],
    "bundle_root": ".",
    "ckpt_dir": "$@bundle_root + '/models'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "images": "$list(sorted(glob.glob(@dataset_dir + '/imagesTr/*.nii.gz')))",
    "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
    "val_interval": 1,
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8], "strides": [2], "num_res_units": 1},
    "network": "$@network_def.to(@device)",
    "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
    "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.01},
    "train": {
        "deterministic_transforms": [
            {"_target_": "LoadImaged", "keys": ["image", "label"]},
            {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": ["image", "label"]},
        ],
        "preprocessing": {"_target_": "Compose", "transforms": "$@train#deterministic_transforms"},
        "dataset": {"_target_": "CacheDataset",
                    "data": "$[{'image': i, 'label': l} for i, l in zip(@images[:-1], @labels[:-1])]",
                    "transform": "@train#preprocessing", "cache_rate": 1.0, "num_workers": 0},
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 1, "shuffle": True,
                       "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2}]},
        "handlers": [
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
             "interval": "@val_interval"},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
        ],
        "trainer": {"_target_": "SupervisedTrainer", "max_epochs": 2, "device": "@device",
                    "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                    "optimizer": "@optimizer", "inferer": "@train#inferer", "postprocessing": "@train#postprocessing",
                    "train_handlers": "@train#handlers", "amp": False},
    },
    "validate": {
        "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
        "dataset": {"_target_": "CacheDataset",
                    "data": "$[{'image': i, 'label': l} for i, l in zip(@images[-1:], @labels[-1:])]",
                    "transform": "@validate#preprocessing", "cache_rate": 1.0},
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": "%train#postprocessing",
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "CheckpointSaver", "save_dir": "@ckpt_dir", "save_dict": {"model": "@network"},
             "save_key_metric": True, "key_metric_filename": "model.pt"},
        ],
        "key_metric": {"val_mean_dice": {"_target_": "MeanDice", "include_background": False,
                                         "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                      "network": "@network", "inferer": "@validate#inferer",
                      "postprocessing": "@validate#postprocessing", "key_val_metric": "@validate#key_metric",
                      "val_handlers": "@validate#handlers", "amp": False},
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@train#trainer.run()"],
}


def _spleen_site(root: Path, cases: int, seed: int, bright: float) -> Path:
    """``imagesTr``/``labelsTr`` of a Task09_Spleen-like task: a bright ellipsoid "spleen" in noise (HU-like values)."""
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij"))
    for case in range(cases):
        centre = rng.uniform(-0.3, 0.3, 3)
        label = ((grid - centre[:, None, None, None]) ** 2 / np.array([0.25, 0.16, 0.2])[:, None, None, None]).sum(
            0
        ) < 1
        image = rng.normal(0, 20, label.shape) + bright * label
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"spleen_{case}.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"spleen_{case}.nii.gz")
    return root


def _run(configs: list[Path], root: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([str(c) for c in configs]),
            "--bundle_root", str(root), *overrides]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_zoo")
    train = root / "bundle" / "configs" / "train.json"
    train.parent.mkdir(parents=True)
    train.write_text(json.dumps(MODEL_ZOO_TRAIN, indent=4))
    sites = {"hospital_1": _spleen_site(root / "hospital_1" / "Task09_Spleen", 4, 0, 120.0),
             "hospital_2": _spleen_site(root / "hospital_2" / "Task09_Spleen", 4, 1, 60.0)}
    return root, train, sites


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sites_one_after_the_other(model_zoo, overlay: str, exchange: Path) -> dict[str, dict]:
    root, train, sites = model_zoo
    before = _sha(train)
    hidden = root / "hidden"
    hidden.mkdir(exist_ok=True)
    logs = {}
    for site, data in sites.items():
        # the other sites' data are out of reach while a site runs: it can only have read its own
        others = {s: d for s, d in sites.items() if s != site}
        for other, path in others.items():
            shutil.move(path, hidden / other)
        try:
            done = _run([train, OVERLAYS / overlay], root / site, "--dataset_dir", str(data), "--site", site,
                        "--exchange_dir", str(exchange))
            logs[site] = done.stdout + done.stderr
        finally:
            for other, path in others.items():
                shutil.move(hidden / other, path)
    assert _sha(train) == before  # the base config is untouched
    records = {p.name: json.loads(p.read_text()) for p in sorted((exchange / "scores").glob("*.json"))}
    return records, logs


def test_weight_transfer_overlay_on_a_model_zoo_bundle(model_zoo, tmp_path):
    exchange = tmp_path / "exchange"
    records, _ = _sites_one_after_the_other(model_zoo, "weight_transfer.json", exchange)
    store = DirectoryWeightStore(exchange / "weights")
    first, second = store.entry(0), store.entry(1)
    assert (first.site, second.site) == ("hospital_1", "hospital_2")
    # each site recorded only its own cells: site 1 its model, site 2 the model it received and the one it published
    assert set(records) == {"stage0000_hospital_1.json", "stage0000_hospital_2.json", "stage0001_hospital_2.json"}
    received = records["stage0000_hospital_2.json"]
    assert (
        received["when"] == "received"
        and received["model_sha256"] == first.sha256 == records["stage0000_hospital_1.json"]["model_sha256"]
    )
    assert records["stage0001_hospital_2.json"]["model_sha256"] == second.sha256 != first.sha256
    assert all(r["metric"] == "val_mean_dice" and 0 <= r["score"] <= 1 for r in records.values())
    matrix = assemble_site_scores(exchange)
    assert matrix.labels == ["0:hospital_1", "1:hospital_2"] and matrix.sites == ["hospital_1", "hospital_2"]
    values = matrix.as_array()
    assert values[0, 0] == records["stage0000_hospital_1.json"]["score"] and np.isnan(values[1, 0])
    assert values[0, 1] == received["score"] and values[1, 1] == records["stage0001_hospital_2.json"]["score"]


def test_bayesian_site_overlay_on_a_model_zoo_bundle(model_zoo, tmp_path):
    exchange = tmp_path / "exchange"
    records, _ = _sites_one_after_the_other(model_zoo, "bayesian_site.json", exchange)
    first = Posterior.load(exchange / "posteriors" / "stage0001_hospital_1.safetensors")
    second = Posterior.load(exchange / "posteriors" / "stage0002_hospital_2.safetensors")
    assert first.site == "hospital_1" and second.site == "hospital_2"
    assert records["stage0001_hospital_2.json"]["model_sha256"] == first.sha256()  # site 2's prior: site 1's posterior
    assert first.num_examples == second.num_examples == 3
    assert any(not torch.equal(second.mean[n], first.mean[n]) for n in first.mean)
    assert set(records) == {"stage0001_hospital_1.json", "stage0001_hospital_2.json", "stage0002_hospital_2.json"}


def test_bayesian_site_handler_sets_n_in_voxels_and_the_std_from_the_data(tmp_path):
    """In process: the handler wraps the trainer's loss in the ELBO, loads the newest posterior as prior, sets N to
    the site's training voxels and the stds from its data (never above the prior's), and publishes the next stage."""
    from monai.data import Dataset
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from monai_continual.bayes import bayesianize
    from monai_continual.handlers import BayesianSiteHandler
    from monai_continual.losses import ELBOLoss

    torch.manual_seed(0)
    items = [{"image": torch.randn(1, 8, 8, 8), "label": (torch.rand(1, 8, 8, 8) > 0.5).float()} for _ in range(3)]
    dataset = Dataset(items)

    def trainer(network, handler):
        loader = torch.utils.data.DataLoader(dataset, batch_size=1)
        return SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=network,
                                 optimizer=torch.optim.Adam(network.parameters(), 1e-3),
                                 loss_function=DiceCELoss(to_onehot_y=True, softmax=True), train_handlers=[handler])

    def network():
        return bayesianize(UNet(3, 1, 2, channels=(4, 8), strides=(2,)), prior_std="he")

    first = BayesianSiteHandler(network(), tmp_path, "site_1", dataset)
    trainer(first.network, first).run()
    assert first.loaded is None and first.published.stage == 1 and first.std_stats is None
    second = BayesianSiteHandler(network(), tmp_path, "site_2", dataset)
    engine = trainer(second.network, second)
    engine.run()
    assert isinstance(engine.loss_function, ELBOLoss) and engine.loss_function.num_examples == 3 * 8**3
    assert second.loaded.file == first.published.file and second.published.stage == 2
    assert second.std_stats["after"]["ratio_p95"] <= 1 + 1e-6 != second.std_stats["before"]["ratio_p95"]
