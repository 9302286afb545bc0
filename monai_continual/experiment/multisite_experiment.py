"""The main job: every strategy on the same multi-site data, summarized like McClure et al.'s Table 2."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.inferers import Inferer
from monai.utils import look_up_option
from torch import nn

from monai_continual.data import load_multisite_datalist, make_sites
from monai_continual.engines import ContinualRunner
from monai_continual.experiment.plan import PlanSettings, plan_runs
from monai_continual.experiment.run_plan import run_plan
from monai_continual.experiment.tracking import RunTracker, tracking_of
from monai_continual.recommended import RECOMMENDED
from monai_continual.report import (
    RELIABILITY_FIGURE,
    FinishedRun,
    RunVariant,
    copy_heatmap,
    main_summary,
    plot_predictions,
    plot_reliability,
    summary_markdown,
    summary_table,
    write_summary,
)
from monai_continual.strategies import strategy_of
from monai_continual.strategies.layout import RunLayout
from monai_continual.strategies.names import DWC_FINETUNED, FEDPROX, Strategy
from monai_continual.utils.distributed import check_process_group, is_main_rank, on_main_rank
from monai_continual.utils.flags import as_flag

__all__ = ["MultiSiteExperiment"]


def _strategies(names: Sequence[str]) -> tuple[Strategy, ...]:
    """The strategies to run (``dwc_finetuned``: a row of the ``dwc`` run; ``fedprox``, a run of its own, is not
    among them); unknown names are listed in the error."""
    names = [n for n in names if n != FEDPROX]
    found = [Strategy.DWC if n == DWC_FINETUNED else look_up_option(n, Strategy, default=None) for n in names]
    unknown = [n for n, s in zip(names, found) if s is None]
    if unknown:
        valid = [str(s) for s in Strategy] + [DWC_FINETUNED, FEDPROX]
        raise ValueError(f"MultiSiteExperiment: unknown strategies {unknown}; choose from {valid}.")
    return tuple(found)


class MultiSiteExperiment:
    """Run the strategies, then write ``summary.md``, ``summary.json``, R-matrix heatmaps, a prediction figure and a
    reliability diagram.

    Planning is :func:`~monai_continual.experiment.plan.plan_runs`, running
    :func:`~monai_continual.experiment.run_plan.run_plan`, and the summary and its files are
    :mod:`monai_continual.report`'s.

    Under ``torchrun`` (process group initialized first, e.g.
    :func:`~monai_continual.utils.distributed.init_distributed`) every run's stages train on all processes
    (:class:`ContinualRunner`); rank 0 alone generates the embedded sites, tracks, writes the summary and prints, and
    :meth:`run` returns its summary in every process.

    Args:
        output_dir: where everything goes (each strategy's run, resumable, under ``runs/``).
        network: the deterministic network all strategies start from.
        train_transform, eval_transform: MONAI transforms of items to ``image``/``label`` tensors.
        num_classes: classes, background included.
        datalist: a multi-site datalist JSON; ``None`` or ``""`` uses the embedded sites in ``dataset_dir``.
        dataset_dir: where the embedded sites are generated on first use.
        dataset_shape: voxel grid of the embedded sites.
        dataset_seed: seeds the embedded sites and the random site orders.
        strategies: strategy names to run (``dwc`` gives the ``dwc`` and ``dwc_finetuned`` rows); ``fedprox`` adds a
            run of federated averaging with FedProx's proximal term, its options ``strategy_options["fedprox"]``
            (``proximal_mu`` > 0) over ``federated_averaging``'s.
        strategy_options: per-strategy options for :meth:`ContinualRunner.run`; a strategy left out takes the
            recommended ones (:meth:`~monai_continual.recommended.Recommended.strategy_options` for the run's
            ``epochs``), a strategy named takes exactly the options given.
        runner_options: further :class:`ContinualRunner` arguments (epochs, batch_size, optimizer, mc_samples...).
        inferer: prediction inferer (sliding window for large volumes).
        progress: print progress.
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
        dataset_shape: Sequence[int] = RECOMMENDED.dataset_shape,
        dataset_seed: int = 0,
        strategies: Sequence[str] = tuple(Strategy),
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
        if isinstance(orders, bool) or int(orders) < 1:
            raise ValueError(f"MultiSiteExperiment: orders must be an integer >= 1, got {orders!r}.")
        epochs = int(dict(runner_options or {}).get("epochs", RECOMMENDED.epochs))
        # per strategy: options given for one strategy must not send the others to their classes' bare defaults
        strategy_options = {**RECOMMENDED.strategy_options(epochs), **dict(strategy_options or {})}
        fedprox = dict(strategy_options.pop(FEDPROX, None) or {"proximal_mu": RECOMMENDED.proximal_mu})
        self.plan_settings = PlanSettings(
            strategies=_strategies(strategies),
            strategy_options={strategy_of(k): dict(v) for k, v in strategy_options.items()},
            orders=int(orders),
            size_orders=as_flag(size_orders, "size_orders"),
            seed=int(dataset_seed) + 7,
            fedprox=fedprox if FEDPROX in strategies else None,
        )
        self.network = network
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.num_classes = int(num_classes)
        self.datalist = str(datalist) if datalist else None
        self.dataset_dir = Path(dataset_dir)
        self.dataset_shape = tuple(int(s) for s in dataset_shape)
        self.dataset_seed = int(dataset_seed)
        self.runner_options = dict(runner_options or {})
        self.inferer = inferer
        self.progress = progress
        self.tracking = tracking_of(tracking, "MultiSiteExperiment")
        self.tracking_uri = tracking_uri or None

    @property
    def strategies(self) -> list[Strategy]:
        """The strategies that run, in :class:`Strategy` order."""
        return [s for s in Strategy if s in self.plan_settings.strategies]

    def run(self) -> dict[str, Any]:
        """Plan, run (or resume) every run, write the summary and its figures, print the table.

        Returns:
            The summary (the content of ``summary.json``).
        """
        start = time.time()
        check_process_group("MultiSiteExperiment")  # before any process writes the sites

        def prepare() -> str | os.PathLike:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            return self.datalist or make_sites(
                self.dataset_dir, seed=self.dataset_seed, shape=self.dataset_shape, progress=self.progress
            )

        data = load_multisite_datalist(on_main_rank(prepare))
        runner = ContinualRunner(
            data, self.output_dir / "runs", self.network, self.train_transform, self.eval_transform, self.num_classes,
            inferer=self.inferer, progress=self.progress, **self.runner_options,
        )
        training = runner.sites
        plan = plan_runs(self.plan_settings, training, {s: len(data.site(s).training) for s in training},
                         schedule_seed=runner.settings.seed)
        tracker = None if self.tracking is None or not is_main_rank() else RunTracker(
            self.tracking, self.output_dir / "tracking", tracking_uri=self.tracking_uri)
        runs = run_plan(runner, plan, tracker=tracker, test_sizes={s: len(data.site(s).test) for s in training},
                        start=start)

        def report() -> dict[str, Any]:
            summary = main_summary(runs, training_sites=training, held_out_sites=data.held_out_sites(),
                                   test_sizes={s: len(data.site(s).test) for s in data.site_names},
                                   seconds=time.time() - start)
            write_summary(self.output_dir, summary, lambda: self._figures(runs, runner, data, summary))
            print(summary_table(summary))
            return summary

        return on_main_rank(report)

    def _figures(self, runs: Sequence[FinishedRun], runner: ContinualRunner, data: Any,
                 summary: Mapping[str, Any]) -> None:
        """Every strategy's R matrix under ``heatmaps/``, the Bayesian model's predictions (DWC's, else VCL's) and
        the reliability diagram of every strategy."""
        main = {run.strategy: run.result for run in runs if run.variant == RunVariant.MAIN}
        rows = {**{str(s): r for s, r in main.items()},
                **{run.key: run.result for run in runs if run.variant == RunVariant.FEDPROX}}
        for name, result in rows.items():
            png = RunLayout(result.directory).matrix_file(".png")
            if not png.exists():
                result.matrix.plot(png, title=f"{name}: R matrix (mean Dice)")
            copy_heatmap(png, self.output_dir, name)
        model = main.get(Strategy.DWC) or main.get(Strategy.VCL)
        if model is not None:
            plot_predictions(runner, data, model, self.output_dir / "predictions.png")
        plot_reliability(summary, self.output_dir / RELIABILITY_FIGURE)

    @staticmethod
    def table(summary: Mapping[str, Any]) -> str:
        """The plain-text table printed at the end of a run: :func:`monai_continual.report.summary_table`."""
        return summary_table(summary)

    @staticmethod
    def markdown(summary: Mapping[str, Any]) -> str:
        """The text of ``summary.md``: :func:`monai_continual.report.summary_markdown`."""
        return summary_markdown(summary)
