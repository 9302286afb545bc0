"""The transform chains of real scans: loading with an optional common geometry, and label-aware training patches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
    SpatialPadd,
)

__all__ = ["scan_transforms", "patch_transforms", "resamples"]


def scan_transforms(
    keys: Sequence[str] = ("image", "label"),
    pixdim: Sequence[float] | None = None,
    axcodes: str | None = None,
    intensity: Callable | None = None,
) -> Compose:
    """Load a case and bring it to the run's geometry: ``LoadImaged`` (a list of modality files is stacked as
    channels), ``EnsureChannelFirstd``, ``Orientationd`` when ``axcodes`` is given, ``Spacingd`` when ``pixdim`` is
    given (the image trilinear, every other key nearest), the intensity transform, ``EnsureTyped``.

    Every transform that changes the grid is invertible: ``Invertd`` brings predictions back onto each input's own
    grid and affine (:func:`~monai_continual.experiment.mc_segment_files` does).

    Args:
        keys: the image first, then the label maps (``("image",)`` at inference).
        pixdim: voxel size in mm to resample to (``None``: keep each file's).
        axcodes: orientation to reorient to, e.g. ``"RAS"`` (``None``: keep each file's).
        intensity: the intensity transform of the image (default: ``NormalizeIntensityd`` over the nonzero voxels).

    Example::

        >>> train = scan_transforms(pixdim=(1.0, 1.0, 1.0), axcodes="RAS")
        >>> infer = scan_transforms(["image"], pixdim=(1.0, 1.0, 1.0), axcodes="RAS")
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys:
        raise ValueError("scan_transforms: keys must name at least the image.")
    chain: list[Callable] = [LoadImaged(keys), EnsureChannelFirstd(keys)]
    if axcodes is not None:
        if not isinstance(axcodes, str) or len(axcodes) != 3:
            raise ValueError(f"axcodes must be three orientation letters such as 'RAS', got {axcodes!r}.")
        chain.append(Orientationd(keys, axcodes=axcodes, labels=None))
    if pixdim is not None:
        if isinstance(pixdim, (str, bytes)) or len(pixdim) != 3 or not all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0 for p in pixdim
        ):
            raise ValueError(f"pixdim must be three positive voxel sizes in mm, got {pixdim!r}.")
        modes = ["bilinear"] + ["nearest"] * (len(keys) - 1)
        chain.append(Spacingd(keys, pixdim=tuple(float(p) for p in pixdim), mode=modes))
    chain.append(intensity if intensity is not None else NormalizeIntensityd(keys[0], nonzero=True))
    chain.append(EnsureTyped(keys))
    return Compose(chain)


def patch_transforms(patch_size: Sequence[int], samples_per_volume: int = 1,
                     keys: Sequence[str] = ("image", "label")) -> tuple[Callable, ...]:
    """Label-aware training patches: ``SpatialPadd`` (a volume smaller than the patch is padded) and
    ``RandCropByPosNegLabeld`` (foreground and background centres 1:1), ``samples_per_volume`` patches per volume.

    Example::

        >>> train = Compose([scan_transforms(), *patch_transforms((96, 96, 96), samples_per_volume=2)])
    """
    keys = list(keys)
    return (SpatialPadd(keys, spatial_size=tuple(patch_size)),
            RandCropByPosNegLabeld(keys, keys[-1], tuple(patch_size), pos=1, neg=1, num_samples=samples_per_volume))


def resamples(transform: Callable) -> dict[str, bool]:
    """Whether a transform chain reorients (``Orientationd``) and resamples (``Spacingd``) its input.

    Example::

        >>> resamples(scan_transforms(pixdim=(2.0, 2.0, 2.0)))
        {'orientation': False, 'spacing': True}
    """
    flat = transform.flatten().transforms if isinstance(transform, Compose) else (transform,)
    return {"orientation": any(isinstance(t, Orientationd) for t in flat),
            "spacing": any(isinstance(t, Spacingd) for t in flat)}
