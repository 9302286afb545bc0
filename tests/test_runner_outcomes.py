"""What the strategies achieve on a small problem where the sites really differ (fixed seeds).

Two training sites acquire the same anatomy with inverted tissue contrast (T1-like and T2-like). After intensity
normalization a voxel's brightness means the opposite tissue at the other site, so a network trained at one site
alone does poorly on the other, and sequential fine-tuning on the second site overwrites what the first taught.
This is the setting of Chang et al. (institutions with different acquisitions) and Karthik et al. (forgetting).

Measured with this set-up (30 epochs, seeds 0 / 1 / 2; pooled Dice over both sites' test volumes):
single-site 0.57, 0.57 / 0.53, 0.49 / 0.47, 0.46; CWT 0.66 / 0.67 / 0.59; fine-tuning BWT -0.069 / -0.060 / +0.028;
replay BWT +0.145 / +0.152 / +0.147. CWT beating every single-site model and replay's higher BWT hold for every seed;
fine-tuning's negative BWT holds for two of three at this tiny scale (the network is still far from converged after
one site, so the second site also improves the shared background/brain boundary). The test pins seed 0.

Bayesian site stages learn their site (defaults: MAP start, He prior, Laplace-calibrated std, N in voxels). Dice on
t2_site of the starting prior -> after the t2 stage, seeds 0 / 1 / 2: VCL 0.547 -> 0.720, 0.467 -> 0.662,
0.485 -> 0.596; DWC's site posterior 0.547 -> 0.723, 0.467 -> 0.656, 0.485 -> 0.591. With McClure et al.'s settings
(std 1e-3, prior N(0, 1), N = volumes) VCL's second stage moved t2_site from 0.411 to 0.412 (seed 0). The test pins
seed 0 and asks for a lift of 0.08.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_continual.data import SiteProfile, make_sites
from monai_continual.engines import ContinualRunner
from monai_continual.metrics import backward_transfer
from monai_continual.networks import MeshNet
from runner_utils import transform

SITES = [
    SiteProfile("t1_site", 6, "t1", noise=0.02),
    SiteProfile("t2_site", 6, "t2", noise=0.02),
    SiteProfile("held", 2, "t1", held_out=True),
]
TRAIN_SITES = ("t1_site", "t2_site")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrast_shift")
    datalist = make_sites(root / "data", sites=SITES, seed=1, shape=(16, 20, 16), figure=False, progress=False)
    torch.manual_seed(0)
    network = MeshNet(3, 1, 4, channels=12, dilations=(1, 2, 4, 1))
    return ContinualRunner(
        datalist, root / "runs", network, transform(), transform(), num_classes=4, epochs=30, batch_size=1,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), mc_samples=2, progress=False, seed=0,
        optimizer_state="fresh",
    )


def _pooled(scores: dict[str, list[float]]) -> float:
    return float(np.mean([d for site in TRAIN_SITES for d in scores[site]]))


def test_cwt_beats_every_single_site_model_and_replay_remembers(runner):
    single = runner.run("single_site")
    single_pooled = {name: _pooled(scores) for name, scores in single.extra.items()}
    cwt = runner.run("cyclic_weight_transfer", epochs_per_visit=1)
    assert len(cwt.transfers) == 2 * 30
    for name, dice in single_pooled.items():
        assert _pooled(cwt.scores) > dice + 0.05, (name, dice, _pooled(cwt.scores))

    fine_tuning = runner.run("fine_tuning")
    replay = runner.run("replay", capacity_per_site=2)
    bwt_ft, bwt_replay = backward_transfer(fine_tuning.matrix), backward_transfer(replay.matrix)
    assert bwt_ft < 0, f"fine-tuning should forget the first site, BWT {bwt_ft:+.3f}"
    assert bwt_replay > bwt_ft + 0.05, (bwt_replay, bwt_ft)
    assert _pooled(replay.scores) > _pooled(fine_tuning.scores)


def _t2_dice(result, label: str) -> float:
    return float(result.matrix.score(result.matrix.labels.index(label), "t2_site"))


@pytest.mark.parametrize("strategy,prior_label,site_label", [("vcl", "1:t1_site", "2:t2_site"),
                                                              ("dwc", "q0:t1_site", "r1:t2_site")])
def test_a_bayesian_site_stage_learns_the_site_its_prior_does_not_know(runner, strategy, prior_label, site_label):
    result = runner.run(strategy, order=["t1_site", "t2_site"], **({"finetune": False} if strategy == "dwc" else {}))
    before, after = _t2_dice(result, prior_label), _t2_dice(result, site_label)
    assert after > before + 0.08, (strategy, before, after)
    state = {r["label"]: r for r in json.loads((result.directory / "state.json").read_text())["stages"]}
    std = state[site_label]["details"]["std"]
    # the std the site starts from is computed from its data and never exceeds its prior's
    assert std["before"]["median"] != std["after"]["median"] and std["after"]["ratio_p95"] <= 1 + 1e-6
