"""Site names that are safe as one path component: NVFlare's rule for client names, applied everywhere.

A site name becomes part of file and folder names (``<exchange>/scores/stage0003_<site>.json``, a replay buffer's
``<destination>/<site>/``, an nnU-Net stage folder ``stages/003_<dataset>``). A name such as ``../../x`` would walk
out of the run directory, so every name is checked against one rule before it is used: NVFlare's own rule for
client names, ``^[A-Za-z0-9_-]+$`` (ASCII letters, digits, ``_`` and ``-``; at least one character).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SITE_NAME_PATTERN", "check_site_name", "check_site_label"]

#: the allowed site names (NVFlare's rule for client names)
SITE_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
# fullmatch: unlike ``re.match`` with ``$``, it does not accept a trailing newline
_SITE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_site_name(name: Any, what: str = "site", source: str | None = None) -> str:
    """Return ``name`` if it is a safe site name, else raise ``ValueError`` naming it and the allowed pattern.

    Args:
        name: the site name to check (anything but a ``str`` is refused).
        what: what the name is, for the message (``"site"``, ``"SiteScoreRecorder: site"``, ``"dataset"``...).
        source: where the name came from, for the message (e.g. the datalist file).

    Returns:
        ``name``, unchanged.

    Raises:
        ValueError: the name is not a string, is empty, or has a character outside ``[A-Za-z0-9_-]`` (such as
            ``/``, ``.``, a space or NUL), so it could not safely become part of a path.

    Example::

        >>> check_site_name("hospital_a")
        'hospital_a'
        >>> check_site_name("../../x", source="datalist.json")
        Traceback (most recent call last):
        ...
        ValueError: site '../../x' (from datalist.json) is not a valid site name: ...
    """
    if isinstance(name, str) and _SITE_NAME.fullmatch(name):
        return name
    origin = f" (from {source})" if source else ""
    kind = "" if isinstance(name, str) else f" of type {type(name).__name__}"
    raise ValueError(
        f"{what} {name!r}{origin}{kind} is not a valid site name: a site name must match {SITE_NAME_PATTERN} "
        "(ASCII letters, digits, '_' and '-', at least one character), the rule NVFlare applies to client names, "
        "because it becomes part of file and folder names."
    )


def check_site_label(label: Any, what: str = "site") -> str:
    """Return ``label`` if it is one site name or several joined by ``+`` (a pooled stage's label, as
    :attr:`~monai_continual.strategies.Stage.site` gives it), each a valid site name; else raise ``ValueError``.

    Example::

        >>> check_site_label("site_a+site_b")
        'site_a+site_b'
    """
    if not isinstance(label, str):
        return check_site_name(label, what)
    for part in label.split("+"):
        check_site_name(part, what)
    return label
