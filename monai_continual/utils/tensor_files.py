"""Safetensors files with a format name, JSON metadata and a SHA-256 of their content, checked on every read."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from monai_continual.utils.atomic import atomic_write
from monai_continual.utils.hashing import tensors_sha256

__all__ = ["TensorFileError", "tensors_sha256", "write_tensor_file", "read_tensor_file"]


class TensorFileError(ValueError):
    """A tensor file is missing, unreadable, altered, of another format, or of an unsupported version."""


def write_tensor_file(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], kind: str, version: int
) -> str:
    """Write ``tensors`` as safetensors atomically, with the header fields the reader checks; return the SHA-256.

    Example::

        >>> sha = write_tensor_file("w.safetensors", net.state_dict(), {"site": "A"}, kind="weights", version=1)
    """
    plain, storages = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (nnU-Net's decoder holds its encoder: the same weights under two
        # names); each name gets its own copy, so the file loads back into either module
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        plain[name] = t.clone() if key is not None and key in storages else t
        storages.add(key)
    sha = tensors_sha256(plain, metadata)
    header = {
        "format": kind,
        "format_version": str(version),
        "metadata": json.dumps(metadata, sort_keys=True),
        "sha256": sha,
    }
    with atomic_write(path) as tmp:
        save_file(plain, str(tmp), metadata=header)
    return sha


def read_tensor_file(
    path: str | os.PathLike, kind: str, version: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read a file written by :func:`write_tensor_file`; return tensors, metadata and SHA-256.

    Raises:
        TensorFileError: naming the file, when it is missing, truncated, not safetensors, of another format or
            version, or its content does not match its SHA-256.
    """
    path = Path(path)
    where = f"{kind} file {str(path)!r}"
    try:
        exists = path.is_file()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte: not a file this reader can open
        raise TensorFileError(f"{where} cannot be opened: {err}") from err
    if not exists:
        raise TensorFileError(f"{where} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise TensorFileError(f"{where} is unreadable (truncated or not safetensors): {err}") from err
    if header.get("format") != kind:
        raise TensorFileError(f"{where} is not a {kind} file (format {header.get('format')!r}).")
    if header.get("format_version") != str(version):
        raise TensorFileError(
            f"{where} has format version {header.get('format_version')!r}; this version reads {version}."
        )
    try:
        metadata = json.loads(header["metadata"])
    except (KeyError, json.JSONDecodeError) as err:
        raise TensorFileError(f"{where} has a damaged header: {err}") from err
    sha = tensors_sha256(tensors, metadata)
    if sha != header.get("sha256"):
        raise TensorFileError(f"{where}: SHA-256 mismatch, the file was altered or damaged.")
    return tensors, metadata, sha
