"""An embedded multi-site brain dataset generated from the real MNI152 anatomy that nilearn ships offline.

Every subject is a smooth random deformation of the MNI152 template with labels background / CSF / GM / WM (and,
optionally, small hyperintense white-matter lesions). Every site has its own acquisition: contrast (T1-like, or
T2-like with inverted tissue contrast), multiplicative bias field, Rician noise, resolution (a site acquired at half
resolution, like Chang et al.'s low-resolution institution), intensity scale, and number of subjects; one site is
held out for testing generalization (like ABIDE in McClure et al.). Output is NIfTI plus a multi-site datalist
JSON; generation is deterministic from the seed, and a directory that already holds the same generation is reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import StrEnum
from torch.nn import functional as F
from tqdm.auto import tqdm

from monai_continual.utils.atomic import atomic_save_nifti, atomic_write, atomic_write_text
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.hashing import config_sha256
from monai_continual.utils.names import check_site_name

__all__ = ["Contrast", "SiteProfile", "DEFAULT_SITES", "BRAIN_LABELS", "make_sites", "mni_brain_shape", "plot_sites",
           "site_splits", "GENERATOR_VERSION"]

GENERATOR_VERSION = 1
BRAIN_LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
LESION_LABEL = 4



class Contrast(StrEnum):
    """A synthetic site's tissue contrast: ``t1`` (the template's) or ``t2`` (inverted: CSF bright, WM dark)."""

    T1 = "t1"
    T2 = "t2"


@dataclass(frozen=True)
class SiteProfile:
    """How one site acquires its images.

    Args:
        name: site name (used in paths and the datalist).
        num_subjects: subjects at the site, split into training (60%), validation (15%, at least 1) and test (25%, at
            least 2) subjects.
        contrast: ``"t1"`` (the template's T1 contrast) or ``"t2"`` (inverted: CSF bright, WM dark).
        noise: Rician noise std, relative to the brain's intensity range (0..1).
        bias: strength of the smooth multiplicative bias field (log-amplitude).
        resolution: 1 for full resolution; 2 for a site acquired at half resolution (blurred onto the same grid).
        scale: intensity scale of the scanner's output.
        held_out: test-only site, never trained on.
        modality: free-text modality recorded in the datalist.
        num_test: test subjects instead of the split's 25%; the training and validation subjects stay the same
            (test subjects are generated after them), so a site can be scored on more volumes without changing
            what is trained on.
    """

    name: str
    num_subjects: int
    contrast: str = "t1"
    noise: float = 0.03
    bias: float = 0.1
    resolution: float = 1.0
    scale: float = 1.0
    held_out: bool = False
    modality: str = "T1w"
    num_test: int | None = None

    def __post_init__(self) -> None:
        look_up_choice(self.contrast, Contrast, f"site {self.name!r}: contrast")
        if self.num_subjects < (2 if self.held_out else 4):
            raise ValueError(
                f"site {self.name!r}: needs at least {2 if self.held_out else 4} subjects, got {self.num_subjects}."
            )
        if self.num_test is not None and (isinstance(self.num_test, bool) or not isinstance(self.num_test, int)
                                          or self.num_test < 2):
            raise ValueError(f"site {self.name!r}: num_test must be a whole number, at least 2, got {self.num_test!r}.")
        if self.noise < 0 or self.bias < 0 or self.resolution < 1 or self.scale <= 0:
            raise ValueError(f"site {self.name!r}: noise and bias must be >= 0, resolution >= 1 and scale > 0.")


#: Four training sites of unequal size and acquisition, and one held-out site; 10 test subjects each, so that paired
#: comparisons over the training sites' test volumes run over 40 of them.
DEFAULT_SITES: tuple[SiteProfile, ...] = (
    SiteProfile("site_a", 14, "t1", noise=0.02, bias=0.05, scale=1.0, modality="T1w, 3T", num_test=10),
    SiteProfile("site_b", 10, "t1", noise=0.06, bias=0.30, scale=100.0, modality="T1w, 1.5T, strong bias field",
                num_test=10),
    SiteProfile("site_c", 8, "t2", noise=0.03, bias=0.10, scale=500.0, modality="T2w", num_test=10),
    SiteProfile("site_d", 6, "t1", noise=0.03, bias=0.10, resolution=2.0, scale=1.0, modality="T1w, half resolution",
                num_test=10),
    SiteProfile("heldout_e", 10, "t1", noise=0.04, bias=0.20, scale=50.0, held_out=True, modality="T1w, other scanner"),
)


def _brain_box() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 1 mm brain mask's bounding box with a margin: (lo, hi) voxel indices."""
    from nilearn import datasets

    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata()
    coords = np.argwhere(mask > 0)
    return np.maximum(coords.min(0) - 4, 0), np.minimum(coords.max(0) + 5, mask.shape)


def mni_brain_shape(voxel_size: float) -> tuple[int, int, int]:
    """The grid of the embedded data's brain box at ``voxel_size`` mm (the MNI152 brain, cropped with a margin; its
    voxels are then ``voxel_size`` to within half a voxel over the box).

    Example::

        >>> mni_brain_shape(2.0)  # the 2 mm tier of real scans
        (76, 94, 80)
    """
    if isinstance(voxel_size, bool) or not isinstance(voxel_size, (int, float)) or not 0.5 <= voxel_size <= 20:
        raise ValueError(f"voxel_size must be a number of mm in [0.5, 20], got {voxel_size!r}.")
    lo, hi = _brain_box()
    return tuple(int(max(1, round(float(n) / voxel_size))) for n in hi - lo)


def _load_templates(shape: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    """MNI152 T1 and tissue probabilities cropped to the brain and resampled to ``shape``: (5, *shape), affine."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata()
    t1_data = t1.get_fdata()
    lo, hi = _brain_box()
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, mask, t1_data = gm[crop], wm[crop], mask[crop], t1_data[crop]
    brain = np.clip(mask, 0, 1)
    gm = np.minimum(gm, brain)
    wm = np.minimum(wm, brain - gm)
    csf = np.clip(brain - gm - wm, 0, 1)
    t1_norm = t1_data / np.percentile(t1_data[mask > 0], 99)
    stack = torch.from_numpy(np.stack([np.clip(t1_norm, 0, 1.5), 1 - brain, csf, gm, wm]).astype(np.float32))
    resampled = F.interpolate(stack[None], size=tuple(shape), mode="area")[0]
    spacing = (hi - lo) / np.asarray(shape, dtype=float)
    affine = t1.affine.copy()
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = t1.affine[:3, :3] @ lo + t1.affine[:3, 3]
    return resampled.contiguous(), affine


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *grid)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


def _subject(
    templates: torch.Tensor, profile: SiteProfile, rng: np.random.Generator, deformation: float, lesions: bool
) -> tuple[np.ndarray, np.ndarray]:
    shape = templates.shape[1:]
    # smooth random deformation: a random per-axis scaling and shift plus a low-frequency displacement field
    axes = [torch.linspace(-1, 1, n) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # (D, H, W, 3) in (x, y, z) order
    scaling = torch.from_numpy(1 + 0.06 * rng.standard_normal(3).astype(np.float32))
    shift = torch.from_numpy(0.03 * rng.standard_normal(3).astype(np.float32))
    displacement = deformation * _smooth_field(rng, shape, (5, 6, 5), 3).permute(1, 2, 3, 0)
    grid = grid * scaling + shift + displacement
    warped = F.grid_sample(templates[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    intensity, probs = warped[0], warped[1:]
    label = probs.argmax(0).to(torch.uint8)
    brain = 1 - probs[0]
    image = intensity * brain if profile.contrast == Contrast.T1 else (1.2 - intensity).clamp_min(0) * brain
    if lesions:
        wm_voxels = torch.nonzero(label == 3)
        for _ in range(int(rng.integers(1, 4))):
            centre = wm_voxels[int(rng.integers(len(wm_voxels)))].float()
            radius = float(rng.uniform(1.0, 2.2))
            zz, yy, xx = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
            blob = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2
            blob &= label == 3
            label[blob] = LESION_LABEL
            image[blob] = 1.3
    if profile.resolution > 1:
        factor = float(profile.resolution)
        low = F.interpolate(image[None, None], scale_factor=1 / factor, mode="area")
        image = F.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
    image = image * torch.exp(profile.bias * _smooth_field(rng, shape, (3, 3, 3), 1)[0])
    if profile.noise > 0:  # Rician: magnitude of a complex signal with Gaussian noise in both channels
        n1 = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
        n2 = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
        image = torch.sqrt((image + profile.noise * n1) ** 2 + (profile.noise * n2) ** 2)
    return (image * profile.scale).numpy().astype(np.float32), label.numpy()


def site_splits(profile: SiteProfile) -> dict[str, int]:
    """Subjects per split of a site: ``{"training": n, "validation": n, "test": n}`` (a held-out site: test only).

    Example::

        >>> site_splits(SiteProfile("a", 14, num_test=10))
        {'training': 8, 'validation': 2, 'test': 10}
    """
    if profile.held_out:
        return {"training": 0, "validation": 0, "test": profile.num_test or profile.num_subjects}
    test = max(2, round(0.25 * profile.num_subjects))
    validation = max(1, round(0.15 * profile.num_subjects))
    return {"training": profile.num_subjects - test - validation, "validation": validation,
            "test": test if profile.num_test is None else profile.num_test}


def _config(
    sites: Sequence[SiteProfile], seed: int, shape: Sequence[int], deformation: float, lesions: bool
) -> dict[str, Any]:
    return {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "shape": [int(s) for s in shape],
        "deformation": float(deformation),
        "lesions": bool(lesions),
        "sites": [asdict(s) for s in sites],
    }


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    atomic_save_nifti(path, data, affine, header_units="mm")


def make_sites(
    out_dir: str | os.PathLike,
    sites: Sequence[SiteProfile | str] | None = None,
    seed: int = 0,
    shape: Sequence[int] = (40, 48, 40),
    deformation: float = 0.04,
    lesions: bool = False,
    figure: bool = True,
    progress: bool = True,
    voxel_size: float | None = None,
) -> Path:
    """Generate (or reuse) the embedded multi-site brain dataset and return the path of its datalist JSON.

    Args:
        out_dir: directory to write ``datalist.json``, one folder of NIfTI files per site and ``sites.png``.
        sites: site profiles, or names of :data:`DEFAULT_SITES` to keep; all default sites when ``None``.
        seed: generation seed; the same seed, sites and settings give byte-identical files.
        shape: voxel grid of every volume (the MNI brain, cropped, resampled to it; default ~3.5 mm voxels).
        deformation: amplitude of the random smooth deformation (fraction of the field of view).
        lesions: add 1-3 small hyperintense white-matter lesions per subject, labelled 4.
        figure: write ``sites.png`` with one slice per site.
        progress: show a progress bar.
        voxel_size: a grid of voxels of this size in mm instead of ``shape`` (:func:`mni_brain_shape`): ``2.0`` is
            the realistic tier (76x94x80 voxels, train it on patches), ``1.0`` the paper's resolution.

    Example::

        >>> datalist = make_sites("data/sites", seed=0)          # a few seconds on a CPU, then cached
        >>> realistic = make_sites("data/sites_2mm", voxel_size=2.0)
        >>> data = load_multisite_datalist(datalist)
    """
    profiles = _select_sites(sites)
    if voxel_size is not None:
        shape = mni_brain_shape(voxel_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"make_sites: output {str(out)!r} exists and is not a directory.")
    config = _config(profiles, seed, shape, deformation, lesions)
    config_hash = config_sha256(config)
    datalist_path = out / "datalist.json"
    if _cached(datalist_path, config_hash):
        if figure and not (out / "sites.png").exists():
            plot_sites(datalist_path, out / "sites.png")
        return datalist_path

    templates, affine = _load_templates(shape)
    labels = {**BRAIN_LABELS, **({LESION_LABEL: "lesion"} if lesions else {})}
    document: dict[str, Any] = {
        "name": "monai-continual embedded multi-site brain (MNI152 anatomy)",
        "labels": {str(k): v for k, v in labels.items()},
        "generator": dict(config, sha256=config_hash),
        "sites": {},
    }
    total = sum(sum(site_splits(p).values()) for p in profiles)
    bar = tqdm(total=total, desc="generating sites", disable=not progress)
    for site_index, profile in enumerate(profiles):
        counts = site_splits(profile)
        entry: dict[str, Any] = {
            "modality": profile.modality,
            "held_out": profile.held_out,
            "acquisition": {k: v for k, v in asdict(profile).items() if k not in ("name", "held_out", "modality")},
            "training": [],
            "validation": [],
            "test": [],
        }
        order = [s for s, n in counts.items() for _ in range(n)]
        for subject, split in enumerate(order):
            rng = np.random.default_rng([int(seed), site_index, subject])
            image, label = _subject(templates, profile, rng, deformation, lesions)
            rel_img = f"{profile.name}/sub{subject:03d}_img.nii.gz"
            rel_seg = f"{profile.name}/sub{subject:03d}_seg.nii.gz"
            _write_nifti(out / rel_img, image, affine)
            _write_nifti(out / rel_seg, label, affine)
            entry[split].append({"image": rel_img, "label": rel_seg})
            bar.update(1)
        document["sites"][profile.name] = entry
    bar.close()
    atomic_write_text(datalist_path, json.dumps(document, indent=2) + "\n")
    if figure:
        plot_sites(datalist_path, out / "sites.png")
    return datalist_path


def _select_sites(sites: Sequence[SiteProfile | str] | None) -> list[SiteProfile]:
    if sites is None:
        return list(DEFAULT_SITES)
    by_name = {s.name: s for s in DEFAULT_SITES}
    profiles = []
    for item in sites:
        if isinstance(item, SiteProfile):
            profiles.append(item)
        elif item in by_name:
            profiles.append(by_name[item])
        else:
            raise ValueError(f"make_sites: unknown site {item!r}; default sites are {list(by_name)}.")
    names = [check_site_name(p.name, "make_sites: site") for p in profiles]  # a folder per site under out_dir
    if len(set(names)) != len(names) or not profiles:
        raise ValueError(f"make_sites: site names must be unique and at least one site given, got {names}.")
    return profiles


def _cached(datalist_path: Path, config_hash: str) -> bool:
    if not datalist_path.is_file():
        return False
    try:
        document = json.loads(datalist_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if document.get("generator", {}).get("sha256") != config_hash:
        return False
    base = datalist_path.parent
    return all(
        (base / item[key]).is_file()
        for site in document["sites"].values()
        for split in ("training", "validation", "test")
        for item in site[split]
        for key in ("image", "label")
    )


def plot_sites(datalist: str | os.PathLike, path: str | os.PathLike) -> Path:
    """One axial slice of the first subject of every site, with the label outlines, as a PNG."""
    import nibabel as nib
    from matplotlib.figure import Figure  # not pyplot: the process's backend is left as it is

    document = json.loads(Path(datalist).read_text(encoding="utf-8"))
    base = Path(datalist).parent
    names = list(document["sites"])
    fig = Figure(figsize=(2.6 * len(names), 5.4))
    axes = fig.subplots(2, len(names), squeeze=False)
    for column, name in enumerate(names):
        site = document["sites"][name]
        item = (site["training"] or site["test"])[0]
        image = np.asanyarray(nib.load(base / item["image"]).dataobj)
        label = np.asanyarray(nib.load(base / item["label"]).dataobj)
        z = image.shape[2] // 2
        axes[0, column].imshow(np.rot90(image[:, :, z]), cmap="gray")
        axes[0, column].set_title(f"{name}\n{site.get('modality', '')}", fontsize=8)
        axes[1, column].imshow(np.rot90(image[:, :, z]), cmap="gray")
        axes[1, column].imshow(
            np.rot90(np.ma.masked_equal(label[:, :, z], 0)), cmap="tab10", alpha=0.45, vmin=0, vmax=9
        )
        n = sum(len(site[s]) for s in ("training", "validation", "test"))
        axes[1, column].set_title(f"{n} subjects{' (held out)' if site.get('held_out') else ''}", fontsize=8)
        for row in (0, 1):
            axes[row, column].axis("off")
    fig.suptitle("Embedded multi-site brain data: one slice per site (bottom: CSF / GM / WM labels)", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def site_profiles_with(overrides: dict[str, dict[str, Any]]) -> list[SiteProfile]:
    """The default sites with some fields replaced, e.g. ``{"site_a": {"num_subjects": 30}}``."""
    unknown = set(overrides) - {s.name for s in DEFAULT_SITES}
    if unknown:
        raise ValueError(f"site_profiles_with: unknown sites {sorted(unknown)}.")
    return [replace(s, **overrides.get(s.name, {})) for s in DEFAULT_SITES]
