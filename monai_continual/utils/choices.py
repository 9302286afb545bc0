"""Looking up a named choice with an error that names the setting (MONAI's ``look_up_option`` does not)."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from monai.utils import look_up_option

__all__ = ["look_up_choice"]

E = TypeVar("E", bound=Enum)


def look_up_choice(value: str | E, choices: type[E], what: str) -> E:
    """The member of ``choices`` named ``value`` (a member or its string).

    Raises:
        ValueError: ``value`` is not a choice; the message starts with ``what`` and lists the valid values.

    Example::

        >>> look_up_choice("clip", SitePolicy, "consolidate_dwc: dominance")
        <SitePolicy.CLIP: 'clip'>
    """
    choice = look_up_option(value, choices, default=None) if isinstance(value, (str, Enum)) else None
    if choice is None:
        valid = ", ".join(repr(member.value) for member in choices)
        raise ValueError(f"{what} must be one of {valid}, got {value!r}.")
    return choice
