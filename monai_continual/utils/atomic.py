"""Atomic file writes: a temporary file in the target's directory, flushed, then renamed over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_copy", "atomic_save_nifti"]


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` in one rename, on error it is removed.

    A reader never sees a half-written file: either the old content or the new one.

    Example::

        >>> with atomic_write("weights.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, str(tmp))
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy ``source`` to ``target`` atomically (a reader of ``target`` sees the old file or the whole new one).

    Example::

        >>> atomic_copy("run/posterior.safetensors", "/shared/site_a.safetensors")
    """
    import shutil

    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def atomic_save_nifti(path: str | os.PathLike, data: Any, affine: Any, header_units: str | None = None) -> Path:
    """Save ``data`` with ``affine`` as NIfTI (``.nii`` or ``.nii.gz`` by the target's name) atomically.

    nibabel picks compression from the file name, so the temporary file is given the target's suffixes.

    Example::

        >>> atomic_save_nifti("seg/case_001.nii.gz", labels.astype(np.uint8), affine)
    """
    import nibabel as nib

    target = Path(path)
    image = nib.Nifti1Image(data, affine)
    if header_units is not None:
        image.header.set_xyzt_units(header_units)
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    with atomic_write(target) as tmp:
        named = Path(str(tmp) + suffix)
        try:
            nib.save(image, str(named))
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)
    return target
