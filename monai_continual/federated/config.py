"""The bundle config a federated run is declared in, read the same way by the server, every site and the tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["parse_config"]


def parse_config(config_file: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Any:
    """A MONAI ``ConfigParser`` over ``config_file`` with ``overrides`` (``id -> value``) applied.

    The server reads ``network`` from it (the initial weights); a site reads ``site_runner`` (its own data only);
    the in-process comparison reads ``runner``.

    Example::

        >>> parser = parse_config("configs/federated.json", {"site": "site_b", "site_dir": "/data/fl"})
        >>> runner = parser.get_parsed_content("site_runner")
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser
