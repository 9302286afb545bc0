"""What crosses the network between the federated server and a site: stages as JSON, models as tensors.

Only these travel: a stage's description (numbers, site names, kinds; no paths), model weights or posterior
tensors, per-volume scores and counts. :func:`check_payload` refuses anything else before it is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from monai_continual.consolidation.posterior import Posterior
from monai_continual.strategies.stage import Action, NetworkKind, Stage

__all__ = [
    "stage_to_meta",
    "stage_from_meta",
    "model_to_params",
    "posterior_weights",
    "params_to_weights",
    "params_to_posterior",
    "fisher_to_params",
    "params_to_fisher",
    "split_params",
    "check_payload",
    "PayloadError",
    "REPLY_KEYS",
    "DOCUMENT_KEYS",
]

_SEP = "|"
_POSTERIOR_GROUPS = ("mean", "std", "deterministic")
#: JSON documents with their own schema and checks (an nnU-Net fingerprint up, plans down; federated/nnunet_planning.py)
DOCUMENT_KEYS = frozenset({"fingerprint", "plans"})
_ALLOWED_META_KEYS = {"task", "run", "stage", "kinds", "roles", "site", "num_examples", "published", "details",
                      "metadata", "scores", "error", "fisher", "samples_per_case", "plans_sha256", *DOCUMENT_KEYS}


#: what a site's answer may carry in its meta (the rest, e.g. what NVFlare adds, is dropped on arrival)
REPLY_KEYS = frozenset({"published", "num_examples", "details", "metadata", "fisher", "fingerprint", "plans_sha256"})
_MAX_STAGE = 100_000
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


class PayloadError(ValueError):
    """A payload that would carry more than parameters, stage numbers and metrics."""


def stage_to_meta(stage: Stage, kinds: Mapping[int, str]) -> dict[str, Any]:
    """A stage and the network kinds of the stages it names, as JSON-able meta."""
    return {"stage": stage.to_dict(), "kinds": {str(k): str(v) for k, v in kinds.items()}}


def stage_from_meta(meta: Mapping[str, Any]) -> tuple[Stage, dict[int, NetworkKind]]:
    data = dict(meta["stage"])
    named = ("number", "start", "prior", "previous_visit", "memory", "fisher")
    numbers = [data.get(k) for k in named] + list(data.get("inputs", []))
    if any(n is not None and (type(n) is not int or not 0 <= n <= _MAX_STAGE) for n in numbers):
        raise PayloadError(f"stage numbers must be integers in [0, {_MAX_STAGE}], got {numbers}.")
    data["action"], data["network"] = Action(data["action"]), NetworkKind(data["network"])
    data["sites"], data["inputs"] = tuple(data["sites"]), tuple(data["inputs"])
    fields = {f.name for f in dataclasses.fields(Stage)}
    stage = Stage(**{k: v for k, v in data.items() if k in fields})
    return stage, {int(k): NetworkKind(v) for k, v in dict(meta.get("kinds", {})).items()}


def posterior_weights(posterior: Posterior) -> dict[str, torch.Tensor]:
    """A posterior as one flat dict: ``mean/<parameter>``, ``std/<parameter>`` and ``deterministic/<name>`` (what
    :func:`params_to_posterior` reads back; the key convention of an ``ExchangeObject``'s weights too).

    Example::

        >>> sorted(posterior_weights(posterior))[:2]
        ['deterministic/model.0.bias', 'mean/model.0.conv.weight']
    """
    groups = {"mean": posterior.mean, "std": posterior.std, "deterministic": posterior.deterministic}
    return {f"{g}/{k}": v.detach().cpu() for g, tensors in groups.items() for k, v in tensors.items()}


def model_to_params(role: str, model: Mapping[str, torch.Tensor] | Posterior) -> dict[str, np.ndarray]:
    """Weights (a state dict) or a posterior as flat numpy parameters under ``role``."""
    if isinstance(model, Posterior):
        return {f"{role}{_SEP}{k}": v.numpy() for k, v in posterior_weights(model).items()}
    return {f"{role}{_SEP}weights/{k}": v.detach().cpu().numpy() for k, v in model.items()}


def split_params(params: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """role -> {"group/name": tensor}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in params.items():
        role, _, name = str(key).partition(_SEP)
        if not name:
            raise PayloadError(f"parameter {key!r} has no role prefix.")
        try:
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, OverflowError) as err:
            raise PayloadError(f"parameter {key!r} is not a numeric tensor: {err}") from err
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INTEGER_DTYPES):
            raise PayloadError(f"parameter {key!r} has dtype {tensor.dtype}; models are real floats and integers.")
        out.setdefault(role, {})[name] = tensor
    return out


def fisher_to_params(role: str, fisher: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A running Fisher (a summary of parameters, by parameter name) as flat numpy parameters under ``role``."""
    return {f"{role}{_SEP}fisher/{k}": v.detach().cpu().numpy() for k, v in fisher.items()}


def _one_group(tensors: Mapping[str, torch.Tensor], group: str, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in tensors.items():
        found, _, key = name.partition("/")
        if found != group:
            raise PayloadError(f"expected {what}, got {name!r}.")
        out[key] = tensor
    return out


def params_to_weights(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _one_group(tensors, "weights", "weights")


def params_to_fisher(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _one_group(tensors, "fisher", "a Fisher")


def params_to_posterior(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Posterior:
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in _POSTERIOR_GROUPS}
    for name, tensor in tensors.items():
        group, _, key = name.partition("/")
        if group not in groups:
            raise PayloadError(f"expected a posterior, got {name!r}.")
        groups[group][key] = tensor
    return Posterior(groups["mean"], groups["std"], groups["deterministic"], dict(metadata))


def check_payload(meta: Mapping[str, Any], params: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None) -> None:
    """Refuse a payload with other meta keys, non-tensor parameters, or strings that look like file paths.

    The documents under :data:`DOCUMENT_KEYS` (an nnU-Net fingerprint, plans) are JSON objects whose strings are file
    endings and class names by design: their receiver checks them against their own schema.

    Raises:
        PayloadError: naming the key at fault.
    """
    unknown = sorted(set(meta) - _ALLOWED_META_KEYS)
    if unknown:
        raise PayloadError(f"payload meta may not carry {unknown}.")
    for key, value in (params or {}).items():
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise PayloadError(f"payload parameter {key!r} is a {type(value).__name__}, not a tensor.")
    for key, value in (metrics or {}).items():
        if key != "scores" or not isinstance(value, list) or not all(isinstance(v, float) for v in value):
            raise PayloadError(f"payload metric {key!r} must be the list of per-volume scores.")
    for key in DOCUMENT_KEYS & set(meta):
        if not isinstance(meta[key], Mapping):
            raise PayloadError(f"payload meta {key!r} must be a JSON object, got a {type(meta[key]).__name__}.")
    for text in _strings({k: v for k, v in meta.items() if k not in DOCUMENT_KEYS}):
        if "/" in text or "\\" in text or text.endswith((".nii", ".gz", ".json", ".safetensors", ".pt")):
            raise PayloadError(f"payload meta carries {text!r}, which looks like a file path or case name.")


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
