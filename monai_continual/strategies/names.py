"""The strategies' names, one enum for every backend."""

from __future__ import annotations

from monai.utils import StrEnum, look_up_option

__all__ = ["Strategy", "strategy_of", "SEQUENTIAL", "BAYESIAN"]


class Strategy(StrEnum):
    """The multi-site strategies of the papers, plus the baselines every experiment needs.

    ``single_site`` (one model per site), ``ensemble`` (their mean softmax), ``centrally_hosted`` (pooled data),
    ``single_weight_transfer`` (each site once, to a validation plateau), ``cyclic_weight_transfer`` (every site
    many times), ``fine_tuning`` (each site once, no memory), ``replay`` (fine-tuning plus a memory of earlier sites'
    cases), ``vcl`` (variational continual learning), ``dwc`` (distributed weight consolidation) and
    ``federated_averaging`` (FedAvg: parallel site training, averaged weighted by training-set size).
    """

    SINGLE_SITE = "single_site"
    ENSEMBLE = "ensemble"
    CENTRALLY_HOSTED = "centrally_hosted"
    SINGLE_WEIGHT_TRANSFER = "single_weight_transfer"
    CYCLIC_WEIGHT_TRANSFER = "cyclic_weight_transfer"
    FINE_TUNING = "fine_tuning"
    REPLAY = "replay"
    VCL = "vcl"
    DWC = "dwc"
    FEDERATED_AVERAGING = "federated_averaging"


#: strategies whose R matrix is a sequence of site visits (backward transfer applies)
SEQUENTIAL = (
    Strategy.SINGLE_WEIGHT_TRANSFER,
    Strategy.CYCLIC_WEIGHT_TRANSFER,
    Strategy.FINE_TUNING,
    Strategy.REPLAY,
    Strategy.VCL,
)
#: strategies that train Bayesian networks
BAYESIAN = (Strategy.VCL, Strategy.DWC)


def strategy_of(name: str | Strategy) -> Strategy:
    """The :class:`Strategy` named ``name``; an unknown name raises a ``ValueError`` listing the valid ones.

    Example::

        >>> strategy_of("vcl") is Strategy.VCL
        True
    """
    return look_up_option(name, Strategy)
