"""nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) and dataset names."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NNUNET_ENV", "nnunet_paths", "set_nnunet_paths", "results_folder", "dataset_id"]

NNUNET_ENV = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}


def nnunet_paths(required: tuple[str, ...] = ("raw", "preprocessed", "results")) -> dict[str, Path]:
    """The nnU-Net folders from the environment; a clear error names any that is not set."""
    missing = [NNUNET_ENV[k] for k in required if not os.environ.get(NNUNET_ENV[k])]
    if missing:
        raise RuntimeError(
            f"nnU-Net folders not set: {missing}. Export them (see nnU-Net's setting_up_paths.md) or pass --raw, "
            "--preprocessed and --results to `python -m monai_continual.nnunet`."
        )
    return {k: Path(os.environ[v]) for k, v in NNUNET_ENV.items() if os.environ.get(v)}


def set_nnunet_paths(raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
                     results: str | os.PathLike | None = None) -> None:
    """Set the nnU-Net folders for this process (nnU-Net reads them whenever it builds a path)."""
    for key, value in (("raw", raw), ("preprocessed", preprocessed), ("results", results)):
        if value is not None:
            os.environ[NNUNET_ENV[key]] = str(Path(value).resolve())


@contextlib.contextmanager
def results_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Direct nnU-Net's training output to ``folder`` for as long as the block lasts (one folder per stage)."""
    previous = os.environ.get(NNUNET_ENV["results"])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[NNUNET_ENV["results"]] = str(folder.resolve())
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(NNUNET_ENV["results"], None)
        else:
            os.environ[NNUNET_ENV["results"]] = previous


def dataset_id(name: str | int) -> int:
    """The numeric id of ``DatasetXXX_Name`` (or the number itself)."""
    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    match = re.fullmatch(r"Dataset(\d{3})_.+", str(name))
    if not match:
        raise ValueError(f"{name!r} is not an nnU-Net dataset name (DatasetXXX_Name) or id.")
    return int(match.group(1))
