"""Multi-site datalists: one JSON file describing every site's training, validation and test cases.

The format follows MONAI's Decathlon-style datalists, one level up::

    {
      "name": "embedded multi-site brain",
      "labels": {"0": "background", "1": "CSF", "2": "GM", "3": "WM"},
      "sites": {
        "hospital_a": {
          "modality": "T1w", "held_out": false, "description": "...",
          "training":   [{"image": "hospital_a/sub000_img.nii.gz", "label": "hospital_a/sub000_seg.nii.gz"}, ...],
          "validation": [...],
          "test":       [...]
        },
        ...
      }
    }

Relative paths are resolved against the datalist's directory (or ``base_dir``). A held-out site (``held_out: true``)
is never trained on: it only has test cases (McClure et al.'s ABIDE). A multi-modality case lists one file per
modality as its image, ``{"image": ["sub000_t1.nii.gz", "sub000_flair.nii.gz"], "label": "sub000_seg.nii.gz"}``:
MONAI's ``LoadImaged`` stacks them as channels, in that order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.utils.names import check_site_name

__all__ = ["SiteData", "MultiSiteDatalist", "load_multisite_datalist", "DatalistError", "SPLITS", "item_paths"]

SPLITS = ("training", "validation", "test")


class DatalistError(ValueError):
    """A multi-site datalist is malformed or points at missing or invalid data."""


@dataclass
class SiteData:
    """One site's cases (paths resolved) and metadata."""

    name: str
    training: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)
    modality: str | None = None
    held_out: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_cases(self) -> int:
        return len(self.training) + len(self.validation) + len(self.test)

    def split(self, name: str) -> list[dict[str, Any]]:
        if name not in SPLITS:
            raise DatalistError(f"unknown split {name!r}; splits are {SPLITS}.")
        return getattr(self, name)


