"""Continual strategies across sites' nnU-Net datasets: weight transfer, fine-tuning, replay, VCL and DWC.

Every site is its own nnU-Net dataset, planned once and preprocessed with the shared plans
(:func:`~monai_continual.nnunet.planning.plan_and_preprocess_sites`). A stage trains one site with nnU-Net's own
trainer, data loading and augmentation; what crosses to the next stage is a safetensors file only (weights in a
:class:`~monai_continual.consolidation.DirectoryWeightStore`, or a posterior file), with its SHA-256 recorded.
After every stage the published model is loaded into a freshly built network and evaluated on every site's test
cases (``imagesTs``/``labelsTs``) into a :class:`~monai_continual.metrics.ContinualMatrix`.

The whole state is kept in the run directory (``state.json``, the store, posteriors, ``R.json``); running the same
command again after the process was killed skips finished stages and redoes the interrupted one from its start.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_continual.consolidation.dwc import consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.consolidation.weight_store import DirectoryWeightStore
from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.metrics.segmentation import mean_dice
from monai_continual.nnunet.bayesian_trainer import POSTERIOR_FILE, nnUNetTrainerBayesian
from monai_continual.nnunet.datasets import check_datasets_compatible, raw_dataset_folder
from monai_continual.nnunet.environment import nnunet_paths, results_folder
from monai_continual.nnunet.launcher import build_trainer, default_device
from monai_continual.nnunet.planning import plans_file, preprocessed_data_folder, shared_plans
from monai_continual.nnunet.replay_trainer import replay_sources_for
from monai_continual.nnunet.trainers import find_trainer
from monai_continual.utils.atomic import atomic_write, atomic_write_text

__all__ = ["SITE_STRATEGIES", "SiteStage", "SitesResult", "run_sites"]

#: strategy -> the trainer its stages use
SITE_STRATEGIES = {
    "single_weight_transfer": "nnUNetTrainer",
    "cyclic_weight_transfer": "nnUNetTrainer",
    "fine_tuning": "nnUNetTrainer",
    "replay": "nnUNetTrainerReplay",
    "vcl": "nnUNetTrainerVCL",
    "dwc": "nnUNetTrainerVCL",
}


@dataclass
class SiteStage:
    """One stage: train ``dataset`` (or consolidate, ``kind="consolidate"``) and publish the result."""

    index: int
    dataset: str
    kind: str = "train"
    label: str = ""
    prior: str | None = None  # "previous" (VCL), "first" (DWC's shared prior) or None
    replay: list[str] = field(default_factory=list)


@dataclass
class SitesResult:
    """What :func:`run_sites` produced: the R matrix, the stage records (hashes moved), the run directory."""

    strategy: str
    matrix: ContinualMatrix
    stages: list[dict[str, Any]]
    directory: Path


def _schedule(strategy: str, datasets: list[str], rounds: int, finetune: bool = False, order: str = "fixed",
              seed: int = 0) -> list[SiteStage]:
    if strategy in ("single_weight_transfer", "fine_tuning", "vcl"):
        order_ = datasets
    elif strategy == "cyclic_weight_transfer":
        # "random": a new permutation of the sites every round (seeded), as in Chang et al.'s random-order variant
        order_ = [d for r in range(rounds) for d in (random.Random(seed + r).sample(datasets, len(datasets))
                                                       if order == "random" else datasets)]
    elif strategy == "replay":
        return [SiteStage(i, d, label=f"{i}:{d}", replay=datasets[:i]) for i, d in enumerate(datasets)]
    elif strategy == "dwc":
        stages = [SiteStage(0, datasets[0], label=f"0:q0 {datasets[0]}")]
        stages += [SiteStage(i, d, label=f"{i}:{d} from q0", prior="first") for i, d in enumerate(datasets[1:], 1)]
        stages.append(SiteStage(len(datasets), datasets[0], kind="consolidate", label=f"{len(datasets)}:dwc"))
        if finetune:  # McClure et al.'s "DWC" row: the consolidated posterior fine-tuned with the data as one example
            stages.append(SiteStage(len(datasets) + 1, datasets[0], kind="finetune", label=f"{len(datasets) + 1}:dwc+ft", prior="previous"))
        return stages
    else:
        raise ValueError(f"unknown strategy {strategy!r}; strategies are {sorted(SITE_STRATEGIES)}.")
    prior = "previous" if strategy == "vcl" else None
    return [SiteStage(i, d, label=f"{i}:{d}", prior=prior if i else None) for i, d in enumerate(order_)]


def _published(store: DirectoryWeightStore, number: int):
    """The store entry stage ``number - 1`` published (stage numbers in the store count from 1), or None."""
    return next((e for e in store.entries() if e.stage == number), None)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Evaluator:
    """Predicts every site's test images with a published model and scores them against ``labelsTs``."""

    def __init__(self, datasets: list[str], configuration: str, plans: str, device: torch.device, mirroring: bool,
                 mc_samples: int) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.device, self.mirroring, self.mc_samples = device, mirroring, mc_samples
        raw = nnunet_paths(("raw",))["raw"]
        self.folders = {d: raw_dataset_folder(raw, d) for d in datasets}
        # per dataset, read once: plans manager, configuration, dataset.json
        self.setup: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        for dataset, folder in self.folders.items():
            if not any((folder / "imagesTs").glob("*_0000*")) or not (folder / "labelsTs").is_dir():
                raise FileNotFoundError(f"dataset {dataset}: needs test cases in imagesTs/ and labelsTs/ to be evaluated.")
            # a held-out site has no training cases, hence no plans of its own: its images are preprocessed on the
            # fly with the shared plans of the first site (the same ones every trained site uses)
            own = plans_file(dataset, plans)
            manager = PlansManager(str(own if own.is_file() else plans_file(datasets[0], plans)))
            dataset_json = json.loads((folder / "dataset.json").read_text())
            self.setup[dataset] = (manager, manager.get_configuration(configuration), dataset_json)

    def network(self, trainer: str, dataset: str) -> torch.nn.Module:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        plans_manager, config, dataset_json = self.setup[dataset]
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        channels = determine_num_input_channels(plans_manager, config, dataset_json)
        return find_trainer(trainer).build_network_architecture(plans_manager, config, channels, heads, False)

    def __call__(self, network: torch.nn.Module, trainer: str, output: Path) -> dict[str, float]:
        import nibabel as nib

        from monai_continual.nnunet.mc_predictor import MCnnUNetPredictor

        scores = {}
        for dataset, folder in self.folders.items():
            plans_manager, config, dataset_json = self.setup[dataset]
            predictor = MCnnUNetPredictor(mc_samples=self.mc_samples, use_mirroring=self.mirroring, device=self.device)
            axes = tuple(range(len(config.patch_size)))
            predictor.manual_initialization(network.to(self.device).eval(), plans_manager, config, [network.state_dict()],
                                            dataset_json, trainer, axes)
            written = predictor.predict_files(folder / "imagesTs", output / dataset, uncertainty=False, progress=False)
            num_classes = max(int(v) for v in dataset_json["labels"].values()) + 1
            dice = []
            for path in written:
                reference = folder / "labelsTs" / path.name
                pred = torch.as_tensor(np.asarray(nib.load(path).dataobj))[None, None]
                label = torch.as_tensor(np.asarray(nib.load(reference).dataobj))[None, None]
                dice.append(float(mean_dice(pred, label, num_classes)[0]))
            scores[dataset] = float(np.mean(dice))
        return scores


