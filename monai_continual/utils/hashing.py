"""The two hashes a run relies on: of tensor content (what crossed a site) and of a configuration (what a run is)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["tensors_sha256", "config_sha256"]


def tensors_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) in name order, then the metadata as sorted JSON.

    The hash of content, not of a file: the same weights give the same hash whatever file or process holds them.

    Example::

        >>> tensors_sha256(net.state_dict())[:12]
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(dict(metadata or {}), sort_keys=True).encode())
    return digest.hexdigest()


def config_sha256(config: Any) -> str:
    """SHA-256 of a JSON-able description (keys sorted; other objects by ``str``): a run's identity.

    Example::

        >>> config_sha256({"strategy": "vcl", "epochs": 4}) == config_sha256({"epochs": 4, "strategy": "vcl"})
        True
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
