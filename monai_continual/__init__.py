"""monai-continual: learn one segmentation model across hospitals without moving patient data."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = (
    "bayes", "networks", "losses", "consolidation", "data", "metrics", "handlers", "engines", "experiment", "utils",
    "cli", "nnunet",
)


def __getattr__(name: str) -> Any:
    # subpackages load on first use, so that `import monai_continual` stays light and bundle expressions such as
    # `$monai_continual.data.make_sites(...)` work after a plain `import monai_continual`
    if name in _SUBPACKAGES:
        return importlib.import_module(f"monai_continual.{name}")
    raise AttributeError(f"module 'monai_continual' has no attribute {name!r}")