def run_sites(
    datasets: Sequence[str],
    strategy: str,
    output_dir: str | os.PathLike,
    configuration: str = "3d_fullres",
    fold: int | str = "all",
    plans: str = "nnUNetPlans",
    epochs: int = 1,
    iterations_per_epoch: int | None = None,
    val_iterations_per_epoch: int | None = None,
    rounds: int = 2,
    order: str = "fixed",
    replay_capacity: int = 5,
    dwc_finetune: bool = False,
    eval_datasets: Sequence[str] = (),
    trainer: str | None = None,
    device: str | None = None,
    mirroring: bool = True,
    mc_samples: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> SitesResult:
    """Run one strategy over the sites' nnU-Net datasets (already planned and preprocessed with shared plans).

    Args:
        datasets: the sites' datasets, in training order (names or ids).
        strategy: one of :data:`SITE_STRATEGIES`: ``single_weight_transfer`` / ``fine_tuning`` (each site once, the
            weights passed on), ``cyclic_weight_transfer`` (``rounds`` passes over the sites), ``replay`` (each
            site once, plus up to ``replay_capacity`` cases of every earlier site), ``vcl`` (Bayesian; the posterior
            of each site is the prior of the next), ``dwc`` (q0 trained on the first site; every other site trains
            from q0 independently; the site posteriors are consolidated by Eq. 17; with ``dwc_finetune`` the
            consolidated posterior is then fine-tuned on the first site with its data weighted as one example).
        output_dir: the run directory (all state; rerun the same call to resume).
        configuration, fold, plans: nnU-Net's; ``fold="all"`` trains on every training case of a site (the test
            cases are held apart in ``imagesTs``).
        epochs: epochs per stage (per visit for cyclic transfer).
        iterations_per_epoch, val_iterations_per_epoch: nnU-Net's iterations (default: the trainer's own).
        rounds: passes over the sites for cyclic transfer.
        order: ``"fixed"`` (the order of ``datasets``, every round) or ``"random"`` (a seeded permutation per round)
            for cyclic transfer; the other strategies take ``datasets`` in order.
        replay_capacity: K, replayed cases per earlier site.
        dwc_finetune: add DWC's fine-tuning stage.
        eval_datasets: more datasets evaluated after every stage but never trained on (held-out sites: ``imagesTs``
            and ``labelsTs`` only, no planning needed).
        trainer: override the trainer of the strategy (e.g. a variant of it).
        device: ``"cuda"``, ``"cpu"``... (default: CUDA when available).
        mirroring: nnU-Net's mirroring at evaluation.
        mc_samples: Monte Carlo passes when evaluating Bayesian stages (1: the posterior mean).
        seed: seeds torch before every stage and the choice of replayed cases.
        progress: print a line per stage.

    Returns:
        :class:`SitesResult`; ``R.json``, ``R.csv``, ``R.png`` and ``state.json`` are in ``output_dir``.

    Example::

        >>> result = run_sites(["Dataset501_site_a", "Dataset502_site_b"], "cyclic_weight_transfer", "runs/cwt",
        ...                    rounds=3, epochs=5, device="cpu")
        >>> result.matrix.as_array()
    """
    if strategy not in SITE_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; strategies are {sorted(SITE_STRATEGIES)}.")
    if order not in ("fixed", "random"):
        raise ValueError(f"order must be 'fixed' or 'random', got {order!r}.")
    if epochs < 1 or rounds < 1 or replay_capacity < 1:
        raise ValueError(f"epochs, rounds and replay_capacity must be >= 1, got {epochs}, {rounds}, {replay_capacity}.")
    paths = nnunet_paths()
    # labels and channels agree, before any work (held-out sites included)
    everything = list(check_datasets_compatible(paths["raw"], [*datasets, *eval_datasets]))
    names, held_out = everything[: len(datasets)], everything[len(datasets):]
    if len(set(everything)) != len(everything) or len(everything) != len(datasets) + len(eval_datasets):
        raise ValueError(f"a dataset is listed twice: {[*datasets, *eval_datasets]}.")
    missing = [n for n in names if not plans_file(n, plans).is_file()]
    if missing:
        raise FileNotFoundError(f"datasets {missing} have no {plans}.json; run plan_and_preprocess_sites first.")
    shared = {json.dumps(shared_plans(json.loads(plans_file(n, plans).read_text())), sort_keys=True) for n in names}
    if len(shared) != 1:
        raise ValueError(f"datasets {names} were preprocessed with different plans; plan once and move the plans "
                         "(plan_and_preprocess_sites) so that weights fit every site.")
    trainer_name = trainer or SITE_STRATEGIES[strategy]
    trainer_class, required = find_trainer(trainer_name), find_trainer(SITE_STRATEGIES[strategy])
    bayesian = issubclass(trainer_class, nnUNetTrainerBayesian)
    if not issubclass(trainer_class, required) or (bayesian and strategy not in ("vcl", "dwc")):
        raise ValueError(f"strategy {strategy} trains with {required.__name__} or a subclass of it"
                         f"{'' if strategy in ('vcl', 'dwc') else ' that is not Bayesian'}; got {trainer_name}.")
    device_ = torch.device(device or default_device())
    evaluate = _Evaluator(names + held_out, configuration, plans, device_, mirroring, mc_samples)
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"strategy": strategy, "datasets": names, "configuration": configuration, "fold": str(fold), "plans": plans,
              "epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "val_iterations": val_iterations_per_epoch,
              "rounds": rounds if strategy == "cyclic_weight_transfer" else None,
              "order": order if strategy == "cyclic_weight_transfer" else None,
              "replay_capacity": replay_capacity if strategy == "replay" else None, "trainer": trainer_name, "seed": seed,
              "dwc_finetune": bool(dwc_finetune) if strategy == "dwc" else None, "eval_datasets": held_out}
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"config": config, "stages": []}
    if state["config"] != config:
        raise ValueError(f"run directory {run_dir} holds a run with other settings ({state['config']}); use another directory.")
    stages = _schedule(strategy, names, rounds, dwc_finetune, order, seed)
    matrix = ContinualMatrix(names + held_out)
    for record in state["stages"]:
        matrix.add_stage(record["trained_on"], record["scores"], label=record["label"])
    store = DirectoryWeightStore(run_dir / "store")
    posteriors = run_dir / "posteriors"
    posteriors.mkdir(exist_ok=True)

    for stage in stages[len(state["stages"]):]:
        started = time.time()
        stage_dir = run_dir / "stages" / f"{stage.index:03d}_{stage.dataset}"
        if stage_dir.exists():  # an interrupted stage starts again from its beginning
            shutil.rmtree(stage_dir)
        record: dict[str, Any] = {"index": stage.index, "label": stage.label, "dataset": stage.dataset}
        torch.manual_seed(seed + stage.index)
        if stage.kind == "consolidate":
            prior_path = posteriors / f"stage{0:03d}.safetensors"
            site_paths = [posteriors / f"stage{s.index:03d}.safetensors" for s in stages if s.prior == "first"]
            merged = consolidate_dwc(prior_path, site_paths)
            out = posteriors / f"stage{stage.index:03d}.safetensors"
            merged.save(out)
            network = merged.to_model(evaluate.network(trainer_name, stage.dataset))
            record.update(trained_on=[], loaded=[_sha256_file(p) for p in [prior_path, *site_paths]],
                          published=_sha256_file(out))
        else:
            with results_folder(stage_dir):
                instance = build_trainer(stage.dataset, configuration, fold, trainer_name, plans, device_, epochs,
                                         iterations_per_epoch, val_iterations_per_epoch)
                loaded = None
                if stage.prior is not None:
                    source = posteriors / f"stage{(0 if stage.prior == 'first' else stage.index - 1):03d}.safetensors"
                    instance.prior_file, loaded = str(source), _sha256_file(source)
                if stage.kind == "finetune":
                    instance.kl_num_examples = 1.0
                if stage.replay:
                    folders = [preprocessed_data_folder(plans_file(d, plans).parent, configuration, plans) for d in stage.replay]
                    instance.replay_sources = replay_sources_for(folders, replay_capacity, seed=seed)
                instance.initialize()
                network = getattr(instance.network, "_orig_mod", instance.network)
                # the previous stage's weights, by stage number: a stage killed after publishing must not start
                # from its own half-finished result when it is redone
                previous = _published(store, stage.index)
                if not bayesian and previous is not None:
                    network.load_state_dict(store.load(previous))
                    loaded = previous.sha256
                instance.run_training()
                network = getattr(instance.network, "_orig_mod", instance.network)
                if bayesian:
                    out = posteriors / f"stage{stage.index:03d}.safetensors"
                    with atomic_write(out) as tmp:
                        shutil.copyfile(Path(instance.output_folder) / POSTERIOR_FILE, tmp)
                    published = _sha256_file(out)
                else:
                    published = store.publish(network.state_dict(), stage.dataset, stage.index + 1).sha256
                record.update(trained_on=[stage.dataset], loaded=loaded, published=published,
                              replay_items=int(getattr(instance, "num_replayed", 0)))
            # evaluate what was published, loaded into a fresh network: exactly what the next site receives
            fresh = evaluate.network(trainer_name, stage.dataset)
            if bayesian:
                network = Posterior.load(out).to_model(fresh)
            else:
                network = fresh
                network.load_state_dict(store.load(_published(store, stage.index + 1)))
        record["scores"] = evaluate(network, trainer_name, run_dir / "predictions" / f"{stage.index:03d}")
        record["seconds"] = round(time.time() - started, 1)
        matrix.add_stage(record["trained_on"], record["scores"], label=record["label"])
        state["stages"].append(record)
        atomic_write_text(state_path, json.dumps(state, indent=2))
        matrix.save_json(run_dir / "R.json")
        matrix.save_csv(run_dir / "R.csv")
        if progress:
            print(f"[{strategy}] stage {stage.label}: " + ", ".join(f"{k} {v:.3f}" for k, v in record["scores"].items())
                  + f" ({record['seconds']} s)", flush=True)
    try:
        matrix.plot(run_dir / "R.png", title=f"{strategy}: Dice on every site's test cases after each stage")
    except Exception as e:  # a missing plotting backend must not lose the results
        print(f"R matrix plot skipped: {e}")
    return SitesResult(strategy, matrix, state["stages"], run_dir)
