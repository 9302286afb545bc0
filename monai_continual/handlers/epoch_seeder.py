"""Seeds every random generator at each epoch start from (seed, epoch), so a resumed stage repeats exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

from monai_continual.utils.seeding import epoch_seed, seed_everything

__all__ = ["EpochSeeder"]


class EpochSeeder:
    """At every epoch start, seed the global generators (and a Randomizable transform) from (seed, epoch).

    Everything random in an epoch (Bayesian noise, augmentation) then depends only on the epoch number, so a run
    resumed at an epoch boundary repeats what an uninterrupted run would have done.
    """

    def __init__(self, seed: int, transform: Any = None) -> None:
        self.seed = int(seed)
        self.transform = transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch)
        seed_everything(seed)
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=seed % 2**32)
