"""What a federated job may set at a site: an allow-list of keys, each a plain JSON literal, never an expression.

A MONAI bundle config evaluates strings that start with ``$`` (Python), resolves ``@`` references and ``%`` macros.
A job's overrides are written by whoever submits the job, and a site applies them to its own config: an override
``epochs="$__import__('os').system(...)"`` would run code at every hospital, around NVFlare's allow-list of classes.
So overrides are data: only the keys listed here, only JSON numbers, booleans, ``null``, strings that do not start
with ``$``, ``@`` or ``%``, and lists of those. The site's own config decides everything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MONAI_SITE_KEYS", "NNUNET_SITE_KEYS", "OverrideError", "check_overrides", "parse_overrides"]

#: keys a job may set in a site's MONAI bundle config (``configs/federated.json``)
MONAI_SITE_KEYS = frozenset({
    "num_classes", "channels", "dilations", "epochs", "batch_size", "learning_rate", "bayes_learning_rate",
    "optimizer_state", "mc_samples", "seed", "device", "threads", "datalist", "in_channels", "pixdim", "axcodes",
    "patch_size", "samples_per_volume",
    "sw_batch_size", "sw_overlap", "amp", "num_workers", "cache",
})
#: settings a job may give an nnU-Net site (``nnunet_client.py``)
NNUNET_SITE_KEYS = frozenset({
    "configuration", "plans", "fold", "iterations_per_epoch", "val_iterations_per_epoch", "device", "mirroring",
    "mc_samples", "threads", "replay_capacity", "seed",
})
_EXPRESSION_PREFIXES = ("$", "@", "%")


class OverrideError(ValueError):
    """An override that is not an allowed key with a plain JSON literal value."""


def _check_value(key: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise OverrideError(f"override {key!r}: {value!r} is not a finite number.")
        return
    if isinstance(value, str):
        if value.lstrip().startswith(_EXPRESSION_PREFIXES):
            raise OverrideError(
                f"override {key!r}: {value!r} starts with '$', '@' or '%', which a bundle config would evaluate as an "
                "expression, a reference or a macro; overrides are plain JSON values."
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise OverrideError(f"override {key!r}: nested containers are not allowed, got {value!r}.")
            _check_value(key, item)
        return
    raise OverrideError(f"override {key!r}: a {type(value).__name__} is not a plain JSON value ({value!r}).")


def check_overrides(overrides: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """Return ``overrides`` as a dict after checking every key and value.

    Args:
        overrides: ``key -> value`` as the job would set them at a site.
        allowed: the keys a job may set.

    Raises:
        OverrideError: naming the key, for a key not allowed or a value that is not a plain JSON literal.

    Example::

        >>> check_overrides({"epochs": 4, "device": "cpu"}, MONAI_SITE_KEYS)
        {'epochs': 4, 'device': 'cpu'}
    """
    allowed = frozenset(allowed)
    out = {}
    for key, value in overrides.items():
        if key not in allowed:
            raise OverrideError(f"override {key!r} may not be set by a federated job; allowed keys: {sorted(allowed)}.")
        _check_value(key, value)
        out[key] = value
    return out


def parse_overrides(items: Iterable[str], allowed: Iterable[str]) -> dict[str, Any]:
    """``["key=<JSON>", ...]`` (a client script's ``--set`` arguments) as checked overrides.

    Raises:
        OverrideError: naming the argument, for a missing ``=``, a value that is not JSON, or a refused override.

    Example::

        >>> parse_overrides(["epochs=4", 'device="cpu"'], MONAI_SITE_KEYS)
        {'epochs': 4, 'device': 'cpu'}
    """
    parsed = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep:
            raise OverrideError(f"--set {item!r}: expected KEY=JSON.")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError as err:
            raise OverrideError(f"--set {item!r}: the value is not JSON ({err}).") from err
    return check_overrides(parsed, allowed)
