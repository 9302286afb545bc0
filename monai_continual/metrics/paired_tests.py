"""Paired tests across volumes: is strategy A better than strategy B on the same test cases?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from monai.utils import StrEnum
from scipy import stats

from monai_continual.utils.choices import look_up_choice

__all__ = ["Alternative", "MeanInterval", "PairedTestResult", "effect_size", "mean_interval", "paired_tests"]


class Alternative(StrEnum):
    """The alternative hypothesis: ``two-sided``, ``greater`` (A > B) or ``less`` (A < B)."""

    TWO_SIDED = "two-sided"
    GREATER = "greater"
    LESS = "less"


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its two-sided Student-t confidence interval and its standardized effect size.

    Attributes:
        mean: the sample mean.
        low, high: the interval ``mean -+ t_{(1+c)/2, n-1} * sd / sqrt(n)``.
        effect_size: ``mean / sd`` (Cohen's d_z for paired differences); ``None`` when the values do not vary
            (beyond rounding), where it is undefined.
        confidence: the interval's level ``c``.
    """

    mean: float
    low: float
    high: float
    effect_size: float | None
    confidence: float = 0.95


def effect_size(mean: float, spread: float) -> float | None:
    """``mean / spread``, or ``None`` where the values do not vary beyond rounding (the ratio is undefined).

    Example::

        >>> effect_size(0.2, 0.1), effect_size(0.05, 0.0)
        (2.0, None)
    """
    return mean / spread if spread > 1e-12 * max(1.0, abs(mean)) else None


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """The mean of ``values`` with its Student-t confidence interval and ``mean / sd``.

    Example::

        >>> mean_interval([0.1, 0.3])  # mean 0.2, sd / sqrt(n) = 0.1, t_{0.975, 1} = 12.706: 0.2 -+ 1.271
        MeanInterval(mean=0.2, low=-1.0706..., high=1.4706..., effect_size=1.414..., confidence=0.95)
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"mean_interval: need at least 2 values in a 1-D sequence, got shape {x.shape}.")
    if not 0 < confidence < 1:
        raise ValueError(f"mean_interval: confidence must lie in (0, 1), got {confidence}.")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * sd / float(np.sqrt(x.size))
    return MeanInterval(mean, mean - half, mean + half, effect_size(mean, sd), confidence)


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of :func:`paired_tests`; ``mean_difference`` is mean(a - b), ``interval`` its 95% confidence
    interval and d_z effect size (:func:`mean_interval`)."""

    n: int
    mean_difference: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    interval: MeanInterval | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_tests(
    a: Sequence[float], b: Sequence[float], alternative: Alternative | str = Alternative.TWO_SIDED
) -> PairedTestResult:
    """Paired t-test (McClure et al.) and Wilcoxon signed-rank test (Remedios et al.) of per-volume scores.

    Args:
        a: scores of strategy A, one per test volume.
        b: scores of strategy B on the same volumes, in the same order.
        alternative: ``"two-sided"``, ``"greater"`` (A > B) or ``"less"``.

    Returns:
        Statistics and p-values of both tests. When every difference is zero, both p-values are 1.

    Example::

        >>> result = paired_tests(dice_dwc, dice_ensemble)
        >>> result.t_pvalue, result.wilcoxon_pvalue
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_tests: need two 1-D sequences of equal length, got {x.shape} and {y.shape}.")
    if x.size < 2:
        raise ValueError(f"paired_tests: need at least 2 paired values, got {x.size}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_tests: scores contain NaN or Inf.")
    alternative = look_up_choice(alternative, Alternative, "paired_tests: alternative").value
    diff = x - y
    interval = mean_interval(diff)
    if np.all(diff == 0):
        return PairedTestResult(int(x.size), 0.0, 0.0, 1.0, 0.0, 1.0, interval)
    t = stats.ttest_rel(x, y, alternative=alternative)
    w = stats.wilcoxon(x, y, alternative=alternative)
    return PairedTestResult(
        int(x.size), float(diff.mean()), float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue),
        interval,
    )
