"""Train and predict with any nnU-Net trainer, ours included, in every environment.

nnU-Net's own ``nnUNetv2_train`` finds a trainer by importing every module of its trainer package, which fails
where an optional dependency of one of them (timm) is missing. These functions register our trainers where that
lookup starts, so they are found first, and add what the continual strategies need: a shorter schedule, a prior
file, replayed datasets and initial weights from a safetensors file (weights that crossed a site boundary).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from monai_continual.consolidation.weight_store import load_weights
from monai_continual.nnunet.environment import nnunet_paths
from monai_continual.nnunet.planning import preprocessed_data_folder
from monai_continual.nnunet.replay_trainer import replay_sources_for
from monai_continual.nnunet.short_trainers import shorten
from monai_continual.nnunet.trainers import find_trainer, register_trainers
from monai_continual.utils.names import check_site_name

__all__ = ["default_device", "build_trainer", "train", "predict", "dataset_name"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` from a name or an id (looked up under ``nnUNet_preprocessed``, then ``nnUNet_raw``)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except RuntimeError as e:
        raise FileNotFoundError(f"dataset {dataset!r}: {e}") from None
    return check_site_name(name, "nnU-Net dataset")  # it becomes a folder under nnUNet_preprocessed


def build_trainer(
    dataset: str | int,
    configuration: str,
    fold: int | str,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    device: str | torch.device | None = None,
    num_epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    val_iterations_per_epoch: int | None = None,
    continue_training: bool = False,
):
    """Instantiate a trainer the way ``nnUNetv2_train`` does, with an optional shorter schedule."""
    paths = nnunet_paths(("preprocessed", "results"))
    register_trainers()
    trainer_class = find_trainer(trainer)
    name = dataset_name(dataset)
    folder = paths["preprocessed"] / name
    plans_path = folder / f"{plans}.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"dataset {name}: no plans {plans_path}; plan and preprocess it first "
                                "(`python -m monai_continual.nnunet plan`).")
    plans_dict = json.loads(plans_path.read_text())
    if configuration not in plans_dict.get("configurations", {}):
        raise ValueError(f"dataset {name}: configuration {configuration!r} is not in {plans_path.name} "
                         f"({sorted(plans_dict.get('configurations', {}))}).")
    plans_dict["continue_training"] = continue_training
    fold = fold if str(fold) == "all" else int(fold)
    instance = trainer_class(plans=plans_dict, configuration=configuration, fold=fold,
                             dataset_json=json.loads((folder / "dataset.json").read_text()),
                             device=torch.device(device or default_device()))
    return shorten(instance, num_epochs, iterations_per_epoch, val_iterations_per_epoch)


def _replay_folders(
    replay: Mapping[str, int] | Sequence[str], plans: str, configuration: str
) -> tuple[list[Path], int]:
    """``["501:5", "502"]`` or ``{"501": 5}`` -> the preprocessed folders and the per-site capacity."""
    items = (
        replay.items()
        if isinstance(replay, Mapping)
        else [(s.split(":")[0], s.split(":")[1] if ":" in s else None) for s in replay]
    )
    folders, capacities = [], set()
    for dataset, capacity in items:
        base = nnunet_paths(("preprocessed",))["preprocessed"] / dataset_name(dataset)
        folders.append(preprocessed_data_folder(base, configuration, plans))
        capacities.add(int(capacity) if capacity is not None else 10**9)
    if len(capacities) > 1:
        raise ValueError(f"replay: one capacity per site for all earlier sites, got {sorted(capacities)}.")
    return folders, capacities.pop() if capacities else 0


def train(
    dataset: str | int,
    configuration: str,
    fold: int | str,
    trainer: str = "nnUNetTrainer",
    plans: str = "nnUNetPlans",
    device: str | torch.device | None = None,
    num_epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    val_iterations_per_epoch: int | None = None,
    prior: str | os.PathLike | None = None,
    replay: Mapping[str, int] | Sequence[str] = (),
    replay_seed: int = 0,
    init_weights: str | os.PathLike | None = None,
    continue_training: bool = False,
    validate: bool = True,
):
    """Train one nnU-Net model; what ``python -m monai_continual.nnunet train`` runs.

    Args:
        dataset, configuration, fold, trainer, plans, device: as for ``nnUNetv2_train``.
        num_epochs, iterations_per_epoch, val_iterations_per_epoch: override the trainer's schedule.
        prior: posterior file to use as the prior (VCL trainers).
        replay: earlier sites' datasets to replay, ``["501:5", "502:5"]`` (K cases each; all without ``:K``).
        replay_seed: seed of the choice of replayed cases.
        init_weights: a safetensors weight file (``monai_continual.consolidation.save_weights``) to start from.
        continue_training: resume from the fold's latest checkpoint (nnU-Net's ``--c``).
        validate: run nnU-Net's final validation after training.

    Returns:
        the trained trainer.

    Example::

        >>> train(502, "3d_fullres", "all", "nnUNetTrainerVCL", prior="site_a/posterior.safetensors", device="cpu")
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    instance = build_trainer(dataset, configuration, fold, trainer, plans, device, num_epochs, iterations_per_epoch,
                             val_iterations_per_epoch, continue_training)
    if prior is not None:
        if not hasattr(instance, "prior_file"):
            raise ValueError(f"trainer {trainer} takes no prior; use a VCL trainer (nnUNetTrainerVCL).")
        if not Path(prior).is_file():
            raise FileNotFoundError(f"prior file {str(prior)!r} does not exist.")
        instance.prior_file = str(prior)
    if replay:
        if not hasattr(instance, "replay_sources"):
            raise ValueError(f"trainer {trainer} does not replay; use nnUNetTrainerReplay.")
        folders, capacity = _replay_folders(replay, plans, configuration)
        instance.replay_sources = replay_sources_for(folders, capacity, seed=replay_seed)
    if continue_training and init_weights is not None:
        raise ValueError("continue_training resumes from the fold's checkpoint; do not also give init_weights.")
    maybe_load_checkpoint(instance, continue_training, False, None)
    if not instance.was_initialized:
        instance.initialize()
    if init_weights is not None:
        load_weights(getattr(instance.network, "_orig_mod", instance.network), init_weights)
    instance.run_training()
    if validate:
        instance.perform_actual_validation(False)
    return instance


