"""``nnUNetTrainerReplay``: train on this site's dataset plus a replay buffer of earlier sites' preprocessed cases.

Replay (Karthik et al.) keeps up to K cases of every earlier site and mixes them into the current site's training
data: here, into nnU-Net's own data loader, so patches of replayed cases get the same sampling, foreground
oversampling and batchgenerators augmentation as the site's own. Replayed cases must have been preprocessed with the
same plans (checked, the dataset at fault is named). Replay moves (preprocessed) images between sites: use it where
that is allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from monai_continual.nnunet.planning import shared_plans

__all__ = ["nnUNetTrainerReplay", "ReplayMixDataset", "REPLAY_ENV", "load_replay_sources", "replay_sources_for"]

#: environment variable naming a JSON file of replay sources (for nnU-Net's own CLI)
REPLAY_ENV = "MONAI_CONTINUAL_REPLAY"


class ReplayMixDataset:
    """The union of several nnU-Net datasets, as one dataset nnU-Net's data loader can sample from.

    Identifiers of replayed cases are prefixed with their dataset name (``"Dataset501_site_a/site_a_003"``) so
    that cases of different sites never collide.

    Args:
        own: this site's training dataset.
        replayed: dataset name -> that dataset's cases to replay.
    """

    def __init__(self, own: Any, replayed: Mapping[str, Any]) -> None:
        self.source_folder = own.source_folder
        self.folder_with_segs_from_previous_stage = own.folder_with_segs_from_previous_stage
        self._where: dict[str, tuple[Any, str]] = {i: (own, i) for i in own.identifiers}
        for name, dataset in replayed.items():
            for identifier in dataset.identifiers:
                self._where[f"{name}/{identifier}"] = (dataset, identifier)
        self.identifiers = list(self._where)
        self.num_replayed = len(self.identifiers) - len(own.identifiers)

    def __getitem__(self, identifier: str) -> Any:
        return self.load_case(identifier)

    def load_case(self, identifier: str) -> Any:
        dataset, original = self._where[identifier]
        return dataset.load_case(original)


def load_replay_sources(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a replay source file: ``{"sources": {"<preprocessed data folder>": ["case", ...], ...}}``."""
    try:
        document = json.loads(Path(path).read_text())
        sources = document["sources"]
        if not isinstance(sources, dict) or not all(isinstance(v, list) for v in sources.values()):
            raise ValueError("'sources' must map folders to lists of case identifiers")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"replay source file {str(path)!r} is unreadable: {e}") from None
    return {str(k): [str(i) for i in v] for k, v in sources.items()}


class nnUNetTrainerReplay(nnUNetTrainer):
    """nnUNetTrainer whose training cases are this dataset's plus replayed cases of earlier sites.

    The replayed cases come from ``trainer.replay_sources`` (preprocessed data folder -> case identifiers; set by
    ``python -m monai_continual.nnunet train --replay DATASET[:K]``) or from the JSON file named by
    ``MONAI_CONTINUAL_REPLAY``. Validation stays on this site's own cases.

    Example::

        python -m monai_continual.nnunet train 502 3d_fullres all -tr nnUNetTrainerReplay --replay 501:5 -device cpu
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        source_file = os.environ.get(REPLAY_ENV)
        self.replay_sources: dict[str, list[str]] = load_replay_sources(source_file) if source_file else {}
        self.num_replayed = 0

    def _check_source(self, folder: Path) -> str:
        plans_path = folder.parent / f"{self.plans_manager.plans_name}.json"
        if not folder.is_dir() or not plans_path.is_file():
            raise FileNotFoundError(
                f"replay source {str(folder)!r}: not a preprocessed data folder next to {plans_path.name}."
            )
        if shared_plans(json.loads(plans_path.read_text())) != shared_plans(self.plans_manager.plans):
            raise ValueError(f"replay source {folder.parent.name}: its plans differ from "
                             f"{self.plans_manager.dataset_name}'s; replayed cases must be preprocessed with the same "
                             "plans (plan once, move the plans).")
        return folder.parent.name

    def get_tr_and_val_datasets(self) -> tuple[Any, Any]:
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if not self.replay_sources:
            return dataset_tr, dataset_val
        replayed = {}
        for folder, identifiers in self.replay_sources.items():
            folder = Path(folder)
            name = self._check_source(folder)
            dataset_class = infer_dataset_class(str(folder))
            missing = [i for i in identifiers if i not in dataset_class.get_identifiers(str(folder))]
            if missing:
                raise FileNotFoundError(f"replay source {name}: cases {missing} are not in {folder}.")
            replayed[name] = dataset_class(str(folder), list(identifiers))
        mixed = ReplayMixDataset(dataset_tr, replayed)
        self.num_replayed = mixed.num_replayed
        self.print_to_log_file(f"Replay: {len(dataset_tr.identifiers)} own training cases + {self.num_replayed} "
                               f"replayed from {sorted(replayed)}.")
        return mixed, dataset_val


def replay_sources_for(
    preprocessed_folders: Sequence[str | os.PathLike], capacity_per_site: int, seed: int = 0
) -> dict[str, list[str]]:
    """Choose up to ``capacity_per_site`` cases of every earlier site's preprocessed folder (random, seeded).

    The choice is :class:`monai_continual.data.ReplayBuffer`'s random policy, one site per folder, named after the
    folder's dataset (``Dataset501_site_a``), so that it does not depend on where the folders are.
    """
    from monai_continual.data.replay_buffer import ReplayBuffer

    buffer = ReplayBuffer(capacity_per_site=capacity_per_site, policy="random", seed=seed)
    chosen = {}
    for folder in preprocessed_folders:
        folder = str(folder)
        identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder))
        if not identifiers:
            raise FileNotFoundError(f"replay source {folder!r} holds no preprocessed cases.")
        kept = buffer.add_site(Path(folder).parent.name, [{"identifier": i} for i in identifiers])
        chosen[folder] = sorted(item["identifier"] for item in kept)
    return chosen
