"""The federated run's results, written on the server like the in-process main job's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_continual.report import copy_heatmap, summary_row, write_summary
from monai_continual.strategies import NetworkKind, RunState, Stage, strategy_of

__all__ = ["write_results"]


def write_results(run_dir: Path, strategy: str, stages: Sequence[Stage], state: RunState, training: Sequence[str],
                  held_out: Sequence[str], skipped: Sequence[int] = ()) -> dict[str, Any]:
    """``R.json``, ``R.csv``, ``R.png``, ``summary.json``, ``summary.md`` and ``heatmaps/`` from the run state."""
    sites = [*training, *held_out]
    matrix = state.matrix(stages, sites)
    matrix.save_json(run_dir / "R.json")
    matrix.save_csv(run_dir / "R.csv")
    matrix.plot(run_dir / "R.png", title=f"{strategy} (federated): R matrix (mean Dice)")
    copy_heatmap(run_dir / "R.png", run_dir, strategy)
    last = [s for s in stages if s.evaluate][-1]
    scores = state.scores(last.number)
    sizes = {s: len(scores.get(s, [])) for s in sites}
    row = summary_row(scores, matrix, training_sites=training, held_out_sites=held_out, test_sizes=sizes,
                      sequential=strategy_of(strategy).sequential, bayesian=last.network == NetworkKind.BAYES)
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
    write_summary(run_dir, summary)
    return summary