@dataclass
class MultiSiteDatalist:
    """All sites of a multi-site datalist. ``labels`` maps label value -> class name."""

    sites: dict[str, SiteData]
    labels: dict[int, str]
    name: str = ""
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # site names become folder and file names downstream (exchange records, replay exports, nnU-Net datasets)
        for name in self.sites:
            try:
                check_site_name(name, what=f"datalist {self.source!r}: site" if self.source else "datalist site")
            except ValueError as err:
                raise DatalistError(str(err)) from None

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0

    @property
    def site_names(self) -> list[str]:
        return list(self.sites)

    def training_sites(self) -> list[str]:
        """Sites that may be trained on (not held out), in file order."""
        return [n for n, s in self.sites.items() if not s.held_out]

    def held_out_sites(self) -> list[str]:
        return [n for n, s in self.sites.items() if s.held_out]

    def site(self, name: str) -> SiteData:
        if name not in self.sites:
            raise DatalistError(f"unknown site {name!r} in {self.source or 'datalist'}; sites are {self.site_names}.")
        return self.sites[name]

    def items(self, site: str, split: str) -> list[dict[str, Any]]:
        """MONAI-ready list of ``{"image": path, "label": path, ...}`` for one site and split."""
        return [dict(item) for item in self.site(site).split(split)]

    def pooled(self, split: str, sites: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The items of several sites together, each tagged with ``"site"`` (centrally hosted training)."""
        names = list(sites) if sites is not None else self.training_sites()
        return [dict(item, site=n) for n in names for item in self.site(n).split(split)]


def _resolve(item: Any, base: Path, where: str, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise DatalistError(f"{where}: items must be objects with {list(keys)}, got {type(item).__name__}.")
    out = dict(item)
    for key in keys:
        if key not in out:
            raise DatalistError(f"{where}: item lacks {key!r}: {dict(item)}.")
        if key == "image" and isinstance(out[key], list):  # one file per modality, stacked as channels
            if not out[key]:
                raise DatalistError(f"{where}: item's 'image' lists no modality file.")
            out[key] = [_resolve_path(value, base, where, key) for value in out[key]]
        else:
            out[key] = _resolve_path(out[key], base, where, key)
    return out


def _resolve_path(value: Any, base: Path, where: str, key: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise DatalistError(f"{where}: item's {key!r} must be a non-empty path (or, for 'image', a list of them), "
                            f"got {value!r}.")
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else base / path)


def item_paths(item: Mapping[str, Any], key: str) -> list[str]:
    """The file(s) of ``item[key]``: one path, or a multi-modality image's list of paths.

    Example::

        >>> item_paths({"image": ["t1.nii.gz", "flair.nii.gz"], "label": "seg.nii.gz"}, "image")
        ['t1.nii.gz', 'flair.nii.gz']
    """
    value = item[key]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _check_label_values(path: str, allowed: set[int], where: str) -> None:
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    values = np.unique(data)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise DatalistError(f"{where}: label file {path!r} has non-integer values.")
    bad = sorted(int(v) for v in values if int(v) not in allowed)
    if bad:
        raise DatalistError(
            f"{where}: label file {path!r} has values {bad} outside the declared classes {sorted(allowed)}."
        )


def load_multisite_datalist(
    path: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    sites: Sequence[str] | None = None,
    check_files: bool = True,
    check_labels: bool = False,
    keys: Sequence[str] = ("image", "label"),
) -> MultiSiteDatalist:
    """Read and check a multi-site datalist.

    Args:
        path: the JSON file.
        base_dir: directory relative paths are resolved against (default: the file's directory).
        sites: keep only these sites (an unknown name is an error).
        check_files: every referenced file must exist.
        check_labels: read every label file and check its values are declared classes (slower).
        keys: the keys every item must have.

    Raises:
        DatalistError: naming the site and the file at fault (missing file, empty site, unknown site, label values
            outside the declared classes, malformed entries, a site name that does not match ``^[A-Za-z0-9_-]+$``,
            see :func:`~monai_continual.utils.check_site_name`).

    Example::

        >>> data = load_multisite_datalist("sites/datalist.json")
        >>> train_a = data.items("hospital_a", "training")  # [{"image": ..., "label": ...}, ...]
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatalistError(f"datalist {str(path)!r} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatalistError(f"datalist {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sites"), Mapping) or not raw["sites"]:
        raise DatalistError(f"datalist {str(path)!r} needs a non-empty 'sites' object.")
    for name in raw["sites"]:  # every site of the file, also those not selected: a name must never become a path
        try:
            check_site_name(name, what=f"datalist {str(path)!r}: site")
        except ValueError as err:
            raise DatalistError(str(err)) from None
    base = Path(base_dir) if base_dir is not None else path.parent
    try:
        declared = raw.get("labels") or {}
        if not isinstance(declared, Mapping):
            raise TypeError(f"got {type(declared).__name__}")
        labels = {int(k): str(v) for k, v in declared.items()}
    except (TypeError, ValueError) as err:
        raise DatalistError(f"datalist {str(path)!r}: 'labels' must map integer values to names ({err}).") from err
    wanted = list(raw["sites"]) if sites is None else list(sites)
    unknown = [s for s in wanted if s not in raw["sites"]]
    if unknown:
        raise DatalistError(f"datalist {str(path)!r}: unknown site(s) {unknown}; sites are {list(raw['sites'])}.")
    out: dict[str, SiteData] = {}
    for name in wanted:
        entry = raw["sites"][name]
        where = f"datalist {str(path)!r}, site {name!r}"
        if not isinstance(entry, Mapping):
            raise DatalistError(f"{where}: must be an object with {list(SPLITS)}.")
        splits = {}
        for split in SPLITS:
            items = entry.get(split, [])
            if not isinstance(items, list):
                raise DatalistError(f"{where}: {split!r} must be a list.")
            splits[split] = [_resolve(item, base, f"{where}, {split}", keys) for item in items]
        held_out = bool(entry.get("held_out", False))
        if held_out and not splits["test"]:
            raise DatalistError(f"{where}: a held-out site needs test cases.")
        if not held_out and not splits["training"]:
            raise DatalistError(f"{where}: the site has no training cases (mark it held_out if it is test-only).")
        if check_files or check_labels:
            for split, items in splits.items():
                for item in items:
                    for key in keys:
                        for file in item_paths(item, key):
                            try:
                                exists = Path(file).exists()
                            except OSError as err:  # e.g. a name too long for the file system
                                raise DatalistError(
                                    f"{where}, {split}: {key} path {file!r} is unusable: {err}"
                                ) from err
                            if not exists:
                                raise DatalistError(f"{where}, {split}: {key} file {file!r} does not exist.")
                    if check_labels and labels and "label" in item:
                        _check_label_values(item["label"], set(labels), f"{where}, {split}")
        extra = {k: v for k, v in entry.items() if k not in SPLITS and k not in ("modality", "held_out")}
        out[name] = SiteData(name, modality=entry.get("modality"), held_out=held_out, metadata=extra, **splits)
    metadata = {k: v for k, v in raw.items() if k not in ("sites", "labels", "name")}
    return MultiSiteDatalist(out, labels, str(raw.get("name", "")), str(path), metadata)
