"""Continual metrics on hand-worked matrices (cyclic revisits included), R-matrix files, Dice, volumes, tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from monai_continual.metrics import (
    ContinualMatrix,
    backward_transfer,
    forgetting,
    forward_transfer,
    mean_dice,
    paired_tests,
    segmentation_volume,
    volume_correlation,
    weighted_average,
)

# Sequential, three sites; worked by hand:
#   BWT = ((0.5 - 0.8) + (0.6 - 0.7)) / 2 = -0.2
#   FWT with b = (0.1, 0.2, 0.3): ((0.4 - 0.2) + (0.2 - 0.3)) / 2 = 0.05
#   forgetting = ((max(0.8, 0.9) - 0.5) + (0.7 - 0.6)) / 2 = 0.25
SEQUENTIAL = [[0.8, 0.4, 0.1], [0.9, 0.7, 0.2], [0.5, 0.6, 0.9]]


def test_sequential_matrix_hand_worked():
    assert backward_transfer(SEQUENTIAL) == pytest.approx(-0.2)
    assert forward_transfer(SEQUENTIAL, [0.1, 0.2, 0.3]) == pytest.approx(0.05)
    assert forgetting(SEQUENTIAL) == pytest.approx(0.25)
    R = ContinualMatrix.from_array(SEQUENTIAL, ["A", "B", "C"])
    assert forward_transfer(R, {"A": 0.1, "B": 0.2, "C": 0.3}) == pytest.approx(0.05)
    # a final stage that lifts the earlier site above its best so far (replay): negative forgetting = -BWT
    assert forgetting([[0.6, 0.2], [0.7, 0.8]]) == pytest.approx(-0.1) == -backward_transfer([[0.6, 0.2], [0.7, 0.8]])


def test_cyclic_schedule_uses_last_visit_for_bwt_and_first_visit_for_fwt():
    R = ContinualMatrix(["A", "B", "C"])
    R.add_stage(None, {"A": 0.10, "B": 0.10, "C": 0.10}, label="untrained")  # stage 0
    R.add_stage("A", {"A": 0.50, "B": 0.20, "C": 0.15})  # 1
    R.add_stage("B", {"A": 0.40, "B": 0.60, "C": 0.30})  # 2
    R.add_stage("A", {"A": 0.70, "B": 0.50, "C": 0.35})  # 3: A revisited
    R.add_stage("B", {"A": 0.65, "B": 0.75, "C": 0.40})  # 4: B revisited, C skipped
    R.add_stage("A", {"A": 0.80, "B": 0.72, "C": 0.42})  # 5: final stage trains A
    assert R.trained_sites() == ["A", "B"] and R.visits("A") == [1, 3, 5]
    # Earlier sites: B only (A is the final stage's site; C never trained). Last visit of B is stage 4.
    assert backward_transfer(R) == pytest.approx(0.72 - 0.75)
    # First visits: A at 1 (previous stage 0 scores 0.10 on A), B at 2 (stage 1 scores 0.20 on B).
    assert forward_transfer(R, {"A": 0.0, "B": 0.05, "C": 0.0}) == pytest.approx(((0.10 - 0.0) + (0.20 - 0.05)) / 2)
    # Forgetting of B: best from its first visit (stage 2) to before the end is 0.75, final 0.72.
    assert forgetting(R) == pytest.approx(0.03)


def test_metrics_are_nan_without_earlier_sites_and_name_missing_scores():
    single = ContinualMatrix(["A"])
    single.add_stage("A", {"A": 0.9})
    assert math.isnan(backward_transfer(single)) and math.isnan(forgetting(single))
    R = ContinualMatrix(["A", "B"])
    R.add_stage("A", {"A": 0.8})
    R.add_stage("B", {"B": 0.9})
    with pytest.raises(KeyError, match="no score for site 'A' after stage 1"):
        backward_transfer(R)
    with pytest.raises(ValueError, match="unknown site"):
        R.add_stage("Z")


def test_files_round_trip_and_heatmap(tmp_path):
    R = ContinualMatrix(["A", "B"])
    R.add_stage(None, {"A": 0.1, "B": 0.2})
    R.add_stage(["A", "B"], {"A": 0.7}, label="dwc round 1")
    for loader, saver, name in (
        (ContinualMatrix.load_json, R.save_json, "r.json"),
        (ContinualMatrix.load_csv, R.save_csv, "r.csv"),
    ):
        back = loader(saver(tmp_path / name))
        assert back.sites == R.sites and back.labels == R.labels
        assert back.trained_on(1) == ["A", "B"]
        np.testing.assert_array_equal(back.as_array(), R.as_array())
    png = R.plot(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        ContinualMatrix.load_json(tmp_path / "broken.json")


def test_mean_dice_hand_worked():
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, :2, :2] = 1  # 4 voxels
    label[0, 0, 2:, 2:] = 2  # 4 voxels
    pred = label.clone()
    pred[0, 0, 0, 0] = 0  # class 1: TP 3, FN 1 -> 6/7
    pred[0, 0, 0, 3] = 2  # class 2: TP 4, FP 1 -> 8/9
    dice = mean_dice(pred, label, num_classes=3)
    assert float(dice[0]) == pytest.approx((6 / 7 + 8 / 9) / 2, rel=1e-6)
    with_bg = mean_dice(pred, label, num_classes=3, include_background=True)
    assert float(with_bg[0]) == pytest.approx((14 / 16 + 6 / 7 + 8 / 9) / 3, rel=1e-6)  # bg: TP 7, FP 1, FN 1
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    assert float(mean_dice(empty, empty, num_classes=2)[0]) == 1.0
    with pytest.raises(ValueError, match="outside 0..2"):
        mean_dice(pred + 5, label, num_classes=3)


def test_weighted_average_and_volumes():
    assert weighted_average({"A": 0.9, "B": 0.6}, {"A": 30, "B": 10}) == pytest.approx(0.825)
    assert weighted_average([0.5, 1.0], [1, 3]) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        weighted_average([0.5, 1.0], [1, -3])
    label = torch.zeros(8, 8)
    label[:3, :2] = 1
    assert segmentation_volume(label, 1, voxel_volume=0.5) == 3.0
    pred, ref = [10.0, 20.0, 31.0, 39.0], [11.0, 19.0, 30.0, 42.0]
    r, p = volume_correlation(pred, ref)
    assert r == pytest.approx(np.corrcoef(pred, ref)[0, 1]) and 0 < p < 0.05
    with pytest.raises(ValueError, match="constant"):
        volume_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_paired_tests_against_the_formulas():
    a = np.array([0.81, 0.77, 0.92, 0.85, 0.88, 0.79, 0.90])
    b = np.array([0.78, 0.75, 0.86, 0.84, 0.80, 0.77, 0.85])
    result = paired_tests(a, b)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert result.t_statistic == pytest.approx(t)
    assert result.t_pvalue == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1))
    # all seven differences are positive: W- = 0, and the exact two-sided p is 2 / 2^7
    assert result.wilcoxon_statistic == 0.0 and result.wilcoxon_pvalue == pytest.approx(2 / 2**7)
    assert paired_tests(a, b, alternative="greater").wilcoxon_pvalue == pytest.approx(1 / 2**7)
    assert paired_tests(a, a).t_pvalue == 1.0
    with pytest.raises(ValueError, match="equal length"):
        paired_tests(a, b[:3])
