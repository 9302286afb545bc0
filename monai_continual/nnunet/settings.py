"""One frozen settings object for the nnU-Net sites of a run (what ``run_sites`` and the federated site share)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from monai_continual.recommended import RECOMMENDED

__all__ = ["NnUNetSiteSettings"]


@dataclass(frozen=True)
class NnUNetSiteSettings:
    """How every stage of an nnU-Net run trains and is evaluated.

    Args:
        configuration, fold, plans: nnU-Net's; ``fold="all"`` trains on every training case of a site.
        trainer: the strategy's trainer, or a subclass of it (``None``: the strategy's own).
        iterations_per_epoch, val_iterations_per_epoch: nnU-Net's iterations (``None``: the trainer's own).
        replay_capacity: K, replayed cases per earlier site (default: ``RECOMMENDED.capacity_per_site``).
        device: ``"cuda"``, ``"cpu"``... (``None``: CUDA when available).
        mirroring: nnU-Net's mirroring at evaluation.
        mc_samples: Monte Carlo passes when evaluating Bayesian stages (1: the posterior mean).
        seed: seeds every stage and the choice of replayed cases.
        progress: print a line per stage.
        save_every: a stage writes its resumable checkpoint every this many epochs (and after its last); a stage
            rerun after an interruption continues from it (results do not depend on it).

    Example::

        >>> settings = NnUNetSiteSettings(iterations_per_epoch=50, device="cpu")
        >>> run_sites(["Dataset501_site_a", "Dataset502_site_b"], "fine_tuning", "runs/ft", settings)
    """

    configuration: str = "3d_fullres"
    fold: int | str = "all"
    plans: str = "nnUNetPlans"
    trainer: str | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    replay_capacity: int = RECOMMENDED.capacity_per_site
    device: str | None = None
    mirroring: bool = True
    mc_samples: int = 1
    seed: int = 0
    progress: bool = True
    save_every: int = 1

    def __post_init__(self) -> None:
        for name in ("replay_capacity", "mc_samples", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"nnU-Net settings: {name} must be an integer >= 1, got {value!r}.")
        for name in ("iterations_per_epoch", "val_iterations_per_epoch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"nnU-Net settings: {name} must be None or an integer >= 1, got {value!r}.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NnUNetSiteSettings:
        """The settings named in ``values``; keys that are not settings are ignored (a site's other overrides)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def torch_device(self) -> torch.device:
        from monai_continual.nnunet.launcher import default_device

        return torch.device(self.device or default_device())

    def identity(self) -> dict[str, Any]:
        """What makes a run's results what they are (the device, progress and checkpoint interval do not)."""
        values = asdict(self)
        values["fold"] = str(self.fold)
        for name in ("device", "progress", "save_every"):
            values.pop(name)
        return values
