"""Backward transfer, forward transfer and forgetting (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from monai_continual.metrics.continual_matrix import ContinualMatrix

__all__ = ["backward_transfer", "forward_transfer", "forgetting"]


def _matrix(R: ContinualMatrix | np.ndarray | Sequence[Sequence[float]]) -> ContinualMatrix:
    return R if isinstance(R, ContinualMatrix) else ContinualMatrix.from_array(R)


def _earlier_sites(R: ContinualMatrix) -> tuple[int, list[str]]:
    """The final stage and the trained sites it did not train on (those the transfer metrics average over)."""
    if R.num_stages == 0:
        raise ValueError("continual metrics: the R matrix has no stage.")
    final = R.num_stages - 1
    return final, [s for s in R.trained_sites() if s not in R.trained_on(final)]


def backward_transfer(R: ContinualMatrix | np.ndarray | Sequence[Sequence[float]]) -> float:
    """BWT = mean over earlier sites i of R[T, i] - R[last visit of i, i].

    For a sequential K x K matrix (row i trained on site i) this is GEM's
    ``1/(K-1) sum_{i<K} (R[K, i] - R[i, i])`` (Karthik et al., appendix A.1.2). Revisit rule: when a schedule trains
    on a site several times (cyclic weight transfer), R[i, i] is the score on site i right after the **last** stage
    that trained on it; T is the final stage, and the site(s) the final stage trained on are left out. Negative BWT
    is forgetting; positive BWT means later sites helped earlier ones. NaN when no earlier site exists.

    Example::

        >>> backward_transfer([[0.8, 0.1], [0.6, 0.9]])  # 0.6 - 0.8 = -0.2
    """
    R = _matrix(R)
    final, sites = _earlier_sites(R)
    if not sites:
        return float("nan")
    return float(np.mean([R.score(final, s) - R.score(R.visits(s)[-1], s) for s in sites]))


def forward_transfer(
    R: ContinualMatrix | np.ndarray | Sequence[Sequence[float]], baseline: Mapping[str, float] | Sequence[float]
) -> float:
    """FWT = mean over sites i first trained after stage 0 of R[first visit of i - 1, i] - b_i.

    For a sequential K x K matrix this is GEM's ``1/(K-1) sum_{i>=2} (R[i-1, i] - b_i)``: how well the model does on a
    site before it ever trains there, relative to ``b_i`` (the score of an untrained or single-site model). Revisit
    rule: only the **first** visit counts, since later visits are no longer zero-shot. NaN when no such site exists,
    or when the matrix is not :attr:`~ContinualMatrix.complete` (the first visits may not be rows).

    Args:
        R: the R matrix.
        baseline: site -> b_i, or one value per column of a sequential matrix.

    Example::

        >>> forward_transfer([[0.8, 0.3], [0.6, 0.9]], baseline=[0.1, 0.2])  # 0.3 - 0.2 = 0.1
    """
    R = _matrix(R)
    if not R.complete:
        return float("nan")
    if not isinstance(baseline, Mapping):
        values = list(baseline)
        if len(values) != len(R.sites):
            raise ValueError(f"forward_transfer: {len(values)} baseline values for {len(R.sites)} sites.")
        baseline = dict(zip(R.sites, values))
    diffs = []
    for site in R.trained_sites():
        first = R.visits(site)[0]
        if first == 0:
            continue
        if site not in baseline:
            raise ValueError(f"forward_transfer: no baseline score for site {site!r}.")
        diffs.append(R.score(first - 1, site) - float(baseline[site]))
    return float(np.mean(diffs)) if diffs else float("nan")


def forgetting(R: ContinualMatrix | np.ndarray | Sequence[Sequence[float]]) -> float:
    """Average forgetting: mean over earlier sites i of max_{first visit of i <= l < T} R[l, i] - R[T, i].

    (Chaudhry et al. 2018.) The best score a site ever had from its first training on, minus its final score; the
    site(s) of the final stage are left out as in :func:`backward_transfer`. Usually >= 0; negative where the final
    stage lifted earlier sites above their best score so far (positive backward transfer, e.g. replay). NaN when no
    earlier site exists, or when the matrix is not :attr:`~ContinualMatrix.complete`.

    Example::

        >>> forgetting([[0.8, 0.1, 0.0], [0.9, 0.7, 0.1], [0.5, 0.6, 0.9]])  # ((0.9 - 0.5) + (0.7 - 0.6)) / 2 = 0.25
    """
    R = _matrix(R)
    final, sites = _earlier_sites(R)
    if not sites or not R.complete:
        return float("nan")
    values = []
    for site in sites:
        best = max(R.score(stage, site) for stage in range(R.visits(site)[0], final))
        values.append(best - R.score(final, site))
    return float(np.mean(values))
