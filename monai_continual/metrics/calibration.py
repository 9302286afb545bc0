"""Calibration and uncertainty of voxel probabilities, per test volume: expected calibration error (MONAI's
``CalibrationErrorMetric``), reliability-diagram bins, and how well an uncertainty map finds the segmentation's errors.

A volume's record is a small JSON-able dictionary (:func:`volume_calibration`), so that every evaluation can keep one
per volume without keeping voxels; :func:`pool_calibration` pools the records of many volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric
from monai.metrics.calibration import calibration_binning
from monai.metrics.utils import ignore_background
from monai.networks.utils import one_hot

from monai_continual.bayes import predictive_entropy

__all__ = ["CALIBRATION_BINS", "error_detection_auroc", "pool_calibration", "volume_calibration"]

#: equal-width confidence bins of the ECE and the reliability diagram (MONAI's default)
CALIBRATION_BINS = 20


def error_detection_auroc(score: torch.Tensor, error: torch.Tensor) -> float | None:
    """Area under the ROC curve of ``score`` as a detector of the voxels where ``error`` is true.

    Exact over all voxels: the Mann-Whitney statistic with average ranks, i.e. the probability that an error voxel
    scores higher than a correct one, ties counting one half.

    Args:
        score: per-voxel uncertainty, any shape.
        error: per-voxel truth of "the prediction is wrong", the shape of ``score``.

    Returns:
        The AUROC, or ``None`` when every voxel is wrong or none is (nothing to separate).

    Example::

        >>> error_detection_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        0.75
    """
    if score.shape != error.shape:
        raise ValueError(
            f"error_detection_auroc: score shape {tuple(score.shape)} differs from error shape {tuple(error.shape)}.")
    errors = error.reshape(-1).bool()
    n_err = int(errors.sum())
    n_ok = errors.numel() - n_err
    if n_err == 0 or n_ok == 0:
        return None
    _, inverse, counts = torch.unique(score.reshape(-1).double(), return_inverse=True, return_counts=True)
    counts = counts.double()
    average_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based ranks, ties sharing their mean rank
    u = float(average_rank[inverse[errors]].sum()) - n_err * (n_err + 1) / 2
    return u / (n_err * n_ok)


def volume_calibration(
    probs: torch.Tensor,
    label: torch.Tensor,
    prediction: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    mutual_information: torch.Tensor | None = None,
    include_background: bool = False,
    num_bins: int = CALIBRATION_BINS,
) -> dict[str, Any]:
    """Calibration and uncertainty of one volume's class probabilities.

    - ``ece``: expected calibration error of each class's probabilities (one-vs-rest, ``num_bins`` equal bins),
      averaged over the classes (MONAI's ``CalibrationErrorMetric``);
    - ``bins``: the reliability diagram's raw material over those classes: per bin the voxel count and the sums of
      the predicted probability (``confidence``) and of the one-hot reference (``accuracy``);
    - ``mean_entropy`` / ``auroc_entropy``: mean predictive entropy (nats) and its AUROC as a detector of the voxels
      where the prediction differs from the label (:func:`error_detection_auroc`);
    - ``mean_mi`` / ``auroc_mi``: the same for the mutual information, when given (Bayesian models).

    Args:
        probs: ``(1, C, *spatial)`` class probabilities.
        label: ``(1, 1, *spatial)`` reference label map.
        prediction: ``(1, 1, *spatial)`` predicted label map (default: the argmax of ``probs``).
        entropy: ``(1, 1, *spatial)`` predictive entropy (default: that of ``probs``).
        mutual_information: ``(1, 1, *spatial)`` mutual information of Monte Carlo samples, or ``None``.
        include_background: count class 0 in the ECE and the bins (as the Dice average does).
        num_bins: bins of the ECE and the diagram.

    Returns:
        A JSON-able record; an AUROC that is not defined (no error, or only errors) is ``None``.

    Example::

        >>> out = MCInferer(10, return_uncertainty=True)(image, bayes_net)
        >>> record = volume_calibration(out["probs"], label, entropy=out["entropy"],
        ...                             mutual_information=out["mutual_information"])
    """
    if probs.ndim < 3 or probs.shape[0] != 1 or label.shape[0] != 1 or probs.shape[2:] != label.shape[2:]:
        raise ValueError(f"volume_calibration: need probs (1, C, *spatial) and label (1, 1, *spatial) of one grid, "
                         f"got {tuple(probs.shape)} and {tuple(label.shape)}.")
    probs = probs.float()
    reference = one_hot(label.long(), probs.shape[1])
    metric = CalibrationErrorMetric(num_bins, include_background=include_background, metric_reduction="none")
    ece = metric(y_pred=probs, y=reference)
    p, y = (probs, reference) if include_background else ignore_background(probs, reference)
    mean_p, mean_y, counts = calibration_binning(p, y, num_bins)
    error = (probs.argmax(1, keepdim=True) if prediction is None else prediction) != label
    entropy = predictive_entropy(probs) if entropy is None else entropy
    record: dict[str, Any] = {
        "ece": float(torch.nanmean(ece)),
        "mean_entropy": float(entropy.float().mean()),
        "auroc_entropy": error_detection_auroc(entropy, error),
    }
    if mutual_information is not None:
        record["mean_mi"] = float(mutual_information.float().mean())
        record["auroc_mi"] = error_detection_auroc(mutual_information, error)
    record["bins"] = {
        "count": counts.sum((0, 1)).tolist(),
        "confidence": (torch.nan_to_num(mean_p) * counts).sum((0, 1)).tolist(),
        "accuracy": (torch.nan_to_num(mean_y) * counts).sum((0, 1)).tolist(),
    }
    return record


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None and v == v]
    return float(np.mean(defined)) if defined else None


def pool_calibration(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The records of several volumes pooled: each number's mean over the volumes where it is defined (``None``
    where it is nowhere), the bins summed, and ``n`` the number of volumes.

    Example::

        >>> pooled = pool_calibration(records["site_a"] + records["site_b"])
        >>> pooled["ece"], pooled["bins"]["count"]
    """
    keys = [k for k in ("ece", "mean_entropy", "auroc_entropy", "mean_mi", "auroc_mi") if any(k in r for r in records)]
    pooled: dict[str, Any] = {"n": len(records), **{k: _mean([r.get(k) for r in records]) for k in keys}}
    if records:
        pooled["bins"] = {k: np.sum([r["bins"][k] for r in records], axis=0).tolist()
                          for k in ("count", "confidence", "accuracy")}
    return pooled
