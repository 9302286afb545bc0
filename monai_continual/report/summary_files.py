"""Where a summary goes: ``summary.json``, the figures, then ``summary.md``; and the heatmaps folder."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai_continual.report.summary_markdown import summary_markdown
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["copy_heatmap", "write_summary"]


def copy_heatmap(png: str | os.PathLike, directory: str | os.PathLike, name: str) -> Path:
    """Copy a run's R-matrix figure to ``directory/heatmaps/<name>.png``.

    Example::

        >>> copy_heatmap("runs/vcl/R.png", "outputs/experiment", "vcl")
    """
    heatmaps = Path(directory) / "heatmaps"
    heatmaps.mkdir(parents=True, exist_ok=True)
    target = heatmaps / f"{name}.png"
    shutil.copyfile(png, target)
    return target


def write_summary(directory: str | os.PathLike, summary: Mapping[str, Any],
                  figures: Callable[[], object] | None = None) -> None:
    """Write ``summary.json``, then call ``figures`` (which writes the figures ``summary.md`` points to), then
    ``summary.md``, each atomically.

    Args:
        directory: where the files go.
        summary: the summary (JSON-able).
        figures: draws the figures, or ``None``.

    Example::

        >>> write_summary("outputs/experiment", summary, lambda: copy_heatmap("runs/vcl/R.png", out, "vcl"))
    """
    directory = Path(directory)
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2) + "\n")
    if figures is not None:
        figures()
    atomic_write_text(directory / "summary.md", summary_markdown(summary))
