"""Where a run keeps what its stages published, by stage number: weights in a store, posteriors as files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_continual.consolidation.posterior import Posterior
from monai_continual.consolidation.weight_store import DirectoryWeightStore
from monai_continual.strategies.layout import RunLayout
from monai_continual.strategies.stage import NetworkKind, Stage
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.hashing import tensors_sha256
from monai_continual.utils.tensor_files import read_tensor_file, write_tensor_file

__all__ = ["StageArtifacts", "FISHER_FORMAT"]

#: the format name of a running Fisher file (safetensors: a summary of parameters, it may travel with the weights)
FISHER_FORMAT = "monai-continual-fisher"
_FISHER_VERSION = 1


def _fisher_metadata(number: int) -> dict[str, int]:
    return {"stage": int(number)}


class StageArtifacts:
    """The published models of a run's stages, looked up by stage number (every backend keeps them this way).

    Deterministic stages (and stage 0, the initial weights) publish weights to the run's store (a
    :class:`DirectoryWeightStore` with a hashed manifest); Bayesian stages publish a posterior file (paths:
    :class:`~monai_continual.strategies.layout.RunLayout`). Hashes are of content, so they agree across processes
    and backends.

    Args:
        run_dir: the run directory.
        stages: the schedule (to know each stage's network kind).

    Example::

        >>> artifacts = StageArtifacts("runs/dwc", stages)
        >>> artifacts.published_sha(3), artifacts.loaded(stages[3])
    """

    def __init__(self, run_dir: str | os.PathLike, stages: Sequence[Stage] | Mapping[int, Stage]) -> None:
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        self.stages = dict(stages) if isinstance(stages, Mapping) else {s.number: s for s in stages}
        self.store = DirectoryWeightStore(self.layout.store)
        self.posterior_file = self.layout.posterior_file
        self.check_file = self.layout.check_file
        self.receipt_file = self.layout.receipt_file

    def write_receipt(self, number: int, sha256: str, **fields: Any) -> None:
        """Record ``fields`` for the model of content ``sha256`` (written before the model is published)."""
        path = self.receipt_file(number)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"sha256": sha256, **fields}, sort_keys=True, default=str) + "\n")

    def receipt(self, number: int, sha256: str) -> dict[str, Any]:
        """The fields recorded for stage ``number``'s model of content ``sha256`` (empty when none match)."""
        path = self.receipt_file(number)
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and data.get("sha256") == sha256 else {}

    def kind(self, number: int) -> NetworkKind:
        """The kind of model stage ``number`` publishes (stage 0: the deterministic initial weights)."""
        stage = self.stages.get(number)
        return NetworkKind.MAP if stage is None else stage.network

    def published_sha(self, number: int) -> str | None:
        """Content SHA-256 of what stage ``number`` published, or ``None`` when it has not (yet)."""
        if self.kind(number) == NetworkKind.BAYES:
            path = self.posterior_file(number)
            return Posterior.load(path).sha256() if path.exists() else None
        entry = self.store.entry(number)
        return None if entry is None else entry.sha256

    def loaded(self, stage: Stage) -> dict[str, Any]:
        """The content hashes of a stage's inputs, by role."""
        loaded: dict[str, Any] = {}
        if stage.start is not None:
            loaded["start"] = self.published_sha(stage.start)
        if stage.prior is not None:
            loaded["prior"] = self.published_sha(stage.prior)
        if stage.inputs:
            loaded["inputs"] = [self.published_sha(i) for i in stage.inputs]
        if stage.fisher is not None:
            loaded["fisher"] = self.fisher_sha(stage.fisher)
        return loaded

    @staticmethod
    def fisher_content_sha256(fisher: Mapping[str, torch.Tensor], number: int) -> str:
        """The content SHA-256 stage ``number``'s running Fisher ``fisher`` is published under."""
        return tensors_sha256(fisher, _fisher_metadata(number))

    def save_fisher(self, number: int, fisher: Mapping[str, torch.Tensor]) -> str:
        """Publish stage ``number``'s running Fisher (a side output, saved before the stage's weights); return its
        content SHA-256."""
        path = self.layout.fisher_file(number)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_tensor_file(path, fisher, _fisher_metadata(number), FISHER_FORMAT, _FISHER_VERSION)

    def fisher(self, number: int) -> dict[str, torch.Tensor]:
        """The running Fisher stage ``number`` published (checked against its hash)."""
        return read_tensor_file(self.layout.fisher_file(number), FISHER_FORMAT, _FISHER_VERSION)[0]

    def fisher_sha(self, number: int) -> str | None:
        """Content SHA-256 of stage ``number``'s running Fisher, or ``None`` when it has not published one."""
        path = self.layout.fisher_file(number)
        return read_tensor_file(path, FISHER_FORMAT, _FISHER_VERSION)[2] if path.exists() else None

    def weights(self, number: int) -> dict[str, torch.Tensor]:
        """The weights stage ``number`` published (checked against the manifest's hash)."""
        entry = self.store.entry(number)
        if entry is None:
            raise FileNotFoundError(f"stage {number}'s weights are not in the store {self.store.root}.")
        return self.store.load(entry)

    def posterior(self, number: int) -> Posterior:
        """The posterior stage ``number`` published."""
        return Posterior.load(self.posterior_file(number))
