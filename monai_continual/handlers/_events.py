"""Resolving ignite events given by name (as bundle configs do) or as ``Events`` members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Events
else:
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")


def resolve_event(event: Any, handler: str) -> Any:
    """``"completed"``/``"COMPLETED"``/``Events.COMPLETED`` -> ``Events.COMPLETED``; an error names the handler."""
    if isinstance(event, str):
        try:
            return Events[event.upper()]
        except KeyError:
            raise ValueError(f"{handler}: unknown ignite event {event!r}.") from None
    return event
