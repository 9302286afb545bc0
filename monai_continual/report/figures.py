"""A figure of one test subject per site: image, reference, prediction and uncertainty of a Bayesian model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import apply_transform

from monai_continual.bayes import MCInferer
from monai_continual.consolidation.weight_store import load_weights
from monai_continual.strategies.layout import RunLayout
from monai_continual.utils.atomic import atomic_write

__all__ = ["plot_predictions"]


def plot_predictions(runner: Any, data: Any, result: Any, path: str | Path) -> Path:
    """Load ``result``'s final Bayesian model and plot, per site, the middle axial slice of the first test subject.

    Args:
        runner: the :class:`~monai_continual.engines.ContinualRunner` that made ``result`` (network, transforms,
            inferer, Monte Carlo samples).
        data: the multi-site datalist.
        result: a Bayesian strategy's :class:`~monai_continual.engines.StrategyResult`.
        path: the PNG file.

    Example::

        >>> plot_predictions(runner, data, runner.run("vcl"), "outputs/experiment/predictions.png")
    """
    from matplotlib.figure import Figure  # not pyplot: the process's backend is left as it is

    network = load_weights(runner.new_network(bayesian=True), RunLayout(result.directory).final_model).eval()
    inferer = MCInferer(runner.settings.mc_samples, runner.settings.inferer, return_uncertainty=True)
    sites = data.site_names
    fig = Figure(figsize=(2.4 * len(sites), 9.6))
    axes = fig.subplots(4, len(sites), squeeze=False)
    torch.manual_seed(0)
    for column, site in enumerate(sites):
        item = apply_transform(runner.settings.eval_transform, dict(data.items(site, "test")[0]))
        image = torch.as_tensor(item["image"])[None]
        with torch.no_grad():  # the network sits on the run's device; the panels are drawn from CPU copies
            out = {k: v.detach().cpu() for k, v in inferer(image.to(runner.settings.device), network).items()}
        z = image.shape[-1] // 2
        panels = [
            (image[0, 0, :, :, z], "gray", "image"),
            (torch.as_tensor(item["label"])[0, :, :, z], "tab10", "reference"),
            (out["probs"].argmax(1)[0, :, :, z], "tab10", "prediction"),
            (out["mutual_information"][0, 0, :, :, z], "magma", "uncertainty (MI)"),
        ]
        for row, (panel, cmap, title) in enumerate(panels):
            kwargs = {"vmin": 0, "vmax": 9} if cmap == "tab10" else {}
            axes[row, column].imshow(np.rot90(panel.numpy()), cmap=cmap, **kwargs)
            axes[row, column].set_title(f"{site}: {title}" if row == 0 else title, fontsize=8)
            axes[row, column].axis("off")
    fig.suptitle(f"{result.name}: one test subject per site", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return Path(path)
