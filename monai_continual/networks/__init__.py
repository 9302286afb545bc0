"""Segmentation networks of the papers: MeshNet (McClure et al. Table 1) and its Bayesian twin."""

from __future__ import annotations

from monai_continual.networks.meshnet import MeshNet

__all__ = ["MeshNet"]
