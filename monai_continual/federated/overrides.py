"""What a federated job may set at a site: an allow-list of keys, each a plain JSON literal, never an expression.

A MONAI bundle config evaluates strings that start with ``$`` (Python), resolves ``@`` references and ``%`` macros.
A job's overrides are written by whoever submits the job, and a site applies them to its own config: an override
``epochs="$__import__('os').system(...)"`` would run code at every hospital, around NVFlare's allow-list of classes.
So overrides are data: only the keys listed here, only JSON numbers, booleans, ``null``, strings that do not start
with ``$``, ``@`` or ``%``, and lists of those. The site's own config decides everything else.

One key is a dict: ``network_def``, the network to build (:func:`check_network_def`): a class of
``monai.networks.nets`` or ``monai_continual.networks`` and its arguments, each a literal as above or a reference to
one of the literal keys (``"@num_classes"``), which the site resolves against its own config.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from monai_continual.federated.network_spec import NETWORK_DEF_KEY, TARGET_KEY, resolve_network

__all__ = ["MONAI_SITE_KEYS", "NNUNET_SITE_KEYS", "OverrideError", "check_network_def", "check_overrides",
           "parse_overrides"]

#: keys a job may set in a site's MONAI bundle config (``configs/federated.json``)
MONAI_SITE_KEYS = frozenset({
    "num_classes", "channels", "dilations", "epochs", "batch_size", "learning_rate", "bayes_learning_rate",
    "optimizer_state", "mc_samples", "seed", "device", "threads", "datalist", "in_channels", "pixdim", "axcodes",
    "patch_size", "samples_per_volume", "sw_roi_size", "sw_batch_size", "sw_overlap", "amp", "num_workers", "cache",
    NETWORK_DEF_KEY,
})
#: what a forwarded network argument may reference (``"@num_classes"``): the site's literal keys
NETWORK_REFERENCES = MONAI_SITE_KEYS - {NETWORK_DEF_KEY}
#: settings a job may give an nnU-Net site (``nnunet_client.py``)
NNUNET_SITE_KEYS = frozenset({
    "configuration", "plans", "fold", "iterations_per_epoch", "val_iterations_per_epoch", "device", "mirroring",
    "mc_samples", "threads", "replay_capacity", "seed",
})
_EXPRESSION_PREFIXES = ("$", "@", "%")
#: network arguments that fetch weights or read files (pretrained=, pretrained_url=, path_or_repo_id=, filename=, ...)
_FETCHES = re.compile(r"pretrain|url|path|file|repo|ckpt|checkpoint|download|cache|hub|^weights?$", re.IGNORECASE)
_PLACEHOLDER = "${"  # NVFlare's ${secret:NAME} / ${secret:file:PATH}, resolved at the site before the script starts


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
        if _PLACEHOLDER in value:
            raise OverrideError(
                f"override {key!r}: {value!r} holds '{_PLACEHOLDER}', which NVFlare replaces in a site's script "
                "arguments with the site's own secrets (environment variables, files); overrides are plain values."
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise OverrideError(f"override {key!r}: nested containers are not allowed, got {value!r}.")
            _check_value(key, item)
        return
    raise OverrideError(f"override {key!r}: a {type(value).__name__} is not a plain JSON value ({value!r}).")


def check_network_def(definition: Any) -> dict[str, Any]:
    """The network definition a job forwards, checked: ``_target_`` canonical, every argument plain data.

    ``_target_`` names a network class of ``monai.networks.nets`` or ``monai_continual.networks`` (a bare name or
    ``<package>.<Class>``); each other key is an argument of that class with a plain JSON value (as any override) or
    exactly ``"@<key>"`` for a literal key of :data:`MONAI_SITE_KEYS`. Other special keys (``_requires_``, ``_mode_``,
    ``_disabled_``) are refused: the site keeps its own.

    Raises:
        OverrideError: naming the key, and its value, at fault.

    Example::

        >>> check_network_def({"_target_": "UNet", "spatial_dims": 3, "out_channels": "@num_classes"})
        {'_target_': 'monai.networks.nets.UNet', 'spatial_dims': 3, 'out_channels': '@num_classes'}
    """
    if not isinstance(definition, Mapping) or TARGET_KEY not in definition:
        raise OverrideError(
            f"override {NETWORK_DEF_KEY!r}: expected the network's definition, a dict with {TARGET_KEY!r} (in a bundle "
            f"config, a network_def with \"_mode_\": \"callable\"), got {definition!r}."
        )
    try:
        name, network = resolve_network(definition[TARGET_KEY])
    except ValueError as err:
        raise OverrideError(f"override '{NETWORK_DEF_KEY}#{TARGET_KEY}': {err}.") from err
    try:
        parameters = inspect.signature(network).parameters
    except (TypeError, ValueError):  # no signature to read: the site's constructor call decides
        parameters = {}
    open_ended = not parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    out = {TARGET_KEY: name}
    for key, value in definition.items():
        where = f"{NETWORK_DEF_KEY}#{key}"
        if key == TARGET_KEY:
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise OverrideError(f"override {where!r}: special keys are the site's own; only {TARGET_KEY!r} and the "
                                f"network's arguments are forwarded.")
        if _FETCHES.search(key):
            raise OverrideError(f"override {where!r}: {name}'s argument {key!r} would make a site download or read "
                                "weights or files the job names; a forwarded network is built from its arguments only.")
        if not open_ended and key not in parameters:
            raise OverrideError(f"override {where!r}: {name} has no argument {key!r} (value {value!r}).")
        if isinstance(value, str) and value.startswith("@"):
            if value[1:] not in NETWORK_REFERENCES:
                raise OverrideError(f"override {where!r}: {value!r} is not a reference to one of the keys "
                                    f"{sorted(NETWORK_REFERENCES)}.")
            out[key] = value  # the site resolves it against its own (overridden) config
            continue
        if isinstance(value, Mapping):
            raise OverrideError(f"override {where!r}: nested containers are not allowed, got {value!r}.")
        _check_value(where, value)
        out[key] = value
    return out


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
        if key == NETWORK_DEF_KEY:
            out[key] = check_network_def(value)
            continue
        _check_value(key, value)
        out[key] = value
    return out


def parse_overrides(items: Iterable[str], allowed: Iterable[str]) -> dict[str, Any]:
    """``["key=<JSON>", ...]`` (a client script's ``--set`` arguments) as checked overrides.

    A dict's entries come one by one as ``key#entry=<JSON>`` (NVFlare passes no braces to a site's script).

    Raises:
        OverrideError: naming the argument, for a missing ``=``, a value that is not JSON, or a refused override.

    Example::

        >>> parse_overrides(["epochs=4", 'device="cpu"', 'network_def#_target_="UNet"'], MONAI_SITE_KEYS)
        {'epochs': 4, 'device': 'cpu', 'network_def': {'_target_': 'monai.networks.nets.UNet'}}
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep:
            raise OverrideError(f"--set {item!r}: expected KEY=JSON.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise OverrideError(f"--set {item!r}: the value is not JSON ({err}).") from err
        key, nested, entry = key.partition("#")
        if not nested:
            parsed[key] = value
        elif isinstance(parsed.setdefault(key, {}), dict):
            parsed[key][entry] = value
        else:
            raise OverrideError(f"--set {item!r}: {key!r} is already set to {parsed[key]!r}.")
    return check_overrides(parsed, allowed)
