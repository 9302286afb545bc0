"""nnU-Net v2 integration: Bayesian, VCL and replay trainers, a launcher, and strategies across sites' datasets.

Usable only when nnU-Net v2 is installed (``pip install "monai-continual[nnunet]"``); nothing else in the package
imports it. Command line: ``python -m monai_continual.nnunet --help``.

The names below load on first use (``from monai_continual.nnunet import train`` imports nnU-Net and torch then), so
that the command line's help and argument errors come back at once instead of after seconds of imports.

Example::

    >>> from monai_continual.nnunet import TRAINERS, ext_trainer_folder
    >>> sorted(TRAINERS)[:2]
    ['nnUNetTrainerBayesian', 'nnUNetTrainerBayesian_short']
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if importlib.util.find_spec("nnunetv2") is None:  # pragma: no cover - depends on the environment
    raise ImportError(
        "monai_continual.nnunet needs nnU-Net v2: pip install nnunetv2 (see the README for a CPU-only install)."
    )

#: public name -> the submodule that defines it
_EXPORTS = {
    "POSTERIOR_FILE": "bayesian_trainer",
    "PRIOR_ENV": "bayesian_trainer",
    "nnUNetTrainerBayesian": "bayesian_trainer",
    "nnUNetTrainerVCL": "bayesian_trainer",
    "NnUNetDatasetError": "datasets",
    "check_datasets_compatible": "datasets",
    "export_nnunet_datasets": "datasets",
    "nnunet_paths": "environment",
    "set_nnunet_paths": "environment",
    "build_trainer": "launcher",
    "predict": "launcher",
    "train": "launcher",
    "UNCERTAINTY_MAPS": "mc_predictor",
    "MCnnUNetPredictor": "mc_predictor",
    "FingerprintError": "fingerprints",
    "site_fingerprint": "fingerprints",
    "load_fingerprint": "fingerprints",
    "save_fingerprint": "fingerprints",
    "merge_fingerprints": "fingerprints",
    "plan_and_preprocess_sites": "planning",
    "plan_from_fingerprints": "planning",
    "preprocess_with_plans": "planning",
    "REPLAY_ENV": "replay_trainer",
    "ReplayMixDataset": "replay_trainer",
    "nnUNetTrainerReplay": "replay_trainer",
    "nnUNetTrainerFedProx": "proximal_trainer",
    "nnUNetTrainerEWC": "ewc_trainer",
    "TRAINERS": "trainers",
    "ext_trainer_folder": "trainers",
    "find_trainer": "trainers",
    "register_trainers": "trainers",
}

__all__ = [
    "nnUNetTrainerBayesian", "nnUNetTrainerVCL", "nnUNetTrainerReplay", "nnUNetTrainerFedProx", "nnUNetTrainerEWC",
    "TRAINERS", "register_trainers",
    "find_trainer", "ext_trainer_folder", "build_trainer", "train", "predict", "MCnnUNetPredictor",
    "UNCERTAINTY_MAPS", "export_nnunet_datasets", "check_datasets_compatible", "NnUNetDatasetError",
    "plan_and_preprocess_sites", "site_fingerprint", "save_fingerprint", "load_fingerprint", "merge_fingerprints",
    "FingerprintError", "plan_from_fingerprints", "preprocess_with_plans", "nnunet_paths", "set_nnunet_paths",
    "POSTERIOR_FILE", "PRIOR_ENV", "REPLAY_ENV", "ReplayMixDataset",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily through __getattr__
    from monai_continual.nnunet.bayesian_trainer import (
        POSTERIOR_FILE,
        PRIOR_ENV,
        nnUNetTrainerBayesian,
        nnUNetTrainerVCL,
    )
    from monai_continual.nnunet.datasets import NnUNetDatasetError, check_datasets_compatible, export_nnunet_datasets
    from monai_continual.nnunet.environment import nnunet_paths, set_nnunet_paths
    from monai_continual.nnunet.ewc_trainer import nnUNetTrainerEWC
    from monai_continual.nnunet.fingerprints import (
        FingerprintError,
        load_fingerprint,
        merge_fingerprints,
        save_fingerprint,
        site_fingerprint,
    )
    from monai_continual.nnunet.launcher import build_trainer, predict, train
    from monai_continual.nnunet.mc_predictor import UNCERTAINTY_MAPS, MCnnUNetPredictor
    from monai_continual.nnunet.planning import plan_and_preprocess_sites, plan_from_fingerprints, preprocess_with_plans
    from monai_continual.nnunet.proximal_trainer import nnUNetTrainerFedProx
    from monai_continual.nnunet.replay_trainer import REPLAY_ENV, ReplayMixDataset, nnUNetTrainerReplay
    from monai_continual.nnunet.trainers import TRAINERS, ext_trainer_folder, find_trainer, register_trainers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