def predict(
    input_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    model_folder: str | os.PathLike,
    folds: Sequence[int | str] = ("all",),
    checkpoint: str = "checkpoint_final.pth",
    weights: str | os.PathLike | None = None,
    mc_samples: int | None = None,
    uncertainty: bool = True,
    mirroring: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Path]:
    """Predict NIfTI files with a trained model folder; Monte Carlo with uncertainty maps for Bayesian trainers.

    Args:
        model_folder: the trainer's output folder (``.../<trainer>__<plans>__<configuration>``).
        folds: folds to ensemble.
        checkpoint: the checkpoint file name in each fold folder (nnU-Net's own, read by nnU-Net).
        weights: a safetensors weight file to predict with instead of the checkpoint's weights (how weights from
            another site are used: never a pickled checkpoint).
        mc_samples: Monte Carlo passes (default: the trainer's ``mc_samples``, 1 for deterministic trainers).
        uncertainty: also write ``<case>_<map>.nii.gz`` uncertainty maps (Bayesian models only).
        mirroring: nnU-Net's mirroring test-time augmentation.

    Returns:
        the segmentation files written.
    """
    from monai_continual.nnunet.mc_predictor import MCnnUNetPredictor

    register_trainers()
    model_folder = Path(model_folder)
    if not (model_folder / "plans.json").is_file():
        raise FileNotFoundError(
            f"model folder {str(model_folder)!r} has no plans.json; is it a trainer's output folder?"
        )
    predictor = MCnnUNetPredictor(
        mc_samples=1, use_mirroring=mirroring, device=torch.device(device or default_device())
    )
    predictor.initialize_from_trained_model_folder(
        str(model_folder), [f if f == "all" else int(f) for f in folds], checkpoint
    )
    trainer_class = find_trainer(predictor.trainer_name)
    predictor.mc_samples = int(mc_samples if mc_samples is not None else getattr(trainer_class, "mc_samples", 1))
    if weights is not None:
        predictor.list_of_parameters = [load_weights(predictor.network, weights).state_dict()]
    return predictor.predict_files(input_folder, output_folder, uncertainty=uncertainty, progress=progress)
