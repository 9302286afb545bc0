"""The small protocol the strategy engine drives: a backend trains, consolidates and evaluates stages."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from monai_continual.strategies.stage import NetworkKind, Stage

__all__ = ["StageOutput", "StageExecutor", "NonFiniteTrainingError", "check_finite_weights", "evaluation_seed"]


class NonFiniteTrainingError(RuntimeError):
    """A stage's loss or weights became non-finite: it stops, names site and stage, and publishes nothing.

    Earlier stages' results stay; the run resumes from the stage's last good epoch once the cause is fixed.
    """


def check_finite_weights(state: Mapping[str, torch.Tensor], stage: Stage) -> None:
    """Raise :class:`NonFiniteTrainingError` naming site, stage and the first entries when ``state`` (a network's
    ``state_dict()``) has non-finite floating-point values."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteTrainingError(
            f"site {stage.site!r}, stage {stage.number} ({stage.label}): non-finite weights in {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}; nothing was published."
        )


def evaluation_seed(seed: int, number: int, site: str) -> int:
    """The seed of stage ``number``'s evaluation at ``site`` (Monte Carlo samples, dropout): the same in every
    backend and process, so a resumed or federated run scores exactly as an uninterrupted in-process one."""
    return int(seed) * 15_485_863 + int(number) * 7_919 + zlib.crc32(site.encode())


@dataclass
class StageOutput:
    """What a stage published.

    Attributes:
        published: content SHA-256 of the published model (weights or posterior); ``None`` for an ensemble.
        loaded: content SHA-256 of each input it read, by role (``"start"``, ``"prior"``, ``"inputs"``...).
        num_examples: training examples (the FedAvg weight; the ELBO's default N).
        details: anything else worth recording (dataset size, replayed items, epochs run, plateau...).
    """

    published: str | None
    loaded: dict[str, Any] = field(default_factory=dict)
    num_examples: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StageExecutor(Protocol):
    """A backend. Every method is given stage numbers, never "the latest", and must be idempotent:

    - :meth:`train` publishes the stage's model as its last step (side outputs such as the optimizer state or the
      replay memory are saved before, under the stage's number). Called for a stage whose model is already
      published, it returns that model's record without training again.
    - :meth:`consolidate` is deterministic in its inputs; redoing it rewrites the same result.
    - :meth:`evaluate` scores the stage's published model on one site's test data, seeded by stage and site.
    - A stage whose loss or weights turn non-finite raises :class:`NonFiniteTrainingError` and publishes nothing.
    """

    def initialize(self, network: NetworkKind) -> StageOutput:
        """Publish the initial weights as stage 0 (or return them if already published)."""

    def train(self, stage: Stage) -> StageOutput:
        """Train ``stage`` from its inputs and publish its model."""

    def consolidate(self, stage: Stage, weights: Sequence[float]) -> StageOutput:
        """Combine ``stage.inputs`` (``weights``: their training-set sizes) and publish the result."""

    def evaluate(self, stage: Stage, site: str) -> list[float]:
        """Per-volume scores of ``stage``'s model on ``site``'s test data."""
