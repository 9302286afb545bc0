"""The settings the package recommends: the one source of the Python API's defaults and of every bundle config's."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Recommended", "RECOMMENDED", "PAPER"]


@dataclass(frozen=True)
class Recommended:
    """Training, evaluation and strategy settings, named as the bundle configs name them.

    ``RECOMMENDED`` holds what the package recommends on the embedded sites (chosen on their validation cases, see
    the README); ``MonaiSettings``, ``MultiSiteExperiment``, the nnU-Net sites' replay and the bundle's entry points
    default to it (``tests/test_bundle_defaults.py`` fails when one of them disagrees). It imports nothing of the
    package, so that every layer, and a command line's help, may read it at no cost. ``PAPER`` holds the values of
    McClure et al. and Remedios et al. where they differ, each available as an override.

    Args:
        dataset_shape: voxel grid of the embedded sites.
        num_classes: classes of the embedded sites, background included.
        channels: MeshNet filters.
        epochs: epochs per site stage, the same budget for every strategy.
        batch_size: mini-batch size.
        learning_rate: Adam's, deterministic and Bayesian stages.
        optimizer_state: ``fresh``, ``site`` or ``transfer`` (``OptimizerState``).
        cache: where the training chain's deterministic part is kept between epochs (``DatasetCache``): ``memory``,
            each case loaded and normalized once per stage, not once per epoch; ``disk`` or ``none`` for a dataset
            larger than the memory.
        mc_samples: Monte Carlo passes of Bayesian models at evaluation.
        seed: the seed of everything.
        patience: single weight transfer's plateau patience, in epochs.
        epochs_per_visit: cyclic weight transfer's epochs per visit (its cycles: ``epochs // epochs_per_visit``).
        cycle_evaluation: which of cyclic weight transfer's visits are scored (``CycleEvaluation``): the last cycle's,
            which give the final model and BWT at a ``cycles``-th of the scoring of every visit.
        capacity_per_site: replay's cases kept per earlier site.
        local_epochs: federated averaging's epochs per round (its rounds: ``epochs // local_epochs``).
        ewc_lambda: EWC's penalty weight (the option's default; not tuned on the embedded sites).
        proximal_mu: FedProx's mu in the main job's ``fedprox`` row (within Li et al.'s 0.001 to 1; not tuned).

    Example::

        >>> RECOMMENDED.epochs, PAPER.learning_rate
        (30, 0.001)
        >>> RECOMMENDED.strategy_options()["cyclic_weight_transfer"]
        {'epochs_per_visit': 3, 'cycles': 10, 'evaluate': 'last_cycle'}
    """

    dataset_shape: tuple[int, ...] = (16, 20, 16)
    num_classes: int = 4
    channels: int = 12
    epochs: int = 30
    batch_size: int = 1
    learning_rate: float = 0.003
    optimizer_state: str = "site"
    cache: str = "memory"
    mc_samples: int = 3
    seed: int = 0
    patience: int = 5
    epochs_per_visit: int = 3
    cycle_evaluation: str = "last_cycle"
    capacity_per_site: int = 20
    local_epochs: int = 3
    ewc_lambda: float = 1.0
    proximal_mu: float = 0.01

    def settings(self) -> dict[str, Any]:
        """The settings a bundle config declares under these names (lists where a config has a JSON list)."""
        values = asdict(self)
        for name in ("patience", "epochs_per_visit", "cycle_evaluation", "capacity_per_site", "local_epochs",
                     "ewc_lambda", "proximal_mu"):
            values.pop(name)
        values["dataset_shape"] = list(self.dataset_shape)
        return values

    def strategy_options(self, epochs: int | None = None) -> dict[str, dict[str, Any]]:
        """Each strategy's options for a budget of ``epochs`` per site stage (default: ``self.epochs``)."""
        epochs = self.epochs if epochs is None else epochs
        return {
            "single_weight_transfer": {"patience": self.patience},
            "cyclic_weight_transfer": {"epochs_per_visit": self.epochs_per_visit,
                                       "cycles": max(1, epochs // self.epochs_per_visit),
                                       "evaluate": self.cycle_evaluation},
            "replay": {"capacity_per_site": self.capacity_per_site},
            "ewc": {"ewc_lambda": self.ewc_lambda},
            "dwc": {"rounds": 1, "finetune": True},
            "federated_averaging": {"rounds": max(1, epochs // self.local_epochs), "local_epochs": self.local_epochs},
        }


RECOMMENDED = Recommended()
#: McClure et al. (MeshNet of 96 filters, Adam lr 1e-3, 10 Monte Carlo samples, each site's optimizer restarted) and
#: Remedios et al. (1-epoch visits); the bundle README shows them as command-line overrides
PAPER = Recommended(channels=96, learning_rate=0.001, optimizer_state="fresh", mc_samples=10, epochs_per_visit=1)
