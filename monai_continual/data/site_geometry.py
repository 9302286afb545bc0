"""Voxel sizes and orientations of every site, read from the file headers: sites that differ are reported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monai_continual.data.datalist import MultiSiteDatalist, item_paths

__all__ = ["SiteGeometry", "site_geometry", "geometry_warning"]


@dataclass(frozen=True)
class SiteGeometry:
    """One site's images: the smallest and largest voxel size per axis (mm) and the orientation codes found."""

    site: str
    spacing_min: tuple[float, float, float]
    spacing_max: tuple[float, float, float]
    orientations: tuple[str, ...]

    def describe(self) -> str:
        """``site 'a': spacing 1.0x1.0x1.0 .. 1.2x1.0x1.0 mm, orientation RAS``."""
        lo, hi = ("x".join(f"{v:g}" for v in s) for s in (self.spacing_min, self.spacing_max))
        spacing = lo if lo == hi else f"{lo} .. {hi}"
        return f"site {self.site!r}: spacing {spacing} mm, orientation {'/'.join(self.orientations)}"


def site_geometry(data: MultiSiteDatalist, sites: Sequence[str] | None = None) -> list[SiteGeometry]:
    """The geometry of every image of ``sites`` (all splits), from the NIfTI headers only (no voxels are read).

    Example::

        >>> for site in site_geometry(load_multisite_datalist("sites/datalist.json")):
        ...     print(site.describe())
    """
    import nibabel as nib

    found = []
    for site in sites if sites is not None else data.site_names:
        spacings, codes = [], set()
        for split in ("training", "validation", "test"):
            for item in data.items(site, split):
                for path in item_paths(item, "image"):
                    image = nib.load(path)
                    spacings.append(tuple(round(float(z), 4) for z in image.header.get_zooms()[:3]))
                    codes.add("".join(nib.aff2axcodes(image.affine)))
        if spacings:
            found.append(SiteGeometry(site, tuple(min(s[i] for s in spacings) for i in range(3)),
                                      tuple(max(s[i] for s in spacings) for i in range(3)), tuple(sorted(codes))))
    return found


def geometry_warning(geometry: Sequence[SiteGeometry], resampled: dict[str, bool]) -> str | None:
    """A message when the images differ in voxel size or orientation and the transforms do not bring them to one
    (``resampled``: :func:`~monai_continual.data.scan_transforms.resamples` of the transform), else ``None``.

    Example::

        >>> geometry_warning(site_geometry(data), resamples(eval_transform))
    """
    spacings = {g.spacing_min for g in geometry} | {g.spacing_max for g in geometry}
    codes = {c for g in geometry for c in g.orientations}
    problems = []
    if len(spacings) > 1 and not resampled.get("spacing", False):
        problems.append("voxel sizes (set pixdim to resample them)")
    if len(codes) > 1 and not resampled.get("orientation", False):
        problems.append("orientations (set axcodes to reorient them)")
    if not problems:
        return None
    return (f"the sites' images differ in {' and '.join(problems)}; one network then sees anatomy at different "
            "scales or axes: " + "; ".join(g.describe() for g in geometry))
