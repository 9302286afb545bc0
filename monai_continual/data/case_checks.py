"""Checks of one image-label case before any training: a bad case is named before it can spoil a stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_continual.data.datalist import DatalistError, MultiSiteDatalist

__all__ = ["check_case", "check_sites"]


def check_case(item: Mapping[str, Any], num_classes: int, channels: int | None = None, where: str = "case") -> int:
    """Read a case's image and label and check them; return the image's channel count.

    Checks: both files exist and load; the image has only finite voxels; the label is integer-valued within
    ``[0, num_classes)``; image and label share their spatial shape; the image has ``channels`` channels (a 3-D
    image has one, a 4-D image its last axis) when given.

    Raises:
        DatalistError: naming ``where`` and the file at fault.

    Example::

        >>> check_case({"image": "a_img.nii.gz", "label": "a_seg.nii.gz"}, num_classes=4, where="site 'a'")
        1
    """
    import nibabel as nib

    arrays = {}
    for key in ("image", "label"):
        path = item.get(key)
        if path is None:
            raise DatalistError(f"{where}: the case has no {key!r}.")
        try:
            arrays[key] = np.asanyarray(nib.load(str(path)).dataobj)
        except FileNotFoundError:
            raise DatalistError(f"{where}: {key} file {str(path)!r} does not exist.") from None
        except Exception as err:  # nibabel raises several types for unreadable files
            raise DatalistError(f"{where}: {key} file {str(path)!r} cannot be read: {err}") from err
    image, label = arrays["image"], arrays["label"]
    if image.ndim not in (3, 4) or label.ndim not in (3, 4) or (label.ndim == 4 and label.shape[-1] != 1):
        raise DatalistError(f"{where}: image {item['image']!r} {image.shape} and label {item['label']!r} "
                            f"{label.shape} must be 3-D volumes (the image may have channels on a 4th axis).")
    if image.shape[:3] != label.shape[:3]:
        raise DatalistError(f"{where}: image {item['image']!r} has shape {image.shape[:3]} but its label "
                            f"{item['label']!r} has {label.shape[:3]}.")
    found = 1 if image.ndim == 3 else int(image.shape[-1])
    if channels is not None and found != channels:
        raise DatalistError(
            f"{where}: image {item['image']!r} has {found} channel(s); the other cases have {channels}."
        )
    if not np.isfinite(image).all():
        raise DatalistError(
            f"{where}: image {item['image']!r} has {int((~np.isfinite(image)).sum())} NaN or infinite voxels."
        )
    values = np.unique(label)
    if not np.all(np.mod(values, 1) == 0):
        raise DatalistError(f"{where}: label file {item['label']!r} has non-integer values.")
    bad = sorted(int(v) for v in values if not 0 <= v < num_classes)
    if bad:
        raise DatalistError(f"{where}: label file {item['label']!r} has values {bad} outside 0..{num_classes - 1} "
                            f"(num_classes={num_classes}).")
    return found


def check_sites(data: MultiSiteDatalist, sites: Sequence[str], num_classes: int, channels: int | None = None) -> int:
    """:func:`check_case` on every case of ``sites`` (all splits); return the common channel count.

    Example::

        >>> check_sites(load_multisite_datalist("sites/datalist.json"), ["site_a", "site_b"], num_classes=4)
    """
    source = data.source or "the datalist"
    for site in sites:
        for split in ("training", "validation", "test"):
            for item in data.items(site, split):
                found = check_case(item, num_classes, channels, f"datalist {source!r}, site {site!r}, {split}")
                channels = found if channels is None else channels
    return channels or 1
