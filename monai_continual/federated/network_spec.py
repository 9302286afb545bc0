"""The network a federated job builds at its sites: named from two packages only, forwarded as data.

The launching command's ``network_def`` (a MONAI bundle component) crosses to every site as a plain dict: the class
(``_target_``, looked up as an attribute of :data:`NETWORK_PACKAGES`, nothing else imported) and its arguments.
Special keys (``_requires_``, ``_mode_``, ``_disabled_``) are the launcher's own and stay there; a site keeps its
own ones (:func:`site_network_def`). The values themselves are checked by
:func:`~monai_continual.federated.overrides.check_network_def`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["NETWORK_DEF_KEY", "NETWORK_PACKAGES", "TARGET_KEY", "launcher_network_def", "resolve_network",
           "site_network_def"]

#: the config key of the network's definition (a MONAI bundle component)
NETWORK_DEF_KEY = "network_def"
TARGET_KEY = "_target_"
#: the packages a forwarded ``_target_`` may name a class of
NETWORK_PACKAGES = ("monai.networks.nets", "monai_continual.networks")


def _is_special(key: str) -> bool:
    return key.startswith("_") and key != TARGET_KEY


def resolve_network(name: str) -> tuple[str, type[torch.nn.Module]]:
    """The network class ``name`` names, and its canonical name ``<package>.<Class>``.

    ``name`` is a bare class name or ``<package>.<Class>`` for a package of :data:`NETWORK_PACKAGES`; the class is
    an attribute of the package (never a submodule path, never another module imported).

    Raises:
        ValueError: ``name`` is not such a class, or a bare name both packages define.

    Example::

        >>> resolve_network("UNet")[0]
        'monai.networks.nets.UNet'
    """
    if not isinstance(name, str):
        raise ValueError(f"expected a class name, got a {type(name).__name__}")
    package, _, attribute = name.rpartition(".")
    packages = NETWORK_PACKAGES if not package else (package,) if package in NETWORK_PACKAGES else ()
    if not attribute.isidentifier() or attribute.startswith("_") or not packages:
        raise ValueError(f"{name!r} is not a class of {' or '.join(NETWORK_PACKAGES)}")
    found = {}
    for candidate in packages:
        obj = getattr(importlib.import_module(candidate), attribute, None)
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            found[f"{candidate}.{attribute}"] = obj
    if len(found) != 1:
        reason = "is ambiguous" if found else "is not a network class"
        raise ValueError(f"{name!r} {reason} of {' or '.join(packages)}")
    return next(iter(found.items()))


def launcher_network_def(definition: Any) -> Any:
    """The launcher's network definition as data to forward: its special keys dropped.

    ``definition`` is a dict (``_target_`` and arguments), or what a bundle's ``network_def`` with
    ``"_mode_": "callable"`` resolves to: a ``functools.partial`` of the class with its (resolved) arguments. Anything
    else is returned unchanged, for the check to refuse.

    Example::

        >>> launcher_network_def({"_target_": "UNet", "_requires_": "@seed_everything", "spatial_dims": 3})
        {'_target_': 'UNet', 'spatial_dims': 3}
    """
    if isinstance(definition, functools.partial) and isinstance(definition.func, type) and not definition.args:
        qualified = f"{definition.func.__module__}.{definition.func.__qualname__}"
        name = next((f"{p}.{definition.func.__name__}" for p in NETWORK_PACKAGES if qualified.startswith(f"{p}.")),
                    qualified)  # a package's class by its package's name; a foreign one as it is, for the refusal
        return {TARGET_KEY: name, **definition.keywords}
    if isinstance(definition, Mapping):
        return {k: v for k, v in definition.items() if not _is_special(str(k))}
    return definition


def site_network_def(own: Any, forwarded: Mapping[str, Any]) -> dict[str, Any]:
    """``forwarded`` with the site config's own special keys (``_requires_``, ``_mode_``) where it sets none.

    Example::

        >>> own = {"_target_": "MeshNet", "_mode_": "callable", "_requires_": ["@seed_everything"], "channels": 16}
        >>> site_network_def(own, {"_target_": "monai.networks.nets.UNet", "channels": [4, 8]})["_requires_"]
        ['@seed_everything']
    """
    kept = {k: v for k, v in own.items() if _is_special(str(k))} if isinstance(own, Mapping) else {}
    return {**kept, **forwarded}
