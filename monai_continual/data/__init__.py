"""Multi-site data: datalists, the embedded multi-site brain dataset, the replay buffer and its dataset."""

from __future__ import annotations

from monai_continual.data.case_checks import check_case, check_sites
from monai_continual.data.chain_seeded_dataset import ChainSeededDataset
from monai_continual.data.datalist import SPLITS, DatalistError, MultiSiteDatalist, SiteData, load_multisite_datalist
from monai_continual.data.replay_buffer import REPLAY_POLICIES, ReplayBuffer, ReplayPolicy
from monai_continual.data.replay_dataset import ReplayDataset
from monai_continual.data.scan_transforms import patch_transforms, resamples, scan_transforms
from monai_continual.data.site_geometry import SiteGeometry, geometry_warning, site_geometry
from monai_continual.data.synthetic_sites import (
    BRAIN_LABELS,
    DEFAULT_SITES,
    Contrast,
    SiteProfile,
    make_sites,
    mni_brain_shape,
    plot_sites,
    site_splits,
)

__all__ = [
    "ChainSeededDataset",
    "check_case",
    "check_sites",
    "BRAIN_LABELS",
    "Contrast",
    "DEFAULT_SITES",
    "REPLAY_POLICIES",
    "SPLITS",
    "DatalistError",
    "MultiSiteDatalist",
    "ReplayBuffer",
    "ReplayPolicy",
    "ReplayDataset",
    "SiteData",
    "SiteGeometry",
    "geometry_warning",
    "patch_transforms",
    "resamples",
    "scan_transforms",
    "site_geometry",
    "SiteProfile",
    "site_splits",
    "load_multisite_datalist",
    "make_sites",
    "mni_brain_shape",
    "plot_sites",
]
