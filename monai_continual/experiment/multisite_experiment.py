"""The main job: every strategy on the same multi-site data, summarized like McClure et al.'s Table 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.inferers import Inferer
from torch import nn

from monai_continual.data import load_multisite_datalist, make_sites
from monai_continual.engines import STRATEGIES, ContinualRunner, StrategyResult
from monai_continual.experiment.comparisons import run_comparisons
from monai_continual.experiment.figures import plot_predictions
from monai_continual.experiment.goals import check_goals, order_spread, training_budget
from monai_continual.experiment.tracking import TRACKERS, RunTracker
from monai_continual.metrics import backward_transfer, forward_transfer, weighted_average
from monai_continual.report import summary_markdown, summary_table
from monai_continual.strategies import SEQUENTIAL
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["MultiSiteExperiment", "SEQUENTIAL_STRATEGIES", "ROW_ORDER"]

#: Strategies whose R matrix is a sequence of sites, so that backward transfer applies.
SEQUENTIAL_STRATEGIES = tuple(s.value for s in SEQUENTIAL)
#: Summary rows in display order (``dwc`` yields ``dwc`` and ``dwc_finetuned``).
ROW_ORDER = (
    "single_site", "ensemble", "centrally_hosted", "single_weight_transfer", "cyclic_weight_transfer",
    "fine_tuning", "replay", "vcl", "dwc", "dwc_finetuned", "federated_averaging",
)
#: Strategies whose result depends on the site order: run in several orders.
ORDER_STRATEGIES = ("fine_tuning", "replay", "vcl", "cyclic_weight_transfer")
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
        orders: K, the site orders each order-dependent strategy (fine-tuning, replay, VCL, cyclic transfer) runs
            in: the datalist's order (its row in the table) and K - 1 seeded random permutations; the summary gives
            mean and standard deviation over them. 1: the datalist's order only. A strategy whose options fix an
            ``order`` runs once.
        size_orders: also run VCL with the sites in increasing and in decreasing training-set size (McClure et al.).
        tracking: ``"tensorboard"`` or ``"mlflow"`` to log every run as it finishes (:class:`RunTracker`: per-site
            Dice after every stage, training loss and the ELBO's data term and KL / N per epoch, weighted Dice, BWT,
            FWT against the single-site models, the R matrix); ``None``/``""``: no tracking.
        tracking_uri: MLflow tracking URI (default: the directory store ``<output_dir>/tracking/mlruns``).

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
        orders: int = 3,
        size_orders: bool = True,
        tracking: str | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"MultiSiteExperiment: output_dir {str(self.output_dir)!r} exists and is not a directory.")
        wanted = ["dwc" if s == "dwc_finetuned" else s for s in strategies]
        unknown = [s for s in wanted if s not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"MultiSiteExperiment: unknown strategies {unknown}; "
                f"choose from {list(STRATEGIES) + ['dwc_finetuned']}."
            )
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
        if isinstance(orders, bool) or int(orders) < 1:
            raise ValueError(f"MultiSiteExperiment: orders must be an integer >= 1, got {orders!r}.")
        self.orders = int(orders)
        self.size_orders = bool(size_orders)
        if tracking and tracking not in TRACKERS:
            raise ValueError(f"MultiSiteExperiment: tracking must be one of {TRACKERS} or empty, got {tracking!r}.")
        self.tracking = tracking or None
        self.tracking_uri = tracking_uri or None

    def run(self) -> dict[str, Any]:
        start = time.time()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        datalist = self.datalist or make_sites(
            self.dataset_dir, seed=self.dataset_seed, shape=self.dataset_shape, progress=self.progress
        )
        data = load_multisite_datalist(datalist)
        runner = ContinualRunner(
            data, self.output_dir / "runs", self.network, self.train_transform, self.eval_transform, self.num_classes,
            inferer=self.inferer, progress=self.progress, **self.runner_options,
        )
        plan = self._plan(runner, data)
        tracker = None if self.tracking is None else RunTracker(self.tracking, self.output_dir / "tracking",
                                                                tracking_uri=self.tracking_uri)
        results: dict[str, StrategyResult] = {}
        variants: dict[str, StrategyResult] = {}
        for number, (key, strategy, directory, options) in enumerate(plan, start=1):
            print(f"[{number}/{len(plan)}] {key} ({time.time() - start:.0f} s so far)", flush=True)
            result = runner.run(strategy, directory=directory, **options)
            if key == strategy:
                results[strategy] = result
            variants[key] = result
            if tracker is not None:
                self._track(tracker, key, result, results.get("single_site"), runner, data)
        summary = self._summarize(results, runner, data, time.time() - start)
        self._add_orders(summary, variants, runner, data)
        self._write(summary, results, runner, data)
        print(summary_table(summary))
        return summary

    # ----------------------------------------------------------------------------------------------------------------

    def _site_orders(self, sites: list[str]) -> list[list[str]]:
        """The datalist's order and ``orders - 1`` seeded random permutations, distinct while there are enough."""
        rng = np.random.default_rng(self.dataset_seed + 7)
        found = [list(sites)]
        for _ in range(100 * self.orders):
            if len(found) >= self.orders:
                break
            candidate = [sites[i] for i in rng.permutation(len(sites))]
            if candidate not in found or len(found) >= math.factorial(len(sites)):
                found.append(candidate)
        return found

    def _plan(self, runner: ContinualRunner, data) -> list[tuple[str, str, str | None, dict[str, Any]]]:
        """(key, strategy, run directory, options) of every run, the table's rows first for each strategy."""
        plan = []
        orders = self._site_orders(runner.sites)
        for strategy in self.strategies:
            options = self.strategy_options.get(strategy, {})
            plan.append((strategy, strategy, None, options))
            if strategy not in ORDER_STRATEGIES or "order" in options:
                continue
            runs = {tuple(orders[0]): (None, options)}  # order -> (directory, options) of the run that has it
            for k, order in enumerate(orders[1:], start=2):
                runs.setdefault(tuple(order), (f"{strategy}@order{k}", dict(options, order=order)))
                plan.append((f"{strategy}@order{k}", strategy, *runs[tuple(order)]))
            if strategy == "vcl" and self.size_orders:
                sizes = {s: len(data.site(s).training) for s in runner.sites}
                for name, reverse in (("increasing", False), ("decreasing", True)):
                    order = sorted(runner.sites, key=lambda s: (sizes[s], s), reverse=reverse)
                    runs.setdefault(tuple(order), (f"vcl@{name}", dict(options, order=order)))
                    plan.append((f"vcl@{name}", strategy, *runs[tuple(order)]))  # an order already run is reused
        return plan

    def _add_orders(self, summary: dict[str, Any], variants: Mapping[str, StrategyResult], runner: ContinualRunner,
                    data) -> None:
        training = runner.sites
        sizes = {s: len(data.site(s).test) for s in training}

        def describe(result: StrategyResult) -> dict[str, Any]:
            order = [t["site"] for t in result.transfers if t.get("site") in training]
            return {"order": list(dict.fromkeys(order)), "weighted": _weighted_dice(result, sizes),
                    "bwt": float(backward_transfer(result.matrix)), "scores": result.scores}

        spreads = {}
        for strategy in ORDER_STRATEGIES:
            runs = [describe(r) for k, r in variants.items() if k == strategy or k.startswith(f"{strategy}@order")]
            if len(runs) > 1:
                spreads[strategy] = order_spread(runs)
        sized = {
            name: describe(variants[f"vcl@{name}"])
            for name in ("increasing", "decreasing")
            if f"vcl@{name}" in variants
        }
        summary["orders"] = spreads
        summary["vcl_size_orders"] = {k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in sized.items()}
        scores = dict(summary["per_volume_dice"])
        single = variants.get("single_site")
        if single is not None:
            members = [v for k, v in single.extra.items() if k.startswith("single_site[")]
            scores["single_site_mean"] = {s: list(np.mean([m[s] for m in members], axis=0)) for s in training}
        summary["goals"] = check_goals(scores, training, spreads, sized)
        summary["budget"] = {
            key: training_budget(json.loads((result.directory / "state.json").read_text())["stages"], len(training))
            for key, result in variants.items() if key in summary["strategies"] or key in ("single_site", "dwc")
        }

    def _track(self, tracker: RunTracker, key: str, result: StrategyResult, single: StrategyResult | None,
               runner: ContinualRunner, data) -> None:
        training = runner.sites
        numbers: dict[str, float | None] = {
            "weighted_dice": _weighted_dice(result, {s: len(data.site(s).test) for s in training})
        }
        if result.name in SEQUENTIAL_STRATEGIES:
            numbers["bwt"] = float(backward_transfer(result.matrix))
            if single is not None:  # b_i: site i's own single-site model
                numbers["fwt"] = float(
                    forward_transfer(result.matrix, {s: float(np.mean(single.scores[s])) for s in training})
                )
        records = json.loads((result.directory / "state.json").read_text())["stages"]
        tracker.log_run(key, [r for r in records if r["number"] > 0], result.matrix, numbers)

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
        atomic_write_text(self.output_dir / "summary.md", summary_markdown(summary))

    @staticmethod
    def table(summary: Mapping[str, Any]) -> str:
        """The plain-text table printed at the end of a run: :func:`monai_continual.report.summary_table`."""
        return summary_table(summary)

    @staticmethod
    def markdown(summary: Mapping[str, Any]) -> str:
        """The text of ``summary.md``: :func:`monai_continual.report.summary_markdown`."""
        return summary_markdown(summary)


def _weighted_dice(result: StrategyResult, test_sizes: Mapping[str, int]) -> float:
    """The test-size-weighted mean Dice of a run's final model over the given training sites it was scored on."""
    means = {s: float(np.mean(result.scores[s])) for s in test_sizes if s in result.scores}
    return weighted_average(means, {s: test_sizes[s] for s in means})
