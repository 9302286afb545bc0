"""Optimizer state as safetensors plus JSON: tensors in the file, hyper-parameters and scalars in its header.

Optimizer state that travels with the weights crosses a site boundary, so it is never pickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from monai_continual.utils.tensor_files import TensorFileError, read_tensor_file, write_tensor_file

__all__ = ["OPTIMIZER_FORMAT", "save_optimizer_state", "load_optimizer_state"]

OPTIMIZER_FORMAT = "monai-continual-optimizer"
_VERSION = 1
_JSON_TYPES = (bool, int, float, str, type(None))


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, _JSON_TYPES):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise TypeError(f"optimizer state: {where} holds a {type(value).__name__}, which cannot be stored as JSON.")


def save_optimizer_state(path: str | os.PathLike, state: Mapping[str, Any], **metadata: Any) -> str:
    """Write ``optimizer.state_dict()`` as a safetensors file, atomically; return its SHA-256.

    Example::

        >>> save_optimizer_state("site_a/optimizer_stage0003.safetensors", optimizer.state_dict(), site="site_a")
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = _jsonable(value, f"state {pid}.{key}")
    header = {"param_groups": _jsonable(state["param_groups"], "param_groups"), "scalars": scalars,
              "metadata": _jsonable(dict(metadata), "metadata")}
    return write_tensor_file(path, tensors, header, OPTIMIZER_FORMAT, _VERSION)


def load_optimizer_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file of :func:`save_optimizer_state` back into an ``optimizer.load_state_dict`` argument.

    Raises:
        TensorFileError: naming the file, when it is missing, altered, or not an optimizer state file.
    """
    tensors, header, _ = read_tensor_file(path, OPTIMIZER_FORMAT, _VERSION)
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            pid, _, key = name.partition("/")
            state.setdefault(int(pid), {})[key] = tensor
        for pid, values in header["scalars"].items():
            state.setdefault(int(pid), {}).update(values)
        return {"state": state, "param_groups": header["param_groups"]}
    except (KeyError, ValueError, TypeError) as err:
        raise TensorFileError(f"optimizer state file {str(path)!r} has a damaged header: {err}") from err
