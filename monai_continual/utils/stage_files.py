"""The one file-name pattern of a stage's files: ``stage####`` (by stage number), optionally ``stage####_<site>``.

Every layer that names a file after a stage (the weight store, the exchange directory of the bundle handlers, a run
directory's posteriors, receipts, replay memories and checkpoints) calls these, so that the pattern is written once.
"""

from __future__ import annotations

import re

__all__ = ["stage_name", "stage_file_name", "parse_stage_file_name"]

_PATTERN = re.compile(r"^stage(\d{4,})(?:_(.+))?$")


def stage_name(number: int) -> str:
    """``stage0003`` for stage 3 (four digits at least; numbers sort as names up to stage 9999).

    Example::

        >>> stage_name(3)
        'stage0003'
    """
    number = int(number)
    if number < 0:
        raise ValueError(f"a stage number is >= 0, got {number}.")
    return f"stage{number:04d}"


def stage_file_name(number: int, suffix: str = "", *, site: str | None = None, prefix: str = "") -> str:
    """A stage's file name: ``<prefix>stage####[_<site>]<suffix>``.

    Args:
        number: the stage number.
        suffix: the extension with its dot (``".safetensors"``, ``".json"``), or ``""`` for a folder.
        site: the site that wrote it, when several sites write files of one stage into one folder (the caller
            checks the name: :func:`~monai_continual.utils.names.check_site_name`).
        prefix: what kind of file it is, when one folder holds several (``"optimizer_"``, ``"details_"``).

    Example::

        >>> stage_file_name(3, ".safetensors", site="site_a")
        'stage0003_site_a.safetensors'
    """
    return f"{prefix}{stage_name(number)}{'' if site is None else '_' + str(site)}{suffix}"


def parse_stage_file_name(name: str, suffix: str) -> tuple[int, str | None] | None:
    """``(number, site)`` of a file named by :func:`stage_file_name` (no prefix), ``None`` for any other name.

    Example::

        >>> parse_stage_file_name("stage0003_site_a.json", ".json")
        (3, 'site_a')
    """
    if not name.endswith(suffix):
        return None
    match = _PATTERN.match(name[: len(name) - len(suffix)] if suffix else name)
    return None if match is None else (int(match.group(1)), match.group(2))
