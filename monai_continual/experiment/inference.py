"""Monte Carlo segmentation of NIfTI files: label maps and uncertainty maps on the input's own grid."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import apply_transform
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
) -> list[dict[str, str]]:
    """Segment every image with ``num_samples`` Monte Carlo passes over a sliding window.

    Writes ``<name>_seg.nii.gz`` (argmax label map, uint8) and ``<name>_uncertainty.nii.gz`` (3 channels: predictive
    variance, entropy, mutual information) with the input's affine and grid.

    Args:
        network: a (Bayesian) segmentation network.
        images: NIfTI paths or a glob pattern.
        output_dir: where the outputs go.
        transform: MONAI transform of ``{"image": path}`` to a ``(C, *spatial)`` tensor, without resampling.
        num_samples: Monte Carlo passes.
        roi_size: sliding-window size.
        in_channels: channels the network expects; an image with another number is refused by name.
        device: where to run.
    """
    files = sorted(glob.glob(images)) if isinstance(images, str) else list(images)
    if not files:
        raise ValueError(f"mc_segment_files: no input images match {images!r}.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"mc_segment_files: output_dir {str(out)!r} exists and is not a directory.")
    inferer = MCInferer(
        num_samples, SlidingWindowInferer(roi_size, sw_batch_size=1, overlap=0.25), return_uncertainty=True
    )
    network = network.to(device).eval()
    written = []
    for path in tqdm(files, desc="MC inference"):
        image = torch.as_tensor(apply_transform(transform, {"image": path})["image"])
        if image.shape[0] != in_channels:
            raise ValueError(f"image {path!r} has {image.shape[0]} channel(s); the network expects {in_channels}.")
        result = inferer(image[None].to(device), network)
        affine = nib.load(path).affine
        name = Path(path).name.split(".")[0]
        seg = out / f"{name}_seg.nii.gz"
        unc = out / f"{name}_uncertainty.nii.gz"
        _save(result["probs"].argmax(1)[0].cpu().numpy().astype(np.uint8), affine, seg)
        maps = torch.cat([result["variance"], result["entropy"], result["mutual_information"]], dim=1)[0]
        _save(np.moveaxis(maps.cpu().numpy().astype(np.float32), 0, -1), affine, unc)
        written.append({"image": path, "seg": str(seg), "uncertainty": str(unc)})
    return written
