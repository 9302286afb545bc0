"""Sites as real federated parties on NVIDIA FLARE 2.9: a server workflow that walks any strategy's schedule, and a
client that runs each stage with the in-process executor on its own data.

Needs ``nvflare`` (``pip install "monai-continual[federated]"``); the rest of the package never imports it.
"""

from __future__ import annotations

from monai.utils import optional_import

_, has_nvflare = optional_import("nvflare")
if not has_nvflare:
    raise ImportError("monai_continual.federated needs NVIDIA FLARE: pip install nvflare==2.9.0 (no extras).")

from monai_continual.federated.controller import StrategyController, refuse_data_transfer  # noqa: E402
from monai_continual.federated.payload import PayloadError, check_payload  # noqa: E402
from monai_continual.federated.run import FederatedRun  # noqa: E402
from monai_continual.federated.server_executor import FederatedStageExecutor, SiteUnavailable  # noqa: E402
from monai_continual.federated.site_worker import SiteWorker  # noqa: E402

__all__ = [
    "FederatedRun",
    "FederatedStageExecutor",
    "PayloadError",
    "SiteUnavailable",
    "SiteWorker",
    "StrategyController",
    "check_payload",
    "refuse_data_transfer",
]
