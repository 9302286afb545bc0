"""The main job: every strategy on the same multi-site data, summarized like McClure et al.'s Table 2."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from monai_continual.data import load_multisite_datalist, make_sites
from monai_continual.engines import STRATEGIES, ContinualRunner, StrategyResult
from monai_continual.strategies import SEQUENTIAL
from monai_continual.experiment.comparisons import run_comparisons
from monai_continual.experiment.figures import plot_predictions
from monai_continual.metrics import backward_transfer, weighted_average
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["MultiSiteExperiment", "SEQUENTIAL_STRATEGIES", "ROW_ORDER"]

#: Strategies whose R matrix is a sequence of sites, so that backward transfer applies.
SEQUENTIAL_STRATEGIES = tuple(s.value for s in SEQUENTIAL)
#: Summary rows in display order (``dwc`` yields ``dwc`` and ``dwc_finetuned``).
ROW_ORDER = (
    "single_site", "ensemble", "centrally_hosted", "single_weight_transfer", "cyclic_weight_transfer",
    "fine_tuning", "replay", "vcl", "dwc", "dwc_finetuned", "federated_averaging",
)
_RUN_ORDER = (
    "single_site", "ensemble", "centrally_hosted", "single_weight_transfer", "cyclic_weight_transfer", "fine_tuning",
    "replay", "vcl", "dwc", "federated_averaging",
)


class MultiSiteExperiment:
    """Run the strategies, then write ``summary.md``, ``summary.json``, R-matrix heatmaps and a prediction figure.

    Args:
        output_dir: where everything goes (each strategy's run, resumable, under ``runs/``).
        network: the deterministic network all strategies start from.
        train_transform, eval_transform: MONAI transforms of items to ``image``/``label`` tensors.
        num_classes: classes, background included.
        datalist: a multi-site datalist JSON; ``None`` or ``""`` uses the embedded sites in ``dataset_dir``.
        dataset_dir: where the embedded sites are generated on first use.
        dataset_shape: voxel grid of the embedded sites.
        strategies: strategy names to run (``dwc`` gives the ``dwc`` and ``dwc_finetuned`` rows).
        strategy_options: per-strategy options for :meth:`ContinualRunner.run`.
        runner_options: further :class:`ContinualRunner` arguments (epochs, batch_size, optimizer, mc_samples...).
        inferer: prediction inferer (sliding window for large volumes).

    Example::

        >>> MultiSiteExperiment("outputs/experiment", MeshNet(3, 1, 4, channels=16), train_t, eval_t, 4).run()
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: nn.Module,
        train_transform: Callable,
        eval_transform: Callable,
        num_classes: int,
        datalist: str | os.PathLike | None = None,
        dataset_dir: str | os.PathLike = "data/sites",
        dataset_shape: Sequence[int] = (32, 40, 32),
        dataset_seed: int = 0,
        strategies: Sequence[str] = _RUN_ORDER,
        strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
        runner_options: Mapping[str, Any] | None = None,
        inferer: Inferer | None = None,
        progress: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"MultiSiteExperiment: output_dir {str(self.output_dir)!r} exists and is not a directory.")
        wanted = ["dwc" if s == "dwc_finetuned" else s for s in strategies]
        unknown = [s for s in wanted if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"MultiSiteExperiment: unknown strategies {unknown}; choose from {list(STRATEGIES) + ['dwc_finetuned']}.")
        self.strategies = [s for s in _RUN_ORDER if s in wanted]
        self.network = network
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.num_classes = int(num_classes)
        self.datalist = str(datalist) if datalist else None
        self.dataset_dir = Path(dataset_dir)
        self.dataset_shape = tuple(int(s) for s in dataset_shape)
        self.dataset_seed = int(dataset_seed)
        self.strategy_options = {k: dict(v) for k, v in (strategy_options or {}).items()}
        self.runner_options = dict(runner_options or {})
        self.inferer = inferer
        self.progress = progress

    def run(self) -> dict[str, Any]:
        start = time.time()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        datalist = self.datalist or make_sites(self.dataset_dir, seed=self.dataset_seed, shape=self.dataset_shape, progress=self.progress)
        data = load_multisite_datalist(datalist)
        runner = ContinualRunner(
            data, self.output_dir / "runs", self.network, self.train_transform, self.eval_transform, self.num_classes,
            inferer=self.inferer, progress=self.progress, **self.runner_options,
        )
        results: dict[str, StrategyResult] = {}
        for number, strategy in enumerate(self.strategies, start=1):
            print(f"[{number}/{len(self.strategies)}] {strategy} ({time.time() - start:.0f} s so far)", flush=True)
            results[strategy] = runner.run(strategy, **self.strategy_options.get(strategy, {}))
        summary = self._summarize(results, runner, data, time.time() - start)
        self._write(summary, results, runner, data)
        print(self.table(summary))
        return summary

    # ----------------------------------------------------------------------------------------------------------------

    def _rows(self, results: Mapping[str, StrategyResult]) -> dict[str, tuple[dict[str, list[float]], StrategyResult]]:
        rows = {}
        for name, result in results.items():
            if name == "dwc":
                if "dwc" in result.extra:
                    rows["dwc"] = (result.extra["dwc"], result)
                if "dwc_finetuned" in result.extra:
                    rows["dwc_finetuned"] = (result.extra["dwc_finetuned"], result)
            else:
                rows[name] = (result.scores, result)
        return {k: rows[k] for k in ROW_ORDER if k in rows}

    def _summarize(self, results, runner: ContinualRunner, data, seconds: float) -> dict[str, Any]:
        training, held_out = runner.sites, data.held_out_sites()
        sizes = {s: len(data.site(s).test) for s in training}
        strategies: dict[str, Any] = {}
        all_scores: dict[str, dict[str, list[float]]] = {}
        for name, (scores, result) in self._rows(results).items():
            means = {s: float(np.mean(scores[s])) for s in training if s in scores}
            held = {s: float(np.mean(scores[s])) for s in held_out if s in scores}
            if name == "single_site":  # held-out: the mean over the single-site models
                held = {
                    s: float(np.mean([np.mean(result.extra[f"single_site[{m}]"][s]) for m in training]))
                    for s in held_out
                }
            bwt = backward_transfer(result.matrix) if name in SEQUENTIAL_STRATEGIES else None
            strategies[name] = {
                "sites": means,
                "weighted_average": weighted_average(means, {s: sizes[s] for s in means}),
                "held_out": held,
                "bwt": None if bwt is None or bwt != bwt else float(bwt),
                "bayesian": name in ("vcl", "dwc", "dwc_finetuned"),
            }
            all_scores[name] = scores
        return {
            "training_sites": training,
            "held_out_sites": held_out,
            "test_sizes": {s: len(data.site(s).test) for s in data.site_names},
            "strategies": strategies,
            "comparisons": run_comparisons(all_scores, training, held_out),
            "per_volume_dice": all_scores,
            "seconds": seconds,
        }

    def _write(self, summary, results, runner: ContinualRunner, data) -> None:
        atomic_write_text(self.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        heatmaps = self.output_dir / "heatmaps"
        heatmaps.mkdir(exist_ok=True)
        for name, result in results.items():
            png = result.directory / "R.png"
            if not png.exists():
                result.matrix.plot(png, title=f"{name}: R matrix (mean Dice)")
            shutil.copyfile(png, heatmaps / f"{name}.png")
        model = results.get("dwc") or results.get("vcl")
        if model is not None:
            plot_predictions(runner, data, model, self.output_dir / "predictions.png")
        atomic_write_text(self.output_dir / "summary.md", self.markdown(summary))

    @staticmethod
    def table(summary: Mapping[str, Any]) -> str:
        """The plain-text table printed at the end of a run."""
        training, held = summary["training_sites"], summary["held_out_sites"]
        header = f"{'strategy':<24}" + "".join(f"{s[:10]:>11}" for s in training) + f"{'weighted':>10}" + "".join(f"{s[:10]:>11}" for s in held) + f"{'BWT':>8}"
        lines = [header, "-" * len(header)]
        for name, row in summary["strategies"].items():
            cells = "".join(f"{row['sites'].get(s, float('nan')):>11.3f}" for s in training)
            cells += f"{row['weighted_average']:>10.3f}" + "".join(f"{row['held_out'].get(s, float('nan')):>11.3f}" for s in held)
            cells += f"{row['bwt']:>+8.3f}" if row["bwt"] is not None else f"{'':>8}"
            lines.append(f"{name:<24}{cells}")
        return "\n".join(lines)

    @classmethod
    def markdown(cls, summary: Mapping[str, Any]) -> str:
        training, held = summary["training_sites"], summary["held_out_sites"]
        sizes = ", ".join(f"{s}: {summary['test_sizes'][s]}" for s in training)
        cols = training + ["weighted average"] + [f"{s} (held out)" for s in held] + ["BWT"]
        lines = [
            "# Multi-site segmentation: strategies compared",
            "",
            "Mean Dice over CSF, GM and WM per test volume, averaged per site; the weighted average weighs training sites by "
            f"test-set size ({sizes}). BWT: backward transfer "
            "(last visit of each site, GEM definition). Bayesian rows use Monte Carlo inference.",
            "",
            "| strategy | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for name, row in summary["strategies"].items():
            cells = [f"{row['sites'][s]:.3f}" if s in row["sites"] else "" for s in training]
            cells.append(f"{row['weighted_average']:.3f}")
            cells += [f"{row['held_out'][s]:.3f}" if s in row["held_out"] else "" for s in held]
            cells.append(f"{row['bwt']:+.3f}" if row["bwt"] is not None else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if summary["comparisons"]:
            lines += ["", "## The papers' comparisons on these runs", "",
                      "| claim | paper | A | B | volumes | mean A | mean B | holds? | t-test p | Wilcoxon p |", "|---" * 10 + "|"]
        for c in summary["comparisons"]:
            lines.append(
                f"| {c['claim']} | {c['paper']} | {c['a']} | {c['b']} | {c['volumes']} ({c['n']}) | {c['mean_a']:.3f} | "
                f"{c['mean_b']:.3f} | {'yes' if c['direction_holds'] else 'no'} | {c['t_pvalue']:.3g} | {c['wilcoxon_pvalue']:.3g} |"
            )
        lines += ["", f"Wall time: {summary['seconds'] / 60:.1f} min.", "",
                  "Heatmaps of every R matrix are in `heatmaps/`; `predictions.png` shows one subject per site with the "
                  "Bayesian model's prediction and uncertainty.", ""]
        return "\n".join(lines)
