"""The reliability diagram of a summary: per strategy, the observed frequency of a class against the predicted
probability, on the training sites' and on the held-out sites' test volumes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.utils.atomic import atomic_write

__all__ = ["RELIABILITY_FIGURE", "plot_reliability"]

#: the figure's file name beside ``summary.md``
RELIABILITY_FIGURE = "reliability.png"


def plot_reliability(summary: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Draw ``summary["calibration"]``'s pooled bins: one panel for the training sites, one for the held-out sites,
    one line per strategy (a bin's mean predicted probability against its mean one-hot reference; empty bins left
    out), the diagonal being perfect calibration.

    Args:
        summary: a summary with ``calibration`` (:func:`~monai_continual.report.calibration_summary`).
        path: the PNG file.

    Returns:
        The path, or ``None`` (nothing drawn) when the summary has no calibration.

    Example::

        >>> plot_reliability(json.loads(Path("outputs/experiment/summary.json").read_text()), "reliability.png")
    """
    rows = summary.get("calibration") or {}
    if not rows:
        return None
    from matplotlib.figure import Figure  # not pyplot: the process's backend is left as it is

    groups = [g for g in ("training", "held_out") if any(row.get(g) for row in rows.values())]
    fig = Figure(figsize=(4.2 * len(groups), 4.2))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        for index, (name, row) in enumerate(rows.items()):
            pooled = row.get(group)
            if not pooled:
                continue
            count = np.asarray(pooled["bins"]["count"], dtype=float)
            seen = count > 0
            confidence = np.asarray(pooled["bins"]["confidence"])[seen] / count[seen]
            accuracy = np.asarray(pooled["bins"]["accuracy"])[seen] / count[seen]
            # matplotlib has 10 colours: the rows after them are told apart by line and marker
            style = ("-", "o") if index < 10 else (":", "s")
            ax.plot(confidence, accuracy, linestyle=style[0], marker=style[1], markersize=3, linewidth=1,
                    color=f"C{index % 10}", label=f"{name} (ECE {pooled['ece']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"{'training' if group == 'training' else 'held-out'} sites", fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return Path(path)
