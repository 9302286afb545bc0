"""Checks of one image-label case before any training: a bad case is named before it can spoil a stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_continual.data.datalist import DatalistError, MultiSiteDatalist, item_paths

__all__ = ["check_case", "check_sites"]


_AFFINE_TOLERANCE = 1e-3  # mm: NIfTI keeps affines in float32


def _load(path: Any, key: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A file's voxels and, for NIfTI, its affine."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise DatalistError(f"{where}: {key} file {str(path)!r} does not exist.") from None
    except Exception as err:  # nibabel raises several types for unreadable files
        raise DatalistError(f"{where}: {key} file {str(path)!r} cannot be read: {err}") from err
    nifti = isinstance(image, (nib.Nifti1Image, nib.Nifti2Image))
    return data, np.asarray(image.affine, dtype=float) if nifti else None


def check_case(item: Mapping[str, Any], num_classes: int, channels: int | None = None, where: str = "case") -> int:
    """Read a case's image and label and check them; return the image's channel count.

    Checks: every file exists and loads; the image has only finite voxels; the label is integer-valued within
    ``[0, num_classes)``; image and label share their spatial shape and, when both are NIfTI, their affine
    (orientation, spacing and origin); the image has ``channels`` channels when given. A 3-D image has one channel, a
    4-D image its last axis; a multi-modality image (a list of files, stacked as channels by ``LoadImaged``) the sum
    of its files', every file on the label's grid.

    Raises:
        DatalistError: naming ``where`` and the file at fault.

    Example::

        >>> check_case({"image": "a_img.nii.gz", "label": "a_seg.nii.gz"}, num_classes=4, where="site 'a'")
        1
        >>> check_case({"image": ["a_t1.nii.gz", "a_flair.nii.gz"], "label": "a_seg.nii.gz"}, 4, where="site 'a'")
        2
    """
    for key in ("image", "label"):
        if item.get(key) is None:
            raise DatalistError(f"{where}: the case has no {key!r}.")
    label_file = item["label"]
    label, label_affine = _load(label_file, "label", where)
    if label.ndim not in (3, 4) or (label.ndim == 4 and label.shape[-1] != 1):
        raise DatalistError(f"{where}: label {label_file!r} {label.shape} must be a 3-D volume.")
    found = 0
    for image_file in item_paths(item, "image"):
        image, image_affine = _load(image_file, "image", where)
        if image.ndim not in (3, 4):
            raise DatalistError(f"{where}: image {image_file!r} {image.shape} must be a 3-D volume (it may have "
                                "channels on a 4th axis).")
        if image.shape[:3] != label.shape[:3]:
            raise DatalistError(f"{where}: image {image_file!r} has shape {image.shape[:3]} but its label "
                                f"{label_file!r} has {label.shape[:3]}.")
        if image_affine is not None and label_affine is not None and not np.allclose(
            image_affine, label_affine, rtol=0, atol=_AFFINE_TOLERANCE
        ):
            raise DatalistError(
                f"{where}: image {image_file!r} and its label {label_file!r} have different affines (orientation, "
                f"spacing or origin): {image_affine.round(4).tolist()} vs {label_affine.round(4).tolist()}."
            )
        if not np.isfinite(image).all():
            raise DatalistError(
                f"{where}: image {image_file!r} has {int((~np.isfinite(image)).sum())} NaN or infinite voxels."
            )
        found += 1 if image.ndim == 3 else int(image.shape[-1])
    if channels is not None and found != channels:
        raise DatalistError(
            f"{where}: image {item['image']!r} has {found} channel(s); the other cases have {channels}."
        )
    values = np.unique(label)
    if not np.all(np.mod(values, 1) == 0):
        raise DatalistError(f"{where}: label file {label_file!r} has non-integer values.")
    bad = sorted(int(v) for v in values if not 0 <= v < num_classes)
    if bad:
        raise DatalistError(f"{where}: label file {label_file!r} has values {bad} outside 0..{num_classes - 1} "
                            f"(num_classes={num_classes}).")
    return found


def check_sites(data: MultiSiteDatalist, sites: Sequence[str], num_classes: int, channels: int | None = None,
                in_channels: int | None = None) -> int:
    """:func:`check_case` on every case of ``sites`` (all splits); return the common channel count (every case of
    every site has the same: one network reads them all). With ``in_channels`` (the network's), a case with another
    channel count is refused naming its site and file.

    Example::

        >>> check_sites(load_multisite_datalist("sites/datalist.json"), ["site_a", "site_b"], num_classes=4)
    """
    source = data.source or "the datalist"
    for site in sites:
        for split in ("training", "validation", "test"):
            for item in data.items(site, split):
                where = f"datalist {source!r}, site {site!r}, {split}"
                found = check_case(item, num_classes, channels, where)
                if in_channels is not None and found != in_channels:
                    raise DatalistError(f"{where}: image {item['image']!r} has {found} channel(s); the network's "
                                        f"in_channels is {in_channels}.")
                channels = found if channels is None else channels
    return channels or 1
