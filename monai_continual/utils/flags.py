"""On/off settings as a command line gives them: ``python -m monai.bundle run --amp false`` passes the string
``"false"``, which Python reads as true; every flag of the package is read through :func:`as_flag` instead."""

from __future__ import annotations

from typing import Any

__all__ = ["as_flag"]

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "")


def as_flag(value: Any, name: str) -> bool:
    """``value`` as a bool: ``True``/``False``, 0/1, or one of ``true yes on 1`` / ``false no off 0`` in any case.

    Raises:
        ValueError: naming ``name``, for anything else (e.g. ``"flase"``), rather than reading it as true.

    Example::

        >>> as_flag("false", "amp"), as_flag(True, "amp"), as_flag("ON", "amp")
        (False, True, True)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}.")
