"""The site-aware trainer: every multi-site strategy of the papers as MONAI training loops, resumable."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.inferers import Inferer, SimpleInferer
from monai.losses import DiceCELoss
from torch import nn

from monai_continual.bayes import MCInferer, bayesian_layers, bayesianize, posterior_to_prior
from monai_continual.consolidation import DirectoryWeightStore, EnsembleModel, Posterior, consolidate_dwc, load_weights, save_weights
from monai_continual.data import MultiSiteDatalist, ReplayBuffer, ReplayDataset, load_multisite_datalist
from monai_continual.data.datalist import DatalistError
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.engines.schedules import STRATEGIES, Stage, cyclic_schedule, dwc_schedule, sequential_schedule, site_order
from monai_continual.engines.stage_handlers import EpochCheckpoint, EpochSeeder, PlateauStopper, ProgressBar, seed_everything
from monai_continual.handlers import ReplayBufferHandler, WeightTransferHandler
from monai_continual.losses import ELBOLoss
from monai_continual.metrics import ContinualMatrix, evaluate_sites
from monai_continual.utils.atomic import atomic_write, atomic_write_text

__all__ = ["ContinualRunner", "StrategyResult", "OPTIMIZER_STATE_POLICIES"]

OPTIMIZER_STATE_POLICIES = ("fresh", "site", "transfer")


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

    Strategies (:data:`~monai_continual.engines.schedules.STRATEGIES`): ``single_site`` (one model per site),
    ``ensemble`` (of the single-site models), ``centrally_hosted`` (pooled data), ``single_weight_transfer`` (each
    site once, to a validation plateau or ``epochs``), ``cyclic_weight_transfer`` (every site ``cycles`` times,
    moving every ``epochs_per_visit`` epochs or ``iterations_per_visit`` iterations; order fixed, random or given;
    sites may be skipped), ``fine_tuning``, ``replay`` (fine-tuning plus a :class:`ReplayBuffer`), ``vcl`` (Bayesian;
    each site's posterior is the next site's prior) and ``dwc`` (distributed weight consolidation, McClure et al.).

    Each stage is one ``SupervisedTrainer`` run at one site. Weights cross sites only through a shared
    :class:`DirectoryWeightStore` (``<run>/store``), via :class:`WeightTransferHandler`; the optimizer's state stays
    at the site (``optimizer_state="fresh"``: a new optimizer at every visit, ``"site"``: each site keeps its own
    across visits, ``"transfer"``: it travels with the weights, which leaks more than weights). After every stage
    the model is scored on every site's test set (held-out sites included) into a :class:`ContinualMatrix`.

    The whole state of a run lives in ``output_dir/<strategy>``: finished stages, per-epoch checkpoints (network,
    optimizer, plateau state), the store, the replay buffer, the R matrix. Running the same strategy again continues
    where it stopped; every random draw is seeded from (seed, stage, epoch), so on a CPU the result equals that of
    an uninterrupted run. A run directory made with other settings is refused rather than mixed.

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
        std_init, prior_std, weight_norm: Bayesian conversion settings.
        optimizer_state: one of :data:`OPTIMIZER_STATE_POLICIES`.
        sites: training sites in their default order (default: the datalist's non-held-out sites).
        device: training device.
        seed: the seed of everything.
        progress: show progress bars.

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
        std_init: float = 1e-3,
        prior_std: float = 1.0,
        weight_norm: bool = False,
        optimizer_state: str = "fresh",
        sites: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.data = datalist if isinstance(datalist, MultiSiteDatalist) else load_multisite_datalist(datalist)
        self.output_dir = Path(output_dir)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ValueError(f"ContinualRunner: output_dir {str(self.output_dir)!r} exists and is not a directory.")
        if optimizer_state not in OPTIMIZER_STATE_POLICIES:
            raise ValueError(f"ContinualRunner: optimizer_state must be one of {OPTIMIZER_STATE_POLICIES}, got {optimizer_state!r}.")
        if epochs < 1 or batch_size < 1:
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
            raise DatalistError(f"site(s) {missing_test} of {self.data.source or 'the datalist'} have no test cases; every site needs a test set.")
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
        self.bayes_kwargs = {"std_init": std_init, "prior_std": prior_std, "weight_norm": weight_norm}
        self.optimizer_state = optimizer_state
        self.device = torch.device(device)
        self.seed = int(seed)
        self.progress = progress

    # ----------------------------------------------------------------------------------------------------------------
    # public

    def run(self, strategy: str, **options: Any) -> StrategyResult:
        """Run (or resume) ``strategy``; see the class docstring for the strategies and their options.

        Options: ``order`` (``"fixed"``, ``"random"`` or a list), ``skip`` (sites left out), ``epochs`` (overrides
        the runner's), ``patience`` (single weight transfer), ``cycles``, ``epochs_per_visit``,
        ``iterations_per_visit`` (cyclic), ``capacity_per_site``, ``policy``, ``replay_fraction`` (replay),
        ``rounds``, ``finetune`` (dwc).
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"ContinualRunner: unknown strategy {strategy!r}; strategies are {STRATEGIES}.")
        epochs = int(options.pop("epochs", self.epochs))
        order = site_order(self.sites, options.pop("order", "fixed"), self.seed, options.pop("skip", ()))
        if strategy == "single_site":
            return self._single_site(order, epochs, **options)
        if strategy == "ensemble":
            return self._ensemble(order, epochs, **options)
        if strategy == "centrally_hosted":
            stages = [Stage(list(order), epochs=epochs, init="store", label="pooled")]
        elif strategy == "single_weight_transfer":
            stages = sequential_schedule(order, epochs, patience=options.pop("patience", None))
        elif strategy == "cyclic_weight_transfer":
            k = int(options.pop("epochs_per_visit", 1))
            cycles = int(options.pop("cycles", max(1, epochs // k)))
            stages = cyclic_schedule(order, cycles, k, options.pop("iterations_per_visit", None))
        elif strategy in ("fine_tuning", "replay"):
            stages = sequential_schedule(order, epochs)
        elif strategy == "vcl":
            stages = sequential_schedule(order, epochs, kind="bayes", vcl=True)
        else:
            stages = dwc_schedule(order, epochs, int(options.pop("rounds", 1)), bool(options.pop("finetune", True)))
        replay = None
        if strategy == "replay":
            replay = {
                "capacity_per_site": int(options.pop("capacity_per_site", 20)),
                "policy": options.pop("policy", "random"),
                "replay_fraction": options.pop("replay_fraction", None),
            }
        if options:
            raise TypeError(f"ContinualRunner.run({strategy!r}): unexpected options {sorted(options)}.")
        return self._run_schedule(strategy, self.output_dir / strategy, stages, replay=replay)

    # ----------------------------------------------------------------------------------------------------------------
    # the schedule

    def _config(self, name: str, stages: list[Stage], replay: dict | None) -> str:
        description = {
            "strategy": name,
            "stages": [s.to_dict() for s in stages],
            "replay": replay,
            "sites": self.sites,
            "eval_sites": self.eval_sites,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bayes": self.bayes_kwargs,
            "optimizer_state": self.optimizer_state,
            "mc_samples": self.mc_samples,
            "network": {k: list(v.shape) for k, v in self.init_state.items()},
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()

    def _load_state(self, run_dir: Path, config: str, name: str) -> dict[str, Any]:
        path = run_dir / "state.json"
        if not path.exists():
            return {"strategy": name, "config": config, "completed": 0, "transfers": [], "results": {}}
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("config") != config:
            raise ValueError(
                f"run directory {str(run_dir)!r} holds a run of {name!r} with other settings; use another output_dir "
                "or remove it to start over."
            )
        return state

    def _save_state(self, run_dir: Path, state: dict[str, Any]) -> None:
        atomic_write_text(run_dir / "state.json", json.dumps(state, indent=2) + "\n")

    def _run_schedule(self, name: str, run_dir: Path, stages: list[Stage], replay: dict | None = None) -> StrategyResult:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.rglob(".*.tmp"):  # temporary files of a killed process: never complete, never read
            stale.unlink(missing_ok=True)
        config = self._config(name, stages, replay)
        state = self._load_state(run_dir, config, name)
        store = DirectoryWeightStore(run_dir / "store")
        matrix_path = run_dir / "R.json"
        matrix = ContinualMatrix.load_json(matrix_path) if matrix_path.exists() else ContinualMatrix(self.eval_sites)
        evaluated = sum(1 for s in stages[: state["completed"]] if s.evaluate)
        matrix.stages = matrix.stages[:evaluated]  # rows of a stage that did not finish are recomputed
        bayesian_run = any(s.kind != "map" for s in stages)
        first_kind = stages[0].kind
        if store.latest() is None:  # every strategy starts from the same initial weights, published as stage 0
            init = self._new_network("bayes" if first_kind == "bayes" else "map")
            store.publish(init.state_dict(), "init", 0)
        buffer_dir = run_dir / "replay"
        buffer = None
        if replay is not None:
            manifest = buffer_dir / "replay_manifest.json"
            buffer = ReplayBuffer.load(buffer_dir) if manifest.exists() else ReplayBuffer(replay["capacity_per_site"], replay["policy"], self.seed)
        network: nn.Module | None = None
        last_scores: dict[str, list[float]] = {}
        for index, stage in enumerate(stages):
            if index < state["completed"]:
                continue
            network, transfer = self._run_stage(name, run_dir, index, stage, store, buffer, buffer_dir, replay)
            if stage.evaluate:
                last_scores = self._evaluate(network, stage.kind != "map", seed=index)
                means = {s: float(np.mean(v)) for s, v in last_scores.items()}
                matrix.add_stage(stage.sites, means, stage.label or f"{index + 1}:{'+'.join(stage.sites)}")
                matrix.save_json(matrix_path)
                atomic_write_text(run_dir / "scores" / f"stage{index + 1:03d}.json", json.dumps(last_scores) + "\n")
                if stage.extra.get("result"):
                    state["results"][stage.extra["result"]] = f"scores/stage{index + 1:03d}.json"
            state["transfers"].append(transfer)
            state["completed"] = index + 1
            self._save_state(run_dir, state)
        final_path = run_dir / "final_model.safetensors"
        if network is not None:
            save_weights(final_path, network, strategy=name)
        matrix.save_csv(run_dir / "R.csv")
        matrix.plot(run_dir / "R.png", title=f"{name}: R matrix (mean Dice)")
        scores = self._stage_scores(run_dir, len(stages), stages)
        extra = {key: json.loads((run_dir / rel).read_text()) for key, rel in state["results"].items()}
        return StrategyResult(name, matrix, scores, run_dir, bayesian_run and stages[-1].kind != "map", extra, state["transfers"])

    def _stage_scores(self, run_dir: Path, count: int, stages: list[Stage]) -> dict[str, list[float]]:
        for index in range(count, 0, -1):
            path = run_dir / "scores" / f"stage{index:03d}.json"
            if stages[index - 1].evaluate and path.exists():
                return json.loads(path.read_text(encoding="utf-8"))
        return {}

    # ----------------------------------------------------------------------------------------------------------------
    # one stage

    def _new_network(self, kind: str, bound_std: bool = False) -> nn.Module:
        network = copy.deepcopy(self.template)
        network.load_state_dict(self.init_state)
        if kind != "map":
            network = bayesianize(network, bound_std=bound_std, inplace=True, **self.bayes_kwargs)
        return network.to(self.device)

    def _site_dir(self, run_dir: Path, stage: Stage) -> Path:
        return run_dir / "sites" / "+".join(stage.sites)

    def _items(self, stage: Stage) -> list[dict[str, Any]]:
        return [dict(item, site=site) for site in stage.sites for item in self.data.items(site, "training")]

    def _run_stage(
        self,
        name: str,
        run_dir: Path,
        index: int,
        stage: Stage,
        store: DirectoryWeightStore,
        buffer: ReplayBuffer | None,
        buffer_dir: Path,
        replay: dict | None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        site_label = "+".join(stage.sites)
        store_stage = index + 1
        if stage.kind == "consolidate":
            return self._consolidate_stage(run_dir, store, stage, store_stage)
        network = self._new_network(stage.kind, stage.bound_std)
        items = self._items(stage)
        seed_everything(self.seed * 7919 + index)
        if buffer is not None and len(buffer):
            dataset: Any = ReplayDataset(items, buffer, transform=self.train_transform, replay_fraction=replay["replay_fraction"], seed=self.seed + index)
        else:
            dataset = Dataset(items, transform=self.train_transform)
        sampler = EpochSampler(len(dataset), seed=self.seed * 31 + index)
        loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=0)
        num_examples = stage.num_examples if stage.num_examples is not None else len(dataset)
        loss = ELBOLoss(self.loss, network, num_examples) if stage.kind == "bayes" else self.loss
        optimizer = (self.bayes_optimizer_fn if stage.kind == "bayes" else self.optimizer_fn)(network.parameters())
        site_dir = self._site_dir(run_dir, stage)
        plateau = None
        if stage.patience:
            val_items = {s: self.data.items(s, "validation") for s in stage.sites}
            if not any(val_items.values()):
                raise DatalistError(f"site(s) {stage.sites} have no validation cases for the plateau criterion.")

            def score() -> float:
                values = evaluate_sites(network, {k: v for k, v in val_items.items() if v}, self.eval_transform, self.num_classes, self._inferer(stage.kind != "map"))
                return float(np.mean([x for v in values.values() for x in v]))

            plateau = PlateauStopper(score, network, stage.patience)
        checkpoint = EpochCheckpoint(site_dir / f"checkpoint_stage{store_stage:03d}.pt", network, optimizer, {"plateau": plateau} if plateau else {})
        resumed = checkpoint.load()
        transfer: dict[str, Any] = {
            "stage": store_stage,
            "site": site_label,
            "loaded": None,
            "published": None,
            "dataset_size": len(dataset),
            "replay_items": len(dataset) - len(items),
        }
        if resumed is None:
            transfer["loaded"] = self._initialize(network, stage, store, run_dir)
            self._restore_optimizer(optimizer, run_dir, site_dir, stage.kind)
        else:
            transfer["loaded"] = "checkpoint"
        transfer_handler = WeightTransferHandler(store, site_label, network, stage=store_stage, load=False, publish=stage.publish)
        handlers: list[Any] = [EpochSeeder(self.seed * 104_729 + index, self.train_transform), checkpoint]
        if plateau is not None:
            handlers.append(plateau)  # restores the best weights on completion, before they are published
        handlers.append(transfer_handler)
        if buffer is not None:
            handlers.append(ReplayBufferHandler(buffer, site_label, self.data.items(stage.sites[0], "training"), directory=buffer_dir))
        handlers.append(ProgressBar(f"{name} {store_stage}/{site_label}", disable=not self.progress))
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=max(stage.epochs, 1),
            train_data_loader=loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss,
            epoch_length=stage.iterations,
            train_handlers=handlers,
            decollate=False,
        )
        if resumed is not None:
            trainer.state.epoch = int(resumed["epoch"])
            trainer.state.iteration = int(resumed["iteration"])
            sampler.epoch = int(resumed["epoch"])
        if resumed is None or trainer.state.epoch < trainer.state.max_epochs:
            trainer.run()
        elif plateau is not None:
            plateau.restore_best()
        if stage.publish and transfer_handler.published is None:  # resumed after the last epoch: publish now
            transfer_handler.publish_weights()
        if transfer_handler.published is not None:
            transfer["published"] = transfer_handler.published.sha256
        if stage.export_posterior:
            Posterior.from_model(network, site=site_label, num_examples=num_examples).save(run_dir / "store" / stage.export_posterior)
        self._keep_optimizer(optimizer, run_dir, site_dir, stage.kind)
        checkpoint.path.unlink(missing_ok=True)
        return network, transfer

    def _initialize(self, network: nn.Module, stage: Stage, store: DirectoryWeightStore, run_dir: Path) -> str | None:
        """Set a stage's starting weights; return the SHA-256 of the store entry used (if any)."""
        if stage.init == "fresh":  # the shared initial weights, as published when the run began (stable on resume)
            entry = min(store.entries(), key=lambda e: e.stage)
            self._load_state_dict(network, store.load(entry), entry)
            return entry.sha256
        if stage.init == "prior":
            posterior = Posterior.load(run_dir / "store" / stage.extra["prior"])
            posterior.to_prior(network, init_posterior=True)
            return posterior.sha256()
        entry = store.latest()
        state = store.load(entry)
        is_bayes_state = any(k.endswith("weight_rho") for k in state)
        if any(True for _ in bayesian_layers(network)) and not is_bayes_state:
            # a Bayesian stage after a deterministic one (DWC's MAP -> Bayesian step): means from the MAP weights
            plain = copy.deepcopy(self.template)
            self._load_state_dict(plain, state, entry)
            converted = bayesianize(plain, bound_std=stage.bound_std, **self.bayes_kwargs)
            network.load_state_dict(converted.state_dict())
        else:
            self._load_state_dict(network, state, entry)
        if stage.vcl:
            posterior_to_prior(network)
        return entry.sha256

    def _load_state_dict(self, network: nn.Module, state: dict[str, torch.Tensor], entry: Any) -> None:
        try:
            network.load_state_dict({k: v.to(self.device) for k, v in state.items()})
        except RuntimeError as err:
            raise ValueError(
                f"weights {entry.file!r} published by site {entry.site!r} (stage {entry.stage}) do not fit the "
                f"network: {err}"
            ) from err

    def _optimizer_file(self, run_dir: Path, site_dir: Path, kind: str) -> Path | None:
        # one file per network kind: a site that trains a MAP and then a Bayesian network keeps both optimizers
        if self.optimizer_state == "site":
            return site_dir / f"optimizer_{kind}.pt"
        if self.optimizer_state == "transfer":
            return run_dir / "store" / f"optimizer_{kind}.pt"
        return None

    def _restore_optimizer(self, optimizer: torch.optim.Optimizer, run_dir: Path, site_dir: Path, kind: str) -> None:
        path = self._optimizer_file(run_dir, site_dir, kind)
        if path is not None and path.exists():
            optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _keep_optimizer(self, optimizer: torch.optim.Optimizer, run_dir: Path, site_dir: Path, kind: str) -> None:
        path = self._optimizer_file(run_dir, site_dir, kind)
        if path is not None:
            with atomic_write(path) as tmp:
                torch.save(optimizer.state_dict(), tmp)

    def _consolidate_stage(self, run_dir: Path, store: DirectoryWeightStore, stage: Stage, store_stage: int) -> tuple[nn.Module, dict]:
        shared = run_dir / "store"
        merged = consolidate_dwc(shared / stage.extra["prior"], [shared / f for f in stage.extra["sites"]], progress=self.progress)
        network = self._new_network("bayes")
        merged.to_prior(network, init_posterior=True)
        merged.save(shared / stage.export_posterior)
        entry = store.publish(network.state_dict(), "consolidation", store_stage)
        return network, {"stage": store_stage, "site": "+".join(stage.sites), "loaded": merged.sha256(), "published": entry.sha256}

    # ----------------------------------------------------------------------------------------------------------------
    # evaluation and baselines

    def _inferer(self, bayesian: bool) -> Inferer:
        return MCInferer(self.mc_samples, self.inferer) if bayesian else self.inferer

    def _evaluate(self, network: nn.Module, bayesian: bool, seed: int) -> dict[str, list[float]]:
        seed_everything(self.seed * 15_485_863 + seed)
        items = {s: self.data.items(s, "test") for s in self.eval_sites}
        return evaluate_sites(network, items, self.eval_transform, self.num_classes, self._inferer(bayesian), self.device)

    def _single_site_run(self, site: str, epochs: int) -> StrategyResult:
        root = self.output_dir / "single_site"
        return self._run_schedule(f"single_site[{site}]", root / site, [Stage([site], epochs=epochs, init="store", label=site)])

    def _single_site(self, order: list[str], epochs: int) -> StrategyResult:
        root = self.output_dir / "single_site"
        matrix = ContinualMatrix(self.eval_sites)
        scores: dict[str, list[float]] = {}
        extra: dict[str, dict[str, list[float]]] = {}
        transfers = []
        for site in order:
            result = self._single_site_run(site, epochs)
            matrix.add_stage(site, {s: float(np.mean(v)) for s, v in result.scores.items()}, label=site)
            scores[site] = result.scores[site]
            extra[f"single_site[{site}]"] = result.scores
            transfers += result.transfers
        matrix.save_json(root / "R.json")
        matrix.plot(root / "R.png", title="single-site models (row: model of that site)")
        return StrategyResult("single_site", matrix, scores, root, False, extra, transfers)

    def _ensemble(self, order: list[str], epochs: int) -> StrategyResult:
        members = []
        for site in order:
            path = self.output_dir / "single_site" / site / "final_model.safetensors"
            if not path.exists():  # runs (or resumes) that site's model alone, leaving single_site's summary alone
                self._single_site_run(site, epochs)
            members.append(load_weights(self._new_network("map"), path))
        ensemble = EnsembleModel(members, output="log").to(self.device)
        root = self.output_dir / "ensemble"
        root.mkdir(parents=True, exist_ok=True)
        scores_path = root / "scores.json"
        if scores_path.exists():
            scores = json.loads(scores_path.read_text(encoding="utf-8"))
        else:
            scores = self._evaluate(ensemble, False, seed=0)
            atomic_write_text(scores_path, json.dumps(scores) + "\n")
        matrix = ContinualMatrix(self.eval_sites)
        matrix.add_stage(order, {s: float(np.mean(v)) for s, v in scores.items()}, label="ensemble")
        matrix.save_json(root / "R.json")
        return StrategyResult("ensemble", matrix, scores, root)
