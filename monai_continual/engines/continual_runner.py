"""The site-aware trainer: every multi-site strategy of the papers as MONAI training loops, resumable."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.losses import DiceCELoss
from torch import nn

from monai_continual.bayes import MCInferer, bayesianize
from monai_continual.bayes.laplace import conversion_std_init
from monai_continual.consolidation import save_weights
from monai_continual.data import MultiSiteDatalist, check_sites, load_multisite_datalist
from monai_continual.data.datalist import DatalistError
from monai_continual.engines.monai_executor import MonaiStageExecutor
from monai_continual.metrics import ContinualMatrix
from monai_continual.strategies import (
    Action,
    NetworkKind,
    ReplayOptions,
    RunState,
    Stage,
    Strategy,
    build_schedule,
    make_options,
    run_name,
    run_stages,
    strategy_of,
)

__all__ = ["ContinualRunner", "StrategyResult", "OPTIMIZER_STATE_POLICIES", "ELBO_EXAMPLES"]

OPTIMIZER_STATE_POLICIES = ("fresh", "site", "transfer")
#: what the ELBO's N counts: every labelled voxel (the likelihood is a product over voxels), or whole volumes
ELBO_EXAMPLES = ("voxels", "volumes")


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
    """

    name: str
    matrix: ContinualMatrix
    scores: dict[str, list[float]]
    directory: Path
    bayesian: bool = False
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    transfers: list[dict[str, Any]] = field(default_factory=list)


