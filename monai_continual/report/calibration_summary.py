"""The calibration and uncertainty part of a summary: per strategy, each site's and the training and held-out sites'
pooled ECE, entropy and mutual information, their error-detection AUROCs, and the reliability bins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_continual.metrics import pool_calibration

__all__ = ["calibration_summary"]


def _without_bins(pooled: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pooled.items() if k != "bins"}


def calibration_summary(
    records: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    training_sites: Sequence[str],
    held_out_sites: Sequence[str],
    bayesian: Mapping[str, bool],
) -> dict[str, Any]:
    """``summary["calibration"]``: one entry per summary row that has calibration records.

    Each entry has ``bayesian``, ``sites`` (site -> the site's volumes pooled by
    :func:`~monai_continual.metrics.pool_calibration`, without bins), ``training`` and ``held_out`` (the volumes of
    all training / all held-out sites pooled, with the reliability bins; ``None`` when there are none).

    Args:
        records: summary row -> site -> per-volume records
            (:func:`~monai_continual.metrics.volume_calibration`).
        training_sites: the sites pooled as ``training``.
        held_out_sites: the sites pooled as ``held_out``.
        bayesian: summary row -> whether its model is Bayesian.

    Example::

        >>> summary = calibration_summary({"vcl": {"a": [rec1, rec2], "e": [rec3]}}, ["a"], ["e"], {"vcl": True})
        >>> summary["vcl"]["held_out"]["auroc_mi"]
    """
    out: dict[str, Any] = {}
    for name, by_site in records.items():
        if not any(by_site.values()):
            continue
        groups = {"training": training_sites, "held_out": held_out_sites}
        pooled = {g: [r for s in sites for r in by_site.get(s, [])] for g, sites in groups.items()}
        out[name] = {
            "bayesian": bool(bayesian.get(name, False)),
            "sites": {s: _without_bins(pool_calibration(v)) for s in [*training_sites, *held_out_sites]
                      if (v := by_site.get(s))},
            **{g: pool_calibration(v) if v else None for g, v in pooled.items()},
        }
    return out
