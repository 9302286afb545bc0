"""monai-continual: learn one segmentation model across hospitals without moving patient data."""

from __future__ import annotations

__version__ = "0.1.0"
