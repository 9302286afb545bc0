"""Paired tests across volumes: is strategy A better than strategy B on the same test cases?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from monai.utils import StrEnum
from scipy import stats

from monai_continual.utils.choices import look_up_choice

__all__ = ["Alternative", "PairedTestResult", "paired_tests"]


class Alternative(StrEnum):
    """The alternative hypothesis: ``two-sided``, ``greater`` (A > B) or ``less`` (A < B)."""

    TWO_SIDED = "two-sided"
    GREATER = "greater"
    LESS = "less"


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of :func:`paired_tests`; ``mean_difference`` is mean(a - b)."""

    n: int
    mean_difference: float
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float

    def to_dict(self) -> dict[str, float]:
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
    if np.all(diff == 0):
        return PairedTestResult(int(x.size), 0.0, 0.0, 1.0, 0.0, 1.0)
    t = stats.ttest_rel(x, y, alternative=alternative)
    w = stats.wilcoxon(x, y, alternative=alternative)
    return PairedTestResult(
        int(x.size), float(diff.mean()), float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue)
    )
