"""Monte Carlo segmentation of NIfTI files: label maps and uncertainty maps on the input's own grid."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Invertd, InvertibleTransform, apply_transform
from torch import nn
from tqdm.auto import tqdm

from monai_continual.bayes import MCInferer
from monai_continual.consolidation.weight_store import load_weights
from monai_continual.utils.atomic import atomic_save_nifti

__all__ = ["load_weights", "mc_segment_files"]


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    atomic_save_nifti(path, data, affine)


def mc_segment_files(
    network: nn.Module,
    images: Sequence[str] | str,
    output_dir: str | os.PathLike,
    transform: Callable,
    num_samples: int = 10,
    roi_size: Sequence[int] = (64, 64, 64),
    in_channels: int = 1,
    device: str = "cpu",
    sw_batch_size: int = 4,
    sw_overlap: float = 0.25,
) -> list[dict[str, str]]:
    """Segment every image with ``num_samples`` Monte Carlo passes over a sliding window.

    Writes ``<name>_seg.nii.gz`` (argmax label map, uint8) and ``<name>_uncertainty.nii.gz`` (3 channels: predictive
    variance, entropy, mutual information) on the input's own grid and affine: when ``transform`` reorients or
    resamples (:func:`~monai_continual.data.scan_transforms` with ``axcodes``/``pixdim``), the class probabilities and
    the uncertainty maps are brought back with MONAI's ``Invertd`` (trilinear) and the label map is their argmax.

    Args:
        network: a (Bayesian) segmentation network.
        images: NIfTI paths or a glob pattern.
        output_dir: where the outputs go.
        transform: MONAI transform of ``{"image": path}`` to a ``(C, *spatial)`` tensor (invertible where it changes
            the grid).
        num_samples: Monte Carlo passes.
        roi_size: sliding-window size.
        in_channels: channels the network expects; an image with another number is refused by name.
        device: where to run.
        sw_batch_size: windows per forward pass.
        sw_overlap: overlap of neighbouring windows.

    Example::

        >>> mc_segment_files(net, "scans/*.nii.gz", "out", scan_transforms(["image"], pixdim=(1.0, 1.0, 1.0)))
    """
    files = sorted(glob.glob(images)) if isinstance(images, str) else list(images)
    if not files:
        raise ValueError(f"mc_segment_files: no input images match {images!r}.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"mc_segment_files: output_dir {str(out)!r} exists and is not a directory.")
    inferer = MCInferer(
        num_samples, SlidingWindowInferer(roi_size, sw_batch_size=sw_batch_size, overlap=sw_overlap),
        return_uncertainty=True,
    )
    # only an invertible chain can have changed the grid in a way that can be undone (a plain callable cannot)
    invert = Invertd("maps", transform, orig_keys="image", nearest_interp=False) if isinstance(
        transform, InvertibleTransform) else None
    network = network.to(device).eval()
    written = []
    for path in tqdm(files, desc="MC inference"):
        image = apply_transform(transform, {"image": path})["image"]
        if image.shape[0] != in_channels:
            raise ValueError(f"image {path!r} has {image.shape[0]} channel(s); the network expects {in_channels}.")
        with torch.no_grad():
            result = inferer(torch.as_tensor(image)[None].to(device), network)
        maps = torch.cat([result["probs"], result["variance"], result["entropy"], result["mutual_information"]],
                         dim=1)[0].cpu()
        if invert is not None and isinstance(image, MetaTensor) and image.applied_operations:  # the input's own grid
            maps = torch.as_tensor(invert({"image": image, "maps": MetaTensor(maps, meta=image.meta)})["maps"])
        probs, uncertainty = maps[: result["probs"].shape[1]], maps[result["probs"].shape[1]:]
        first = path[0] if isinstance(path, (list, tuple)) else path  # a list of modality files shares one grid
        source = nib.load(first)
        affine = source.affine
        if tuple(probs.shape[1:]) != tuple(source.shape[:3]):
            raise ValueError(
                f"mc_segment_files: the transform changed the grid of {str(first)!r} ({tuple(source.shape[:3])} -> "
                f"{tuple(probs.shape[1:])}) in a way that cannot be inverted (keep MetaTensor tracking on and change "
                "the grid only with invertible MONAI transforms, e.g. scan_transforms' Orientationd/Spacingd)."
            )
        name = Path(first).name.split(".")[0]
        seg = out / f"{name}_seg.nii.gz"
        unc = out / f"{name}_uncertainty.nii.gz"
        _save(probs.argmax(0).numpy().astype(np.uint8), affine, seg)
        _save(np.moveaxis(uncertainty.numpy().astype(np.float32), 0, -1), affine, unc)
        written.append({"image": path, "seg": str(seg), "uncertainty": str(unc)})
    return written