class ContinualRunner:
    """Runs the multi-site strategies of the papers on per-site data with MONAI's ``SupervisedTrainer``.

    Strategies and their options are those of :mod:`monai_continual.strategies` (:class:`Strategy`, one options
    dataclass each): ``single_site``, ``ensemble``, ``centrally_hosted``, ``single_weight_transfer``,
    ``cyclic_weight_transfer``, ``fine_tuning``, ``replay``, ``vcl``, ``dwc`` and ``federated_averaging``. The
    schedule comes from :func:`~monai_continual.strategies.build_schedule`, the engine
    :func:`~monai_continual.strategies.run_stages` walks it, and :class:`MonaiStageExecutor` runs each stage as one
    ``SupervisedTrainer`` at one site with this package's handlers.

    Weights cross sites only through a shared :class:`DirectoryWeightStore` (``<run>/store``) and posterior files,
    named by stage number; the optimizer's state stays at the site (``optimizer_state="fresh"``: a new optimizer at
    every visit, ``"site"``: each site keeps its own across visits, ``"transfer"``: it travels with the weights as a
    safetensors file, which leaks more than weights). After every evaluated stage the model is scored on every
    site's test set (held-out sites included), per volume, into the R matrix.

    The whole state of a run lives in ``output_dir/<strategy>`` (``ensemble`` is the last stage of the
    ``single_site`` run). Running the same strategy again continues where it stopped, whatever the point of
    interruption; every random draw is seeded from (seed, stage, epoch), so on a CPU the result equals that of an
    uninterrupted run. A run directory made with other settings is refused rather than mixed.

    Args:
        datalist: a :class:`MultiSiteDatalist` or the path of a multi-site datalist JSON.
        output_dir: where runs are written.
        network: the (deterministic) network every strategy starts from; Bayesian strategies convert it with
            :func:`bayesianize`.
        train_transform: MONAI transform of training items.
        eval_transform: MONAI transform of test items (no randomness).
        num_classes: classes, background included.
        loss: data loss; ``DiceCELoss(to_onehot_y=True, softmax=True)`` by default.
        optimizer: ``params -> Optimizer``; Adam with lr 1e-3 by default (McClure et al.).
        bayes_optimizer: optimizer of Bayesian stages (default: ``optimizer``). A posterior used as prior is tight
            (std ~1e-3), so a step much larger than its std makes the KL term explode: keep its lr near 1e-3.
        epochs: epochs per site stage (and for centrally hosted training).
        batch_size: mini-batch size.
        inferer: prediction inferer (e.g. ``SlidingWindowInferer``); Bayesian models wrap it in ``MCInferer``.
        mc_samples: Monte Carlo samples of Bayesian models at evaluation (McClure et al.: 10).
        std_init: initial posterior std of a Bayesian stage: ``"laplace"`` (default) computes it from the site's data
            and the stage's prior at the starting means, ``(N F + 1 / prior_std^2) ** -1/2`` with F the diagonal
            empirical Fisher of the voxels' cross-entropy
            (:func:`~monai_continual.bayes.laplace.calibrate_posterior_std`); a number sets every std to it
            (McClure et al.: 1e-3).
        prior_std: prior std of the first Bayesian stage, N(0, prior_std^2): ``"he"`` (default, per layer
            ``sqrt(2 / fan_in)``, see :func:`~monai_continual.bayes.bayesianize`) or a number (McClure et al.: 1).
        weight_norm: weight-normalize the Bayesian means.
        elbo_examples: what the ELBO's N counts (:data:`ELBO_EXAMPLES`): ``"voxels"`` (default; N = training volumes
            x voxels per volume as the loss sees them, the data term being a mean over voxels) or ``"volumes"``.
        optimizer_state: one of :data:`OPTIMIZER_STATE_POLICIES`.
        sites: training sites in their default order (default: the datalist's non-held-out sites).
        device: training device.
        seed: the seed of everything.
        progress: show progress bars.
        check_data: read every case once before any training (:func:`~monai_continual.data.check_sites`): label
            values outside ``num_classes``, image/label shape mismatches, NaN voxels and mixed channel counts are
            refused naming site and file.

    Example::

        >>> runner = ContinualRunner("sites/datalist.json", "runs", MeshNet(3, 1, 4, channels=16),
        ...                          train_transform, eval_transform, num_classes=4, epochs=4)
        >>> cwt = runner.run("cyclic_weight_transfer", cycles=4, epochs_per_visit=1)
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
        loss: Callable | None = None,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        bayes_optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        epochs: int = 2,
        batch_size: int = 2,
        inferer: Inferer | None = None,
        mc_samples: int = 10,
        std_init: float | str = "laplace",
        prior_std: float | str = "he",
        weight_norm: bool = False,
        elbo_examples: str = "voxels",
        optimizer_state: str = "fresh",
        sites: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
        check_data: bool = True,
    ) -> None:
        self.data = datalist if isinstance(datalist, MultiSiteDatalist) else load_multisite_datalist(datalist)
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"ContinualRunner: output_dir {str(self.output_dir)!r} exists and is not a directory.")
        if optimizer_state not in OPTIMIZER_STATE_POLICIES:
            raise ValueError(
                f"ContinualRunner: optimizer_state must be one of {OPTIMIZER_STATE_POLICIES}, got {optimizer_state!r}."
            )
        if isinstance(epochs, bool) or epochs < 1 or batch_size < 1:
            raise ValueError(f"ContinualRunner: epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
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
        if check_data:
            check_sites(self.data, self.eval_sites, int(num_classes))
        self.template = copy.deepcopy(network).cpu()
        self.init_state = {k: v.detach().clone() for k, v in self.template.state_dict().items()}
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.num_classes = int(num_classes)
        self.loss = loss if loss is not None else DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer_fn = optimizer if optimizer is not None else (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.bayes_optimizer_fn = bayes_optimizer if bayes_optimizer is not None else self.optimizer_fn
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.inferer = inferer or SimpleInferer()
        self.mc_samples = int(mc_samples)
        if not (
            std_init == "laplace"
            or (isinstance(std_init, (int, float)) and not isinstance(std_init, bool) and std_init > 0)
        ):
            raise ValueError(f"ContinualRunner: std_init must be 'laplace' or a positive number, got {std_init!r}.")
        if elbo_examples not in ELBO_EXAMPLES:
            raise ValueError(f"ContinualRunner: elbo_examples must be one of {ELBO_EXAMPLES}, got {elbo_examples!r}.")
        self.std_init = std_init
        self.elbo_examples = elbo_examples
        self.bayes_kwargs = {
            "std_init": conversion_std_init(std_init),
            "prior_std": prior_std,
            "weight_norm": weight_norm,
        }
        self.optimizer_state = optimizer_state
        self.device = torch.device(device)
        self.seed = int(seed)
        self.progress = progress
        self.replay_options = ReplayOptions()

    # ----------------------------------------------------------------------------------------------------------------
    # public

    def new_network(self, bayesian: bool = False) -> nn.Module:
        """A fresh copy of the network with the run's initial weights (Bayesian: converted with the run's settings)."""
        network = copy.deepcopy(self.template)
        network.load_state_dict(self.init_state)
        if bayesian:
            network = bayesianize(network, inplace=True, **self.bayes_kwargs)
        return network.to(self.device)

    def inferer_for(self, bayesian: bool) -> Inferer:
        """The evaluation inferer: Monte Carlo over ``mc_samples`` passes for Bayesian models."""
        return MCInferer(self.mc_samples, self.inferer) if bayesian else self.inferer

    def schedule(self, strategy: str | Strategy, **options: Any) -> list[Stage]:
        """The stages ``run(strategy, **options)`` would run
        (see :func:`~monai_continual.strategies.build_schedule`)."""
        return build_schedule(strategy, self.sites, make_options(strategy, **options), self.epochs, self.seed)

    def run(self, strategy: str | Strategy, directory: str | None = None, **options: Any) -> StrategyResult:
        """Run (or resume) ``strategy`` with its options (the fields of its options dataclass, e.g.
        :class:`~monai_continual.strategies.options.CyclicWeightTransferOptions`).

        ``directory`` names the run's folder under ``output_dir`` (default: the strategy's name; give one per
        variant, e.g. per site order, to keep several runs of one strategy).

        Raises:
            ValueError: an unknown strategy (the valid ones are listed) or an invalid option value.
            TypeError: an option the strategy does not have (its options are listed).
        """
        name = strategy_of(strategy)
        opts = make_options(name, **options)
        stages = build_schedule(name, self.sites, opts, self.epochs, self.seed)
        self.replay_options = opts if isinstance(opts, ReplayOptions) else ReplayOptions()
        run = run_name(name)
        if directory is not None and (not directory or Path(directory).name != directory or directory.startswith(".")):
            raise ValueError(f"ContinualRunner.run: directory must be a plain folder name, got {directory!r}.")
        run_dir = self.output_dir / (directory or run)
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.rglob(".*.tmp"):  # temporary files of a killed process: never complete, never read
            stale.unlink(missing_ok=True)
        state = RunState.open(run_dir, run, self._config(run, stages))
        executor = MonaiStageExecutor(self, run_dir, stages)
        run_stages(stages, executor, state, self.eval_sites, log=print if self.progress else None)
        return self._result(name, stages, state, executor)

    # ----------------------------------------------------------------------------------------------------------------

    def _config(self, run: str, stages: list[Stage]) -> dict[str, Any]:
        return {
            "strategy": run,
            "stages": [s.to_dict() for s in stages],
            "replay": self.replay_options.to_dict() if any(s.remember for s in stages) else None,
            "sites": self.sites,
            "eval_sites": self.eval_sites,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bayes": dict(self.bayes_kwargs, std_init=self.std_init, elbo_examples=self.elbo_examples),
            "optimizer_state": self.optimizer_state,
            "mc_samples": self.mc_samples,
            "network": {k: list(v.shape) for k, v in self.init_state.items()},
        }

    def _result(
        self, name: Strategy, stages: list[Stage], state: RunState, executor: MonaiStageExecutor
    ) -> StrategyResult:
        run_dir = state.directory
        matrix = state.matrix(stages, self.eval_sites)
        extra = state.results(stages)
        transfers = [
            {"stage": r.number, "site": "+".join(r.sites), "loaded": r.loaded, "published": r.published,
             "num_examples": r.num_examples, **{k: v for k, v in r.details.items() if k != "seconds"}}
            for r in state.stage_records() if r.number > 0
        ]
        evaluated = [s for s in stages if s.evaluate]
        last = evaluated[-1]
        final_path = run_dir / "final_model.safetensors"
        if name in (Strategy.SINGLE_SITE, Strategy.ENSEMBLE):
            site_stages = [s for s in stages if s.action == Action.TRAIN]
            if name == Strategy.ENSEMBLE:
                ensemble = ContinualMatrix(self.eval_sites)
                ensemble.add_stage(
                    list(last.sites), {s: row for s, row in zip(self.eval_sites, matrix.as_array()[-1])}, "ensemble"
                )
                return StrategyResult("ensemble", ensemble, state.scores(last.number), run_dir, False, {}, transfers)
            single = state.matrix(site_stages, self.eval_sites)
            scores = {s.sites[0]: state.scores(s.number)[s.sites[0]] for s in site_stages}
            extra = {k: v for k, v in extra.items() if k.startswith("single_site[")}
            single.save_json(run_dir / "R.json")
            single.plot(run_dir / "R.png", title="single-site models (row: model of that site)")
            return StrategyResult("single_site", single, scores, run_dir, False, extra, transfers)
        save_weights(final_path, executor.model(last.number), strategy=name.value, stage=last.number,
                     source_sha256=state.records[last.number].published)
        matrix.save_json(run_dir / "R.json")
        matrix.save_csv(run_dir / "R.csv")
        matrix.plot(run_dir / "R.png", title=f"{name.value}: R matrix (mean Dice)")
        bayesian = last.network == NetworkKind.BAYES
        return StrategyResult(name.value, matrix, state.scores(last.number), run_dir, bayesian, extra, transfers)

