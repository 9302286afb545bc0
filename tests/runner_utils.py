"""Shared set-up of the runner tests: tiny sites, a tiny MeshNet, MONAI transforms."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, NormalizeIntensityd

from monai_continual.data import SiteProfile, make_sites
from monai_continual.engines import ContinualRunner
from monai_continual.networks import MeshNet

TINY_SITES = [
    SiteProfile("alpha", 5, "t1", noise=0.02, held_out=False),
    SiteProfile("beta", 4, "t2", noise=0.03, scale=50.0),
    SiteProfile("gamma", 4, "t1", noise=0.05, bias=0.3, scale=10.0),
    SiteProfile("omega", 2, "t1", noise=0.04, held_out=True),
]


def transform() -> Compose:
    keys = ["image", "label"]
    return Compose(
        [LoadImaged(keys), EnsureChannelFirstd(keys), NormalizeIntensityd("image", nonzero=True), EnsureTyped(keys)]
    )


def tiny_sites(directory: Path) -> Path:
    return make_sites(directory, sites=TINY_SITES, seed=1, shape=(16, 20, 16), figure=False, progress=False)


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def tiny_runner(datalist: Path, output: Path, network: torch.nn.Module | None = None, **kwargs) -> ContinualRunner:
    # short runs: one epoch, a fresh Adam at lr 1e-3 per visit (the recommended settings are for the whole budget)
    options = {"epochs": 1, "batch_size": 2, "mc_samples": 2, "progress": False, "seed": 0, "optimizer_state": "fresh",
               "optimizer": _adam}
    options.update(kwargs)
    torch.manual_seed(0)  # the same initial network in every process
    network = network if network is not None else MeshNet(3, 1, 4, channels=4, dilations=(1, 2, 1))
    return ContinualRunner(datalist, output, network, transform(), transform(), num_classes=4, **options)
