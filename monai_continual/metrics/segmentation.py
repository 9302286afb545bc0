"""Segmentation scores across sites: class-averaged Dice, weighted averages over sites, volume correlation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from scipy import stats

from monai_continual.utils.weights import normalized_weights

__all__ = ["mean_dice", "weighted_average", "segmentation_volume", "volume_correlation"]


def mean_dice(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, include_background: bool = False
) -> torch.Tensor:
    """Dice per class averaged over classes, one value per volume (McClure et al. Eq. 18), via MONAI's DiceMetric.

    A class absent from both prediction and reference scores 1 (nothing to find, nothing found); absent from the
    reference but predicted, 0.

    Args:
        pred: predicted label map ``(B, 1, *spatial)`` (integers) or one-hot ``(B, C, *spatial)``.
        label: reference label map ``(B, 1, *spatial)`` or one-hot.
        num_classes: number of classes, background included.
        include_background: average over class 0 too.

    Returns:
        ``(B,)`` float tensor.

    Example::

        >>> dice = mean_dice(logits.argmax(1, keepdim=True), label, num_classes=4)
    """
    if pred.shape[2:] != label.shape[2:] or pred.shape[0] != label.shape[0]:
        raise ValueError(
            f"mean_dice: prediction shape {tuple(pred.shape)} does not match label shape {tuple(label.shape)}."
        )

    def to_one_hot(x: torch.Tensor, what: str) -> torch.Tensor:
        if x.shape[1] == num_classes and num_classes > 1:
            return x.float()
        if x.shape[1] != 1:
            raise ValueError(f"mean_dice: {what} must have 1 or {num_classes} channels, got {x.shape[1]}.")
        values = torch.unique(x)
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"mean_dice: {what} has label values {values.tolist()} outside 0..{num_classes - 1}.")
        return one_hot(x.long(), num_classes)

    metric = DiceMetric(include_background=include_background, reduction="none", ignore_empty=False)
    per_class = metric(to_one_hot(pred, "prediction"), to_one_hot(label, "label"))
    return per_class.float().mean(dim=1)


def weighted_average(
    scores: Sequence[float] | Mapping[str, float], sizes: Sequence[float] | Mapping[str, float]
) -> float:
    """Average of per-site scores weighted by test-set size (McClure et al. Table 2's weighted average).

    Example::

        >>> weighted_average({"A": 0.9, "B": 0.6}, {"A": 30, "B": 10})  # 0.825
    """
    if isinstance(scores, Mapping):
        if not isinstance(sizes, Mapping) or set(scores) != set(sizes):
            raise ValueError(f"weighted_average: scores name sites {sorted(scores)}, sizes must name the same.")
        keys = sorted(scores)
        values, weights = [float(scores[k]) for k in keys], [sizes[k] for k in keys]
    else:
        values, weights = [float(s) for s in scores], list(sizes)
    w = normalized_weights(weights, len(values), "test-set sizes")
    return float(sum(wi * vi for wi, vi in zip(w, values)))


def segmentation_volume(label: torch.Tensor | np.ndarray, class_index: int = 1, voxel_volume: float = 1.0) -> float:
    """Volume of ``class_index`` in a label map: voxel count times ``voxel_volume`` (e.g. mm^3 from the spacing)."""
    return float((torch.as_tensor(label) == class_index).sum()) * float(voxel_volume)


def volume_correlation(predicted: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Pearson correlation between predicted and reference volumes across cases (Remedios et al.), and its p-value.

    Example::

        >>> r, p = volume_correlation([10.0, 20.0, 31.0], [11.0, 19.0, 30.0])
    """
    a, b = np.asarray(predicted, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"volume_correlation: need two 1-D sequences of equal length, got {a.shape} and {b.shape}.")
    if a.size < 3:
        raise ValueError(f"volume_correlation: need at least 3 cases, got {a.size}.")
    if np.std(a) == 0 or np.std(b) == 0:
        raise ValueError("volume_correlation: a constant sequence of volumes has no correlation.")
    result = stats.pearsonr(a, b)
    return float(result.statistic), float(result.pvalue)
