"""Every trainer of ``monai_continual.nnunet``, and how nnU-Net finds them.

nnU-Net looks trainers up by class name inside ``nnunetv2.training.nnUNetTrainer`` (importing every module there,
some of which need optional packages such as timm) and then in the folders of ``nnUNet_extTrainer``.
:func:`register_trainers` makes ours attributes of the first module that lookup inspects, so it finds them without
importing anything else; :func:`ext_trainer_folder` is the folder to put in ``nnUNet_extTrainer`` for
``nnUNetv2_train``.
"""

from __future__ import annotations

from pathlib import Path

from monai_continual.nnunet.bayesian_trainer import nnUNetTrainerBayesian, nnUNetTrainerVCL, nnUNetTrainerVCLUnbounded
from monai_continual.nnunet.ewc_trainer import nnUNetTrainerEWC
from monai_continual.nnunet.proximal_trainer import nnUNetTrainerFedProx
from monai_continual.nnunet.replay_trainer import nnUNetTrainerReplay
from monai_continual.nnunet.short_trainers import (
    nnUNetTrainerBayesian_short,
    nnUNetTrainerReplay_short,
    nnUNetTrainerVCL_short,
)

__all__ = [
    "TRAINERS", "register_trainers", "find_trainer", "ext_trainer_folder",
    "nnUNetTrainerBayesian", "nnUNetTrainerVCL", "nnUNetTrainerVCLUnbounded", "nnUNetTrainerReplay",
    "nnUNetTrainerFedProx", "nnUNetTrainerEWC", "nnUNetTrainerBayesian_short", "nnUNetTrainerVCL_short",
    "nnUNetTrainerReplay_short",
]

TRAINERS = {
    cls.__name__: cls
    for cls in (nnUNetTrainerBayesian, nnUNetTrainerVCL, nnUNetTrainerVCLUnbounded, nnUNetTrainerReplay,
                nnUNetTrainerFedProx, nnUNetTrainerEWC, nnUNetTrainerBayesian_short, nnUNetTrainerVCL_short,
                nnUNetTrainerReplay_short)
}


def register_trainers() -> None:
    """Make our trainers findable by nnU-Net's trainer lookup (and its predictor) in this process."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module

    for name, cls in TRAINERS.items():
        setattr(module, name, cls)


def find_trainer(name: str) -> type:
    """The trainer class called ``name``: ours, or nnU-Net's (looked up the way nnU-Net does)."""
    if name in TRAINERS:
        return TRAINERS[name]
    register_trainers()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"looking up nnU-Net trainer {name!r} imports nnU-Net trainer modules that need {e.name!r}, which is not "
            f"installed; ours ({sorted(TRAINERS)}) and nnUNetTrainer need nothing more."
        ) from e


def ext_trainer_folder() -> Path:
    """The folder to export as ``nnUNet_extTrainer`` so that ``nnUNetv2_train -tr nnUNetTrainerBayesian`` works."""
    return Path(__file__).resolve().parent / "ext_trainers"
