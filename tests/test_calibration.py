"""Calibration and uncertainty of voxel probabilities: ECE, error-detection AUROC, their summary and goals, against
hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.transforms import Lambdad
from scipy import stats
from sklearn.metrics import roc_auc_score

from monai_continual.bayes import MCInferer
from monai_continual.metrics import error_detection_auroc, evaluate_sites, pool_calibration, volume_calibration
from monai_continual.report import calibration_summary, plot_reliability, summary_markdown, uncertainty_goals


def _h(p: float) -> float:
    """Binary entropy in nats."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_ece_and_reliability_bins_by_hand():
    # 4 voxels, 2 classes; the foreground's probabilities and labels (the background is left out, as in Dice)
    p1 = torch.tensor([0.1, 0.3, 0.6, 0.9])
    probs = torch.stack([1 - p1, p1])[None]  # (1, 2, 4)
    label = torch.tensor([[[0, 1, 1, 1]]])
    # 2 bins: [0, .5) holds .1, .3 (mean .2, frequency 1/2), [.5, 1] holds .6, .9 (mean .75, frequency 1)
    record = volume_calibration(probs, label, num_bins=2)
    assert record["ece"] == pytest.approx((2 * abs(0.2 - 0.5) + 2 * abs(0.75 - 1.0)) / 4)  # 0.275
    assert record["bins"]["count"] == [2, 2]
    assert record["bins"]["confidence"] == pytest.approx([0.4, 1.5])
    assert record["bins"]["accuracy"] == pytest.approx([1.0, 2.0])
    # 4 bins: one voxel each, |p - y| = .1, .7, .4, .1
    assert volume_calibration(probs, label, num_bins=4)["ece"] == pytest.approx((0.1 + 0.7 + 0.4 + 0.1) / 4)
    # with the background: its ECE is the same here (p0 = 1 - p1, y0 = 1 - y1), so the mean is too
    assert volume_calibration(probs, label, include_background=True, num_bins=2)["ece"] == pytest.approx(0.275)
    with pytest.raises(ValueError, match="one grid"):
        volume_calibration(probs, label[..., :3])


def test_mutual_information_auroc_from_monte_carlo_samples_by_hand():
    # two Monte Carlo samples of the foreground probability at 4 voxels
    samples = [torch.tensor([0.9, 0.6, 0.3, 0.05]), torch.tensor([0.9, 0.8, 0.9, 0.35])]
    logits = iter([torch.log(torch.stack([1 - s, s]))[None] for s in samples])
    out = MCInferer(2, return_uncertainty=True)(torch.zeros(1, 1, 4), lambda x: next(logits))
    label = torch.tensor([[[1, 0, 0, 0]]])  # means .9, .7, .6, .2: voxels 1 and 2 are wrong
    record = volume_calibration(out["probs"], label, entropy=out["entropy"],
                                mutual_information=out["mutual_information"])
    # MI = H[mean p] - mean H[p]
    mi = [0.0, _h(0.7) - (_h(0.6) + _h(0.8)) / 2, _h(0.6) - (_h(0.3) + _h(0.9)) / 2,
          _h(0.2) - (_h(0.05) + _h(0.35)) / 2]
    assert mi == pytest.approx([0.0, 0.02415, 0.20504, 0.07742], abs=1e-4)
    assert record["mean_mi"] == pytest.approx(sum(mi) / 4, abs=1e-6)
    # pairs (error, correct): (1, 0) MI .024 > 0 yes, (1, 3) .024 > .077 no, (2, 0) yes, (2, 3) yes: 3 of 4
    assert record["auroc_mi"] == pytest.approx(0.75)
    # entropy of the mean: .611 and .673 (errors) above .325 and .500 (correct): 4 of 4
    assert record["auroc_entropy"] == pytest.approx(1.0)
    assert record["mean_entropy"] == pytest.approx((_h(0.9) + _h(0.7) + _h(0.6) + _h(0.2)) / 4, abs=1e-6)


def test_error_detection_auroc_counts_ties_half_and_matches_sklearn():
    assert error_detection_auroc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5
    assert error_detection_auroc(torch.tensor([0.1, 0.2]), torch.tensor([False, False])) is None
    assert error_detection_auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None
    rng = np.random.default_rng(0)
    score = rng.integers(0, 6, 500).astype(float)  # many ties
    error = rng.random(500) < 0.2 + 0.1 * score
    assert error_detection_auroc(torch.as_tensor(score), torch.as_tensor(error)) == pytest.approx(
        roc_auc_score(error, score))


def test_evaluate_sites_records_calibration_from_the_scored_probabilities():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1)
    items = {"a": [{"image": torch.randn(1, 4, 4, 4), "label": torch.randint(0, 3, (1, 4, 4, 4))} for _ in range(2)]}
    transform = Lambdad(["image", "label"], lambda x: x)
    records: dict = {}
    dice = evaluate_sites(net, items, transform, 3, calibration=records)
    assert dice == evaluate_sites(net, items, transform, 3)  # recording changes no score
    with torch.no_grad():
        expected = [volume_calibration(torch.softmax(net(i["image"][None]), 1), i["label"][None]) for i in items["a"]]
    assert records["a"] == expected and "mean_mi" not in expected[0]
    # Monte Carlo: the same Dice as without uncertainty, with the mutual information recorded
    mc = MCInferer(3)
    torch.manual_seed(1)
    plain = evaluate_sites(net, items, transform, 3, inferer=mc)
    torch.manual_seed(1)
    assert evaluate_sites(net, items, transform, 3, inferer=mc, calibration=records) == plain
    assert not mc.return_uncertainty and records["a"][0]["mean_mi"] == pytest.approx(0.0, abs=1e-6)


