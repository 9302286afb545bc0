"""The federated run's results, written on the server like the in-process main job's."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.metrics import backward_transfer, weighted_average
from monai_continual.report import summary_markdown
from monai_continual.strategies import SEQUENTIAL, RunState, Stage, strategy_of
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["write_results"]


def write_results(run_dir: Path, strategy: str, stages: Sequence[Stage], state: RunState, training: Sequence[str],
                  held_out: Sequence[str], skipped: Sequence[int] = ()) -> dict[str, Any]:
    """``R.json``, ``R.csv``, ``R.png``, ``summary.json``, ``summary.md`` and ``heatmaps/`` from the run state."""
    sites = [*training, *held_out]
    matrix = state.matrix(stages, sites)
    matrix.save_json(run_dir / "R.json")
    matrix.save_csv(run_dir / "R.csv")
    matrix.plot(run_dir / "R.png", title=f"{strategy} (federated): R matrix (mean Dice)")
    (run_dir / "heatmaps").mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "R.png", run_dir / "heatmaps" / f"{strategy}.png")
    last = [s for s in stages if s.evaluate][-1]
    scores = state.scores(last.number)
    sizes = {s: len(scores.get(s, [])) for s in sites}
    means = {s: float(np.mean(scores[s])) for s in training if scores.get(s)}
    bwt = backward_transfer(matrix) if strategy_of(strategy) in SEQUENTIAL else None
    row = {
        "sites": means,
        "weighted_average": weighted_average(means, {s: sizes[s] for s in means}) if means else float("nan"),
        "held_out": {s: float(np.mean(scores[s])) for s in held_out if scores.get(s)},
        "bwt": None if bwt is None or bwt != bwt else float(bwt),
        "bayesian": str(last.network) == "bayes",
    }
    summary = {
        "training_sites": list(training),
        "held_out_sites": list(held_out),
        "test_sizes": sizes,
        "strategies": {strategy: row},
        "comparisons": [],
        "per_volume_dice": {strategy: scores},
        "skipped_stages": list(skipped),
        "boundary": {str(r.number): r.details["boundary"] for r in state.stage_records() if r.details.get("boundary")},
        "engine": "nvflare",
        "seconds": float(sum(r.details.get("seconds", 0.0) for r in state.stage_records())),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "summary.md", summary_markdown(summary))
    return summary
