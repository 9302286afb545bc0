"""The main job's goals, order spread and training budget against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monai_continual.metrics import loss_plateaued
from monai_continual.report import check_goals, order_spread, training_budget


def test_loss_plateaued():
    assert loss_plateaued([1.0, 0.6, 0.5, 0.42, 0.41, 0.42, 0.41, 0.41, 0.42]) is True
    assert loss_plateaued([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]) is False  # 0.9 -> 0.6: still falling by a third
    assert loss_plateaued([1.0, 0.9, 0.8, 0.7, 0.6]) is None  # fewer than two windows
    assert loss_plateaued([0.5, 0.5, 0.5, 0.6, 0.7, 0.8]) is True  # rising is not falling
    with pytest.raises(ValueError, match="window"):
        loss_plateaued([1.0], window=0)


def test_goals_are_one_sided_paired_tests_with_margins():
    rng = np.random.default_rng(0)
    sites = ["a", "b"]
    central = {s: list(rng.uniform(0.7, 0.8, 5)) for s in sites}
    cwt = {s: [v - 0.01 + rng.normal(0, 0.005) for v in central[s]] for s in sites}  # 1 point below: within 2
    rows = {r["goal"]: r for r in check_goals({"cyclic_weight_transfer": cwt, "centrally_hosted": central}, sites)}
    assert list(rows) == ["CWT within 2 Dice points of centrally hosted"]
    row = rows["CWT within 2 Dice points of centrally hosted"]
    x, y = np.concatenate([cwt[s] for s in sites]), np.concatenate([central[s] for s in sites])
    assert row["holds"] and row["mean_a"] == pytest.approx(x.mean()) and row["mean_b"] == pytest.approx(y.mean())
    assert row["p_value"] == pytest.approx(stats.ttest_rel(x + 0.02, y, alternative="greater").pvalue)
    # the effect: mean(A - B) with the t interval scipy gives for the mean of the differences, and d_z
    reference = stats.ttest_1samp(x - y, 0.0).confidence_interval(0.95)
    assert row["n"] == 10 and row["difference"] == pytest.approx((x - y).mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((reference.low, reference.high))
    assert row["effect_size"] == pytest.approx((x - y).mean() / (x - y).std(ddof=1))


def test_mean_interval_by_hand():
    from monai_continual.metrics.paired_tests import mean_interval

    interval = mean_interval([0.1, 0.3])  # sd / sqrt(2) = 0.1; t_{0.975, 1} = 12.7062
    assert interval.mean == pytest.approx(0.2) and interval.effect_size == pytest.approx(0.2 / np.sqrt(0.02))
    assert (interval.low, interval.high) == pytest.approx((0.2 - 1.270620, 0.2 + 1.270620), abs=1e-6)
    assert mean_interval([1.0, 1.0, 1.0]).effect_size is None and mean_interval([1.0, 1.0]).low == 1.0
    assert mean_interval(np.array([0.7, 0.8, 0.9]) - np.array([0.6, 0.7, 0.8])).effect_size is None  # rounding only
    assert mean_interval([-0.05] * 3).effect_size is None and mean_interval([0.0, 0.0]).mean == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])


def test_bwt_goals_over_orders_and_the_size_order_goal():
    ft = order_spread([{"order": ["a", "b"], "weighted": 0.6, "bwt": -0.10},
                       {"order": ["b", "a"], "weighted": 0.7, "bwt": -0.05},
                       {"order": ["a", "b"], "weighted": 0.65, "bwt": -0.08}])
    assert ft["weighted_mean"] == pytest.approx(0.65) and ft["weighted_std"] == pytest.approx(0.05)
    replay = order_spread([{"order": ["a", "b"], "weighted": 0.7, "bwt": b} for b in (0.02, 0.01, -0.01)])
    same = {"a": [0.5, 0.6, 0.7], "b": [0.4, 0.5]}
    sized = {"increasing": {"scores": same}, "decreasing": {"scores": same}}
    rows = {r["goal"]: r for r in check_goals({}, ["a", "b"], {"fine_tuning": ft, "replay": replay}, sized)}
    assert rows["fine-tuning forgets (BWT < 0)"]["holds"]
    assert rows["fine-tuning forgets (BWT < 0)"]["p_value"] == pytest.approx(
        stats.ttest_1samp([-0.10, -0.05, -0.08], 0.0, alternative="less").pvalue)
    assert rows["replay's BWT above fine-tuning's"]["holds"]
    # identical runs do not differ: the goal is reported as not holding, with p = 1
    order_goal = rows["VCL's increasing and decreasing site-size orders differ"]
    assert not order_goal["holds"] and order_goal["p_value"] == 1.0


def test_training_budget_counts_epochs_and_judges_plateaus():
    flat, falling = [0.41, 0.40, 0.40, 0.40, 0.41, 0.40], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    stages = [
        {"number": 0, "sites": [], "details": {}},
        {"number": 1, "sites": ["a"], "details": {"loss": flat}},
        {"number": 2, "sites": ["b"], "details": {"loss": falling}},
        {"number": 3, "sites": ["a"], "details": {"loss": [0.5, 0.4]}},  # short visits, judged together
        {"number": 4, "sites": ["a"], "details": {"loss": [0.4, 0.4]}},
        {"number": 5, "sites": ["a", "b"], "details": {"loss": [0.3]}},  # too short to judge
    ]
    budget = training_budget(stages, num_sites=2)
    assert budget["site_epochs"] == 6 + 6 + 2 + 2 + 2 and budget["epochs_per_site"] == 9
    assert budget["judged"] == 2 and budget["plateaued"] == 1 and budget["unjudged"] == 2