def test_monte_carlo_probabilities_are_the_same_with_uncertainty():
    samples = [torch.softmax(torch.randn(1, 3, 5, 5, 5, generator=torch.Generator().manual_seed(i)), 1)
               for i in range(5)]

    def draws():
        it = iter(samples)
        return lambda x: torch.log(next(it))

    plain = MCInferer(5)(torch.zeros(1), draws())
    assert torch.equal(MCInferer(5, return_uncertainty=True)(torch.zeros(1), draws())["probs"], plain)


def _record(ece: float, mi: float, auroc: float) -> dict:
    return {"ece": ece, "mean_entropy": 2 * mi, "auroc_entropy": auroc, "mean_mi": mi, "auroc_mi": auroc,
            "bins": {"count": [1, 3], "confidence": [0.2, 2.4], "accuracy": [0.0, 3.0]}}


def test_calibration_summary_goals_markdown_and_figure(tmp_path):
    train = {"a": [_record(0.1, 0.01, 0.6), _record(0.2, 0.02, None)], "b": [_record(0.3, 0.03, 0.7)]}
    held = {"e": [_record(0.4, 0.05, 0.8), _record(0.5, 0.06, 0.55), _record(0.6, 0.07, 0.75)]}
    records = {"vcl": {**train, **held}, "fine_tuning": {s: [{k: v for k, v in r.items() if "mi" not in k}
                                                              for r in rs] for s, rs in {**train, **held}.items()}}
    calib = calibration_summary(records, ["a", "b"], ["e"], {"vcl": True, "fine_tuning": False})
    vcl = calib["vcl"]
    assert vcl["sites"]["a"]["ece"] == pytest.approx(0.15) and vcl["sites"]["a"]["auroc_mi"] == pytest.approx(0.6)
    assert vcl["training"]["n"] == 3 and vcl["training"]["ece"] == pytest.approx(0.2)
    assert vcl["training"]["auroc_mi"] == pytest.approx(0.65)  # undefined AUROCs left out
    assert vcl["held_out"]["bins"]["count"] == [3, 9] and "bins" not in vcl["sites"]["e"]
    assert calib["fine_tuning"]["held_out"].get("mean_mi") is None and not calib["fine_tuning"]["bayesian"]
    assert pool_calibration([])["n"] == 0

    goals = uncertainty_goals({"vcl": records["vcl"]}, ["a", "b"], ["e"])
    higher, detects = goals
    assert higher["holds"] and higher["mean_a"] == pytest.approx(0.06) and higher["mean_b"] == pytest.approx(0.02)
    assert higher["p_value"] == pytest.approx(
        stats.ttest_ind([0.05, 0.06, 0.07], [0.01, 0.02, 0.03], equal_var=False, alternative="greater").pvalue)
    assert detects["holds"] and detects["p_value"] == pytest.approx(
        stats.ttest_1samp([0.8, 0.55, 0.75], 0.5, alternative="greater").pvalue)
    # effects with 95% intervals: Welch's for the unpaired volumes, the one-sample t interval for the AUROC
    welch = stats.ttest_ind([0.05, 0.06, 0.07], [0.01, 0.02, 0.03], equal_var=False).confidence_interval(0.95)
    assert (higher["difference"], higher["ci_low"], higher["ci_high"], higher["n"]) == pytest.approx(
        (0.04, welch.low, welch.high, 6))
    assert higher["effect_size"] == pytest.approx(0.04 / 0.01)  # both groups' sd is 0.01
    one = stats.ttest_1samp([0.8, 0.55, 0.75], 0.5).confidence_interval(0.95)
    assert (detects["difference"], detects["ci_low"], detects["ci_high"]) == pytest.approx((0.2, one.low - 0.5,
                                                                                            one.high - 0.5))
    assert uncertainty_goals({"fine_tuning": records["fine_tuning"]}, ["a", "b"], ["e"]) == []

    summary = {"training_sites": ["a", "b"], "held_out_sites": ["e"], "test_sizes": {"a": 2, "b": 1, "e": 3},
               "strategies": {}, "comparisons": [], "seconds": 1.0, "calibration": json.loads(json.dumps(calib))}
    text = summary_markdown(summary)
    assert "## Calibration and uncertainty" in text
    assert "| vcl | 0.150 | 0.300 | 0.200 | 0.500 | 0.500 |" in text
    assert "| fine_tuning | 0.04 | 0.12 | 0.650 | 0.700 |  |  |  |  |" in text
    assert plot_reliability(summary, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_reliability({"calibration": {}}, tmp_path / "none.png") is None
