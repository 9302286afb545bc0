"""nnU-Net v2 integration: Bayesian, VCL and replay trainers, a launcher, and strategies across sites' datasets.

Imported only when nnU-Net v2 is installed (``pip install "monai-continual[nnunet]"``); nothing else in the package
imports it. Command line: ``python -m monai_continual.nnunet --help``.
"""

from __future__ import annotations

try:
    import nnunetv2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "monai_continual.nnunet needs nnU-Net v2: pip install nnunetv2 (see the README for a CPU-only install)."
    ) from e

from monai_continual.nnunet.bayesian_trainer import POSTERIOR_FILE, PRIOR_ENV, nnUNetTrainerBayesian, nnUNetTrainerVCL
from monai_continual.nnunet.datasets import NnUNetDatasetError, check_datasets_compatible, export_nnunet_datasets
from monai_continual.nnunet.environment import nnunet_paths, set_nnunet_paths
from monai_continual.nnunet.launcher import build_trainer, predict, train
from monai_continual.nnunet.mc_predictor import UNCERTAINTY_MAPS, MCnnUNetPredictor
from monai_continual.nnunet.planning import plan_and_preprocess_sites
from monai_continual.nnunet.replay_trainer import REPLAY_ENV, ReplayMixDataset, nnUNetTrainerReplay
from monai_continual.nnunet.trainers import TRAINERS, ext_trainer_folder, find_trainer, register_trainers

__all__ = [
    "nnUNetTrainerBayesian", "nnUNetTrainerVCL", "nnUNetTrainerReplay", "TRAINERS", "register_trainers",
    "find_trainer", "ext_trainer_folder", "build_trainer", "train", "predict", "MCnnUNetPredictor",
    "UNCERTAINTY_MAPS", "export_nnunet_datasets", "check_datasets_compatible", "NnUNetDatasetError",
    "plan_and_preprocess_sites", "nnunet_paths", "set_nnunet_paths", "POSTERIOR_FILE", "PRIOR_ENV", "REPLAY_ENV",
    "ReplayMixDataset",
]
