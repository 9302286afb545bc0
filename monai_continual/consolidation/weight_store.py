"""Where weights travel between sites: a store with a manifest of who published what, when, and its hash."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.stage_files import stage_file_name
from monai_continual.utils.tensor_files import TensorFileError, read_tensor_file, tensors_sha256, write_tensor_file

__all__ = [
    "WeightEntry", "WeightStore", "DirectoryWeightStore", "WEIGHTS_FORMAT", "save_weights", "load_weights",
    "load_stage_weights",
]

WEIGHTS_FORMAT = "monai-continual-weights"
_VERSION = 1
_MANIFEST = "manifest.json"


def save_weights(path: str | os.PathLike, network: torch.nn.Module, **metadata: Any) -> str:
    """Write ``network``'s state dict as a hashed weights file, atomically; return its SHA-256."""
    return write_tensor_file(path, network.state_dict(), metadata, WEIGHTS_FORMAT, _VERSION)


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a weights file (checked against its SHA-256) into ``network``; errors name the file.

    Example::

        >>> load_weights(MeshNet(3, 1, 4, channels=16), "runs/cyclic_weight_transfer/final_model.safetensors")
    """
    state, _, _ = read_tensor_file(path, WEIGHTS_FORMAT, _VERSION)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"model file {str(path)!r} does not fit {type(network).__name__}: {err}") from err
    return network


def load_stage_weights(store: WeightStore, stage: int, network: torch.nn.Module, site: str) -> torch.nn.Module:
    """Load the weights ``store`` holds for ``stage`` into ``network`` (on the network's device) for ``site``; errors
    name the stage, the file and the site that published it.

    Example::

        >>> load_stage_weights(DirectoryWeightStore("runs/cwt/store"), 3, MeshNet(3, 1, 4, channels=16), "site_b")
    """
    entry = store.entry(stage)
    if entry is None:
        raise FileNotFoundError(f"the store {store!r} has no weights of stage {stage}.")
    state = store.load(entry)
    device = next(network.parameters()).device
    try:
        network.load_state_dict({k: v.to(device) for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(f"weights {entry.file!r} published by site {entry.site!r} (stage {entry.stage}) do not fit "
                         f"site {site!r}'s network: {err}") from err
    return network


def _entry_metadata(site: str, stage: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    return dict(metadata, site=str(site), stage=int(stage))


@dataclass(frozen=True)
class WeightEntry:
    """One published set of weights: ``file`` (relative to the store), publishing ``site``, ``stage``, hash, time."""

    file: str
    site: str
    stage: int
    sha256: str
    time: float
    metadata: dict[str, Any]


class WeightStore:
    """Interface of a weight store (a shared directory by default; object stores or a server can implement it)."""

    def publish(self, state: Mapping[str, torch.Tensor], site: str, stage: int, **metadata: Any) -> WeightEntry:
        raise NotImplementedError

    def entries(self) -> list[WeightEntry]:
        raise NotImplementedError

    def load(self, entry: WeightEntry) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def entry(self, stage: int) -> WeightEntry | None:
        """The entry published under stage number ``stage`` (the latest of them if republished), or ``None``."""
        entries = [e for e in self.entries() if e.stage == int(stage)]
        return max(entries, key=lambda e: e.time) if entries else None

    def latest(self) -> WeightEntry | None:
        """The most recently published entry (highest stage, then time), or ``None`` for an empty store."""
        entries = self.entries()
        return max(entries, key=lambda e: (e.stage, e.time)) if entries else None


class DirectoryWeightStore(WeightStore):
    """A directory shared by the sites (Remedios et al.'s deployment): safetensors files plus ``manifest.json``.

    Every file is written atomically and carries a SHA-256 that the manifest repeats; :meth:`load` checks both, so
    a half-copied or altered file is refused with an error naming it. Publishing takes a lock on the directory,
    so sites training in parallel can publish to the same store.

    Args:
        root: the shared directory (created when missing).

    Example::

        >>> store = DirectoryWeightStore("/shared/weights")
        >>> entry = store.publish(net.state_dict(), site="hospital_a", stage=3)
        >>> net.load_state_dict(store.load(store.latest()))
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"DirectoryWeightStore: {str(self.root)!r} exists and is not a directory.")
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def __repr__(self) -> str:
        return f"DirectoryWeightStore({str(self.root)!r})"

    def _read_manifest(self) -> list[dict[str, Any]]:
        path = self.root / _MANIFEST
        if not path.exists():
            return []
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["entries"]
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise TypeError("'entries' must be a list of objects")
            return entries
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise TensorFileError(f"weight store manifest {str(path)!r} is damaged: {err}") from err

    @staticmethod
    def content_sha256(state: Mapping[str, torch.Tensor], site: str, stage: int, **metadata: Any) -> str:
        """The SHA-256 :meth:`publish` would give ``state``, computed in memory (to check before storing)."""
        return tensors_sha256(state, _entry_metadata(site, stage, metadata))

    def publish(self, state: Mapping[str, torch.Tensor], site: str, stage: int, **metadata: Any) -> WeightEntry:
        safe_site = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(site))
        name = stage_file_name(stage, ".safetensors", site=safe_site)
        meta = _entry_metadata(site, stage, metadata)
        sha = write_tensor_file(self.root / name, state, meta, WEIGHTS_FORMAT, _VERSION)
        entry = WeightEntry(name, str(site), int(stage), sha, time.time(), dict(metadata))
        with self._locked():
            entries = [e for e in self._read_manifest() if e["file"] != name] + [asdict(entry)]
            atomic_write_text(
                self.root / _MANIFEST, json.dumps({"version": _VERSION, "entries": entries}, indent=2) + "\n"
            )
        return entry

    def entries(self) -> list[WeightEntry]:
        path = self.root / _MANIFEST
        out = []
        for index, e in enumerate(self._read_manifest()):
            try:
                entry = WeightEntry(**e)
                valid = (isinstance(entry.file, str) and "/" not in entry.file and entry.file not in ("", ".", "..")
                         and isinstance(entry.site, str) and type(entry.stage) is int and isinstance(entry.sha256, str)
                         and isinstance(entry.time, (int, float)) and isinstance(entry.metadata, dict))
            except TypeError as err:
                raise TensorFileError(
                    f"weight store manifest {str(path)!r}: entry {index} is malformed: {err}"
                ) from err
            if not valid:
                raise TensorFileError(
                    f"weight store manifest {str(path)!r}: entry {index} has fields of the wrong type: {e!r}"
                )
            out.append(entry)
        return out

    def load(self, entry: WeightEntry) -> dict[str, torch.Tensor]:
        tensors, _, sha = read_tensor_file(self.root / entry.file, WEIGHTS_FORMAT, _VERSION)
        if sha != entry.sha256:
            raise TensorFileError(
                f"weight file {str(self.root / entry.file)!r} does not match the manifest's SHA-256 (published by "
                f"site {entry.site!r} at stage {entry.stage}); it was replaced or altered."
            )
        return tensors
