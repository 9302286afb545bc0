"""Scoring a network on every site's test set: per-volume Dice, the raw material of R matrices and paired tests, and
optionally each volume's calibration and uncertainty record from the same probabilities."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import apply_transform
from monai.utils import convert_to_tensor
from torch import nn
from tqdm.auto import tqdm

from monai_continual.bayes import MCInferer
from monai_continual.metrics.calibration import volume_calibration
from monai_continual.metrics.segmentation import mean_dice

__all__ = ["evaluate_sites"]


def evaluate_sites(
    network: nn.Module,
    site_items: Mapping[str, Sequence[dict[str, Any]]],
    transform: Callable,
    num_classes: int,
    inferer: Inferer | None = None,
    device: str | torch.device = "cpu",
    include_background: bool = False,
    progress: bool = False,
    amp: bool = False,
    calibration: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[float]]:
    """Per-volume class-averaged Dice of ``network`` on each site's items.

    Args:
        network: the model; put in eval mode for the evaluation and restored after.
        site_items: site -> datalist items with ``"image"`` and ``"label"``.
        transform: MONAI transform turning an item into ``{"image": (C, *spatial), "label": (1, *spatial)}``.
        num_classes: classes, background included.
        inferer: how to predict (e.g. ``SlidingWindowInferer``, or ``MCInferer`` for Bayesian networks);
            ``SimpleInferer`` by default. Its output's channel argmax is the prediction.
        device: where to run.
        include_background: count the background class in the Dice average.
        progress: show a progress bar over volumes.
        amp: predict under ``torch.autocast`` (mixed precision) when ``device`` is a CUDA device; ignored elsewhere.
        calibration: when given, filled with site -> one :func:`~monai_continual.metrics.calibration.volume_calibration`
            record per volume, from the probabilities the Dice was scored from: the softmax of a plain network's
            output, or an ``MCInferer``'s mean probabilities with the entropy and mutual information of its samples
            (no further forward pass).

    Returns:
        site -> list of per-volume Dice, in item order.

    Example::

        >>> scores = evaluate_sites(net, {s: data.items(s, "test") for s in data.site_names}, eval_transform, 4)
    """
    inferer = inferer or SimpleInferer()
    if calibration is not None and isinstance(inferer, MCInferer) and not inferer.return_uncertainty:
        inferer = copy.copy(inferer)
        inferer.return_uncertainty = True
    autocast = bool(amp) and torch.device(device).type == "cuda"
    was_training = network.training
    network.eval()
    total = sum(len(v) for v in site_items.values())
    bar = tqdm(total=total, desc="evaluating", disable=not progress, leave=False)
    scores: dict[str, list[float]] = {}
    try:
        with torch.no_grad(), torch.autocast("cuda", enabled=autocast):
            for site, items in site_items.items():
                scores[site] = []
                if calibration is not None:
                    calibration[site] = []
                for item in items:
                    data = apply_transform(transform, dict(item))
                    # plain tensors: a MetaTensor's metadata bookkeeping on every operation costs ~10% of a pass
                    image = convert_to_tensor(data["image"], track_meta=False)[None].to(device)
                    label = convert_to_tensor(data["label"], track_meta=False)[None].to(device)
                    output = inferer(image, network)
                    uncertainty = output if isinstance(output, Mapping) else {}
                    if uncertainty:
                        output = uncertainty["probs"]
                    pred = output.argmax(dim=1, keepdim=True)
                    scores[site].append(float(mean_dice(pred, label.long(), num_classes, include_background)[0]))
                    if calibration is not None:
                        probs = output if uncertainty else torch.softmax(output.float(), dim=1)
                        calibration[site].append(volume_calibration(
                            probs, label.long(), pred, uncertainty.get("entropy"),
                            uncertainty.get("mutual_information"), include_background))
                    bar.update(1)
    finally:
        bar.close()
        network.train(was_training)
    return scores
