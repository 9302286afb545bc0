"""The bundle config a federated run is declared in, read the same way by the server, every site and the tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["parse_config"]


def parse_config(config_file: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Any:
    """A MONAI ``ConfigParser`` over ``config_file`` with ``overrides`` (``id -> value``) applied.

    The server reads ``network`` from it (the initial weights); a site reads ``site_runner`` (its own data only);
    the in-process comparison reads ``runner``. A ``network_def`` override (a dict) replaces the config's own
    definition but keeps its special keys (``_requires_``, ``_mode_``) where the override sets none.

    Example::

        >>> parser = parse_config("configs/federated.json", {"site": "site_b", "site_dir": "/data/fl"})
        >>> runner = parser.get_parsed_content("site_runner")
    """
    from monai.bundle import ConfigParser

    from monai_continual.federated.network_spec import NETWORK_DEF_KEY, site_network_def

    parser = ConfigParser()
    parser.read_config(str(config_file))
    for key, value in (overrides or {}).items():
        if key == NETWORK_DEF_KEY and isinstance(value, Mapping):
            value = site_network_def(parser.get(key), value)
        parser[key] = value
    return parser
