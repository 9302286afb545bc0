"""A run's state on disk: which stages finished, what each loaded and published, and its per-volume scores."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.strategies.layout import STATE_FILE
from monai_continual.strategies.stage import Stage
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.hashing import config_sha256

__all__ = ["StageRecord", "RunState", "RunStateError", "STATE_FILE"]

_FORMAT = "monai-continual-run"
_VERSION = 2


class RunStateError(ValueError):
    """A run directory that holds another run, or a state file that cannot be read."""


@dataclass
class StageRecord:
    """One finished stage: its number, label and sites, the hashes it loaded and published, its scores."""

    number: int
    label: str
    sites: list[str]
    action: str
    loaded: dict[str, Any]
    published: str | None
    num_examples: int
    scores: dict[str, list[float]] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class RunState:
    """The state of one run in ``directory/state.json``, saved atomically after every stage.

    The run is identified by the SHA-256 of its configuration (strategy, schedule, settings): a directory holding a
    run with another configuration is refused rather than mixed.

    Args:
        directory: the run directory.
        strategy: the run's name.
        config: a JSON-able description of everything that determines the run's result.

    Example::

        >>> state = RunState.open("runs/vcl", "vcl", {"stages": [...], "seed": 0})
        >>> state.done(3), state.matrix(stages, sites)
    """

    def __init__(self, directory: str | os.PathLike, strategy: str, config: Any) -> None:
        self.directory = Path(directory)
        self.strategy = strategy
        self.config = config
        self.config_hash = config_sha256(config)
        self.records: dict[int, StageRecord] = {}

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    @classmethod
    def read(cls, directory: str | os.PathLike) -> RunState:
        """A finished (or interrupted) run's state as it was saved, with the configuration it names (for reports,
        which do not know the configuration a backend ran with).

        Raises:
            RunStateError: the directory holds no run state, or a damaged one.

        Example::

            >>> [r.label for r in RunState.read("outputs/experiment/runs/vcl").stage_records()]
        """
        path = Path(directory) / STATE_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            strategy, config = saved["strategy"], saved["config"]
        except FileNotFoundError as err:
            raise RunStateError(f"no run state in {str(directory)!r}.") from err
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise RunStateError(f"run state {str(path)!r} is damaged or of an older format: {err}") from err
        return cls.open(directory, strategy, config)

    @classmethod
    def open(cls, directory: str | os.PathLike, strategy: str, config: Any) -> RunState:
        """Load the run's state (checked against ``config``) or start a new one."""
        state = cls(directory, strategy, config)
        if not state.path.exists():
            return state
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
            saved_hash = data["config_hash"]
            records = [StageRecord(**r) for r in data["stages"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise RunStateError(f"run state {str(state.path)!r} is damaged or of an older format: {err}") from err
        if saved_hash != state.config_hash:
            raise RunStateError(
                f"run directory {str(state.directory)!r} holds a run of {data.get('strategy')!r} with other settings "
                "(or made by an earlier version of monai-continual); use another output directory or remove it to "
                "start over."
            )
        state.records = {r.number: r for r in records}
        return state

    def done(self, number: int) -> bool:
        return number in self.records

    def complete(self, record: StageRecord) -> None:
        """Record a finished stage and save the state atomically."""
        self.records[record.number] = record
        self.save()

    def save(self) -> None:
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "strategy": self.strategy,
            "config_hash": self.config_hash,
            "config": self.config,
            "completed": len(self.records),
            "stages": [asdict(self.records[n]) for n in sorted(self.records)],
        }
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")

    def stage_records(self) -> list[StageRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def scores(self, number: int) -> dict[str, list[float]]:
        """Per-volume scores of a finished, evaluated stage."""
        record = self.records.get(number)
        if record is None or record.scores is None:
            raise KeyError(f"stage {number} of {self.strategy!r} has no scores.")
        return record.scores

    def matrix(self, stages: Sequence[Stage], sites: Sequence[str]) -> ContinualMatrix:
        """The R matrix of the finished evaluated stages: row = stage, cell = the site's mean per-volume score."""
        # complete: every training stage scored (cyclic transfer's earlier cycles and FedAvg's local rounds may not be)
        matrix = ContinualMatrix(list(sites), complete=all(s.evaluate for s in stages if s.is_training))
        for stage in stages:
            record = self.records.get(stage.number)
            if record is None or record.scores is None or not stage.evaluate:
                continue
            # a site that did not report (a dead federated client) leaves its cell empty
            means: Mapping[str, float] = {s: float(np.mean(v)) for s, v in record.scores.items() if v}
            matrix.add_stage(list(stage.sites), means, stage.label)
        return matrix

    def results(self, stages: Sequence[Stage]) -> dict[str, dict[str, list[float]]]:
        """Named results (``stage.result``) -> their per-volume scores."""
        return {s.result: self.records[s.number].scores for s in stages if s.result and s.number in self.records}
