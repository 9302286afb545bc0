"""The site-aware trainer: every multi-site strategy of the papers as MONAI training loops, resumable."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from monai_continual.bayes import BayesConfig
from monai_continual.consolidation import save_weights
from monai_continual.data import MultiSiteDatalist, check_sites, load_multisite_datalist
from monai_continual.data.datalist import DatalistError
from monai_continual.data.scan_transforms import resamples
from monai_continual.data.site_geometry import SiteGeometry, geometry_warning, site_geometry
from monai_continual.engines.monai_executor import MonaiStageExecutor
from monai_continual.engines.settings import MonaiSettings, OptimizerState
from monai_continual.losses import ElboExamples
from monai_continual.metrics import ContinualMatrix
from monai_continual.strategies import (
    Action,
    NetworkKind,
    ReplayOptions,
    RunState,
    Stage,
    StageRecord,
    Strategy,
    build_schedule,
    make_options,
    run_name,
    run_stages,
    strategy_of,
)
from monai_continual.strategies.layout import RunLayout
from monai_continual.utils.distributed import check_process_group, is_distributed, is_main_rank, on_main_rank

__all__ = ["ContinualRunner", "StrategyResult", "OPTIMIZER_STATE_POLICIES", "ELBO_EXAMPLES"]
logger = logging.getLogger(__name__)

#: the optimizer-state policies (:class:`~monai_continual.engines.settings.OptimizerState`)
OPTIMIZER_STATE_POLICIES = tuple(p.value for p in OptimizerState)
#: what the ELBO's N counts (:class:`~monai_continual.losses.ElboExamples`)
ELBO_EXAMPLES = tuple(e.value for e in ElboExamples)


@dataclass
class StrategyResult:
    """What a strategy produced.

    Attributes:
        name: the strategy.
        matrix: R matrix, one row per evaluated stage (for ``single_site``: one row per site model).
        scores: site -> per-volume Dice of the strategy's final model (for ``single_site``: each site's own model).
        directory: where everything of the run lives.
        bayesian: whether the final model is Bayesian (evaluated with Monte Carlo inference).
        extra: further named results (site -> per-volume Dice), e.g. ``"dwc"`` (before fine-tuning) or
            ``"single_site[site_a]"`` (one single-site model on every site).
        transfers: per stage, the SHA-256 of the weights it started from and of those it published.
        calibration: summary row (the strategy, or a named result of ``extra``) -> site -> per-volume calibration
            and uncertainty records of that row's model
            (:func:`~monai_continual.metrics.calibration.volume_calibration`); ``single_site``: each training site
            scored by its own model.
    """

    name: str
    matrix: ContinualMatrix
    scores: dict[str, list[float]]
    directory: Path
    bayesian: bool = False
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)


class ContinualRunner:
    """Runs the multi-site strategies of the papers on per-site data with MONAI's ``SupervisedTrainer``.

    Strategies and their options are those of :mod:`monai_continual.strategies` (:class:`Strategy`, one options
    dataclass each): ``single_site``, ``ensemble``, ``centrally_hosted``, ``single_weight_transfer``,
    ``cyclic_weight_transfer``, ``fine_tuning``, ``replay``, ``ewc``, ``vcl``, ``dwc`` and ``federated_averaging``. The
    schedule comes from :func:`~monai_continual.strategies.build_schedule`, the engine
    :func:`~monai_continual.strategies.run_stages` walks it, and :class:`MonaiStageExecutor` runs each stage as one
    ``SupervisedTrainer`` at one site with this package's handlers.

    Weights cross sites only through a shared :class:`DirectoryWeightStore` (``<run>/store``) and posterior files,
    named by stage number; the optimizer's state stays at the site (``optimizer_state="site"``, the default: each site
    keeps its own across visits, ``"fresh"``: a new optimizer at every visit, ``"transfer"``: it travels with the
    weights as a safetensors file, which leaks more than weights). After every evaluated stage the model is scored on
    every site's test set (held-out sites included), per volume, into the R matrix.

    The whole state of a run lives in ``output_dir/<strategy>`` (``ensemble`` is the last stage of the
    ``single_site`` run). Running the same strategy again continues where it stopped, whatever the point of
    interruption; every random draw is seeded from (seed, stage, epoch), so on a CPU the result equals that of an
    uninterrupted run. A run directory made with other settings is refused rather than mixed.

    Several GPUs of one site: start the same program once per GPU with ``torchrun`` and initialize the process group
    (:func:`~monai_continual.utils.distributed.init_distributed`) before :meth:`run`. Every stage then trains with
    DistributedDataParallel (``batch_size`` per process; see :class:`MonaiStageExecutor`); rank 0 alone writes the run
    directory, evaluates and reports, and :meth:`run` returns its result in every process. A bare ``device="cuda"``
    is each process's own GPU.

    Args:
        datalist: a :class:`MultiSiteDatalist` or the path of a multi-site datalist JSON.
        output_dir: where runs are written.
        network, train_transform, eval_transform, num_classes, settings: the run's settings (``loss``, ``optimizer``,
            ``bayes_optimizer``, ``epochs``, ``batch_size``, ``inferer``, ``mc_samples``, ``elbo_examples``,
            ``optimizer_state``, ``device``, ``seed``, ``progress``, or a whole ``bayes``; for real scans
            ``patch_size``, ``samples_per_volume``, ``sw_roi_size``, ``sw_batch_size``, ``sw_overlap``, ``amp``,
            ``num_workers``, ``cache``): :class:`~monai_continual.engines.settings.MonaiSettings` (defaults and
            meaning there).
        std_init, prior_std, weight_norm: its :class:`~monai_continual.bayes.BayesConfig` (the others take
            :meth:`~monai_continual.bayes.BayesConfig.calibrated`'s values). ``std_init="laplace"`` (default) computes a
            Bayesian stage's initial std from the site's data and the stage's prior at the starting means, ``(N F + 1 /
            prior_std^2) ** -1/2`` with F the diagonal empirical Fisher
            (:func:`~monai_continual.bayes.laplace.calibrate_posterior_std`); a number sets every std to it (McClure et
            al.: 1e-3). With a fixed 1e-3 a posterior used as the next prior is that tight, and a Bayesian step much
            larger than it makes the KL term explode (keep ``bayes_optimizer``'s lr near 1e-3 then); with the
            calibrated stds (~0.02-0.08) the deterministic lr suits the Bayesian stages too.
        sites: training sites in their default order (default: the datalist's non-held-out sites).
        check_data: read every case once before any training (:func:`~monai_continual.data.check_sites`): label
            values outside ``num_classes``, image/label shape mismatches, NaN voxels and mixed channel counts are
            refused naming site and file, and so are image/label affines that disagree (a multi-modality image, a
            list of files, has one channel per file).

    Example::

        >>> runner = ContinualRunner("sites/datalist.json", "runs", MeshNet(3, 1, 4, channels=16),
        ...                          train_transform, eval_transform, num_classes=4, epochs=4)
        >>> cwt = runner.run("cyclic_weight_transfer", cycles=4, epochs_per_visit=3)
        >>> cwt.matrix.plot("cwt.png"); backward_transfer(cwt.matrix)
    """

    def __init__(
        self,
        datalist: MultiSiteDatalist | str | os.PathLike,
        output_dir: str | os.PathLike,
        network: nn.Module,
        train_transform: Callable,
        eval_transform: Callable,
        num_classes: int,
        *,
        sites: Sequence[str] | None = None,
        check_data: bool = True,
        std_init: float | str | None = None,
        prior_std: float | str | None = None,
        weight_norm: bool | None = None,
        **settings: Any,
    ) -> None:
        self.data = datalist if isinstance(datalist, MultiSiteDatalist) else load_multisite_datalist(datalist)
        check_process_group("ContinualRunner")
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"ContinualRunner: output_dir {str(self.output_dir)!r} exists and is not a directory.")
        self.sites = list(sites) if sites is not None else self.data.training_sites()
        for site in self.sites:
            if self.data.site(site).held_out:
                raise DatalistError(f"site {site!r} is held out and cannot be trained on.")
            if not self.data.site(site).training:
                raise DatalistError(f"site {site!r} has no training cases.")
        self.eval_sites = self.data.site_names
        missing_test = [s for s in self.eval_sites if not self.data.site(s).test]
        if missing_test:
            raise DatalistError(
                f"site(s) {missing_test} of {self.data.source or 'the datalist'} have no test cases; "
                "every site needs a test set."
            )
        unknown = sorted(set(settings) - set(MonaiSettings.option_names()))
        if unknown:
            raise TypeError(f"ContinualRunner: unknown setting(s) {unknown}; settings are "
                            f"{sorted(MonaiSettings.option_names())}.")
        shorthand = {k: v for k, v in (("std_init", std_init), ("prior_std", prior_std), ("weight_norm", weight_norm))
                     if v is not None}
        if "bayes" in settings and shorthand:
            raise TypeError(f"ContinualRunner: give either bayes or {sorted(shorthand)}, not both.")
        settings.setdefault("bayes", BayesConfig.calibrated(**shorthand))
        self.settings = MonaiSettings(network, train_transform, eval_transform, num_classes, **settings)
        #: per site: voxel sizes and orientations of its images (read when ``check_data``)
        self.geometry: list[SiteGeometry] = []
        if check_data:
            check_sites(self.data, self.eval_sites, self.settings.num_classes, in_channels=self.settings.in_channels)
            self.geometry = site_geometry(self.data, self.eval_sites)
            warning = geometry_warning(self.geometry, resamples(self.settings.eval_transform))
            if warning:
                logger.warning("%s", warning)
        self.replay_options = ReplayOptions()

    # ----------------------------------------------------------------------------------------------------------------
    # public

    def new_network(self, bayesian: bool = False) -> nn.Module:
        """A fresh copy of the network with the run's initial weights (Bayesian: converted with the run's settings)."""
        return self.settings.new_network(bayesian)

    def inferer_for(self, bayesian: bool) -> Inferer:
        """The evaluation inferer: Monte Carlo over ``mc_samples`` passes for Bayesian models."""
        return self.settings.inferer_for(bayesian)

    def executor(self, run_dir: str | os.PathLike, stages: Sequence[Stage]) -> MonaiStageExecutor:
        """The executor of ``stages`` in ``run_dir`` with this runner's settings and data."""
        return MonaiStageExecutor(self.settings, self.data, Path(run_dir), stages, replay=self.replay_options)

    def schedule(self, strategy: str | Strategy, **options: Any) -> list[Stage]:
        """The stages ``run(strategy, **options)`` would run
        (see :func:`~monai_continual.strategies.build_schedule`)."""
        opts = make_options(strategy, **options)
        return build_schedule(strategy, self.sites, opts, self.settings.epochs, self.settings.seed)

    def run(self, strategy: str | Strategy, directory: str | None = None, *,
            on_stage: Callable[[RunState, StageRecord], None] | None = None, **options: Any) -> StrategyResult:
        """Run (or resume) ``strategy`` with its options (the fields of its options dataclass, e.g.
        :class:`~monai_continual.strategies.options.CyclicWeightTransferOptions`).

        ``directory`` names the run's folder under ``output_dir`` (default: the strategy's name; give one per
        variant, e.g. per site order, to keep several runs of one strategy). ``on_stage(state, record)`` is called
        after every stage is saved (e.g. :meth:`~monai_continual.experiment.RunTracker.stage_logger`; under
        ``torchrun`` in rank 0 only).

        Raises:
            ValueError: an unknown strategy (the valid ones are listed) or an invalid option value.
            TypeError: an option the strategy does not have (its options are listed).
        """
        name = strategy_of(strategy)
        opts = make_options(name, **options)
        stages = build_schedule(name, self.sites, opts, self.settings.epochs, self.settings.seed)
        self.replay_options = opts if isinstance(opts, ReplayOptions) else ReplayOptions()
        run = run_name(name)
        if directory is not None and (not directory or Path(directory).name != directory or directory.startswith(".")):
            raise ValueError(f"ContinualRunner.run: directory must be a plain folder name, got {directory!r}.")
        run_dir = self.output_dir / (directory or run)
        on_main_rank(lambda: _prepare(run_dir))
        main = is_main_rank()
        if is_distributed() and self.settings.device.type == "cuda":
            if self.settings.device.index is None:  # settings made before the process group: every process on one GPU
                raise RuntimeError("ContinualRunner: several processes but device 'cuda' names no GPU; initialize the "
                                   "process group before building the runner, or give cuda:<LOCAL_RANK>.")
            torch.cuda.set_device(self.settings.device)
        # every process reads the state (and so refuses a run of other settings); rank 0 alone saves it
        state = (RunState if main else _UnsavedRunState).open(run_dir, run, self._config(run, stages))
        executor = self.executor(run_dir, stages)
        run_stages(stages, executor, state, self.eval_sites, log=print if self.settings.progress and main else None,
                   on_stage=on_stage if main else None)
        return on_main_rank(lambda: self._result(name, stages, state, executor))

    # ----------------------------------------------------------------------------------------------------------------

    def _config(self, run: str, stages: list[Stage]) -> dict[str, Any]:
        return {
            "strategy": run,
            "stages": [s.to_dict() for s in stages],
            "replay": self.replay_options.to_dict() if any(s.remember for s in stages) else None,
            "sites": self.sites,
            "eval_sites": self.eval_sites,
            **self.settings.identity(),
        }

    def _result(
        self, name: Strategy, stages: list[Stage], state: RunState, executor: MonaiStageExecutor
    ) -> StrategyResult:
        run_dir = state.directory
        transfers = [
            {"stage": r.number, "site": "+".join(r.sites), "loaded": r.loaded, "published": r.published,
             "num_examples": r.num_examples, **{k: v for k, v in r.details.items() if k != "seconds"}}
            for r in state.stage_records() if r.number > 0
        ]
        last = [s for s in stages if s.evaluate][-1]
        if name == Strategy.ENSEMBLE:
            ensemble = ContinualMatrix(self.eval_sites)
            row = state.matrix([last], self.eval_sites).as_array()[-1]
            ensemble.add_stage(list(last.sites), dict(zip(self.eval_sites, row)), Strategy.ENSEMBLE.value)
            return StrategyResult(name.value, ensemble, state.scores(last.number), run_dir, False, {}, transfers,
                                  {name.value: executor.calibration(last.number, self.eval_sites)})
        if name == Strategy.SINGLE_SITE:
            site_stages = [s for s in stages if s.action == Action.TRAIN]
            single = executor.save_results(state, site_stages, self.eval_sites,
                                           "single-site models (row: model of that site)")
            scores = {s.sites[0]: state.scores(s.number)[s.sites[0]] for s in site_stages}
            extra = {k: v for k, v in state.results(stages).items() if k.startswith(f"{Strategy.SINGLE_SITE.value}[")}
            own = {s.sites[0]: executor.calibration(s.number, s.sites).get(s.sites[0]) for s in site_stages}
            calibration = {name.value: {site: records for site, records in own.items() if records is not None}}
            return StrategyResult(name.value, single, scores, run_dir, False, extra, transfers, calibration)
        save_weights(executor.layout.final_model, executor.model(last.number), strategy=name.value, stage=last.number,
                     source_sha256=state.records[last.number].published)
        matrix = executor.save_results(state, stages, self.eval_sites, f"{name.value}: R matrix (mean Dice)")
        bayesian = last.network == NetworkKind.BAYES
        calibration = {name.value: executor.calibration(last.number, self.eval_sites)}
        # a named result is that stage's model (``dwc``: before fine-tuning), not the final one
        calibration.update({s.result: executor.calibration(s.number, self.eval_sites) for s in stages if s.result})
        return StrategyResult(name.value, matrix, state.scores(last.number), run_dir, bayesian,
                              state.results(stages), transfers, calibration)


def _prepare(run_dir: Path) -> None:
    """The run directory and its weight store made (before any other process opens them), stale files removed."""
    RunLayout(run_dir).store.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.rglob(".*.tmp"):  # temporary files of a killed process: never complete, never read
        stale.unlink(missing_ok=True)


class _UnsavedRunState(RunState):
    """The run's state in a process other than rank 0: kept in memory (the records, and so the result, are rank
    0's: every stage's output and scores come from it), saved by rank 0 alone."""

    def save(self) -> None:
        pass
