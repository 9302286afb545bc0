"""Small helpers shared by every layer of the package: atomic file writes, hashes, weight normalization, site names."""

from __future__ import annotations

from monai_continual.utils.atomic import atomic_copy, atomic_save_nifti, atomic_write, atomic_write_text
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.flags import as_flag
from monai_continual.utils.hashing import config_sha256, tensors_sha256
from monai_continual.utils.names import SITE_NAME_PATTERN, check_site_name
from monai_continual.utils.weights import normalized_weights

__all__ = [
    "SITE_NAME_PATTERN",
    "as_flag",
    "atomic_copy",
    "atomic_save_nifti",
    "atomic_write",
    "atomic_write_text",
    "check_site_name",
    "config_sha256",
    "look_up_choice",
    "normalized_weights",
    "tensors_sha256",
]
