"""One strategy engine for every backend: names, options, schedules, run state and the executor protocol.

Plain Python and torch: no ignite, MONAI engines, nnU-Net or NVFlare. A strategy is written here once; the MONAI
runner, the nnU-Net sites and the federated controller only execute its stages.
"""

from __future__ import annotations

from monai_continual.strategies.engine import INITIAL_STAGE, run_stages
from monai_continual.strategies.executor import NonFiniteTrainingError, StageExecutor, StageOutput
from monai_continual.strategies.faults import CRASH_ENV, STEPS, crash_point
from monai_continual.strategies.names import BAYESIAN, SEQUENTIAL, Strategy, strategy_of
from monai_continual.strategies.options import (
    OPTIONS,
    CentrallyHostedOptions,
    CycleEvaluation,
    CyclicWeightTransferOptions,
    DWCOptions,
    EWCOptions,
    FederatedAveragingOptions,
    FineTuningOptions,
    ReplayOptions,
    SingleSiteOptions,
    SingleWeightTransferOptions,
    StrategyOptions,
    VCLOptions,
    make_options,
)
from monai_continual.strategies.order import SiteOrder, round_orders
from monai_continual.strategies.run_state import RunState, RunStateError, StageRecord
from monai_continual.strategies.schedule import build_schedule, run_name
from monai_continual.strategies.stage import Action, NetworkKind, Stage

__all__ = [
    "Action",
    "CentrallyHostedOptions",
    "CycleEvaluation",
    "CyclicWeightTransferOptions",
    "DWCOptions",
    "EWCOptions",
    "FederatedAveragingOptions",
    "FineTuningOptions",
    "ReplayOptions",
    "SingleSiteOptions",
    "SingleWeightTransferOptions",
    "VCLOptions",
    "BAYESIAN",
    "CRASH_ENV",
    "INITIAL_STAGE",
    "NetworkKind",
    "NonFiniteTrainingError",
    "OPTIONS",
    "RunState",
    "RunStateError",
    "SEQUENTIAL",
    "STEPS",
    "SiteOrder",
    "Stage",
    "StageExecutor",
    "StageOutput",
    "StageRecord",
    "Strategy",
    "StrategyOptions",
    "build_schedule",
    "crash_point",
    "make_options",
    "round_orders",
    "run_name",
    "run_stages",
    "strategy_of",
]
