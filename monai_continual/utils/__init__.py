"""Small helpers shared by every layer of the package: atomic file writes and weight normalization."""

from __future__ import annotations

from monai_continual.utils.atomic import atomic_write, atomic_write_text
from monai_continual.utils.weights import normalized_weights

__all__ = ["atomic_write", "atomic_write_text", "normalized_weights"]
