"""The strategies' names, one enum for every backend."""

from __future__ import annotations

from monai.utils import StrEnum, look_up_option

__all__ = [
    "Strategy",
    "strategy_of",
    "SEQUENTIAL",
    "BAYESIAN",
    "ORDER_DEPENDENT",
    "DWC_FINETUNED",
    "FEDPROX",
    "SUMMARY_ROWS",
]


class Strategy(StrEnum):
    """The multi-site strategies of the papers, plus the baselines every experiment needs.

    ``single_site`` (one model per site), ``ensemble`` (their mean softmax), ``centrally_hosted`` (pooled data),
    ``single_weight_transfer`` (each site once, to a validation plateau), ``cyclic_weight_transfer`` (every site
    many times), ``fine_tuning`` (each site once, no memory), ``replay`` (fine-tuning plus a memory of earlier sites'
    cases), ``ewc`` (fine-tuning with online elastic weight consolidation: a penalty keeps the weights near the
    previous site's, weighted by a running diagonal Fisher), ``vcl`` (variational continual learning), ``dwc``
    (distributed weight consolidation) and ``federated_averaging`` (FedAvg: parallel site training, averaged
    weighted by training-set size).
    """

    SINGLE_SITE = "single_site"
    ENSEMBLE = "ensemble"
    CENTRALLY_HOSTED = "centrally_hosted"
    SINGLE_WEIGHT_TRANSFER = "single_weight_transfer"
    CYCLIC_WEIGHT_TRANSFER = "cyclic_weight_transfer"
    FINE_TUNING = "fine_tuning"
    REPLAY = "replay"
    EWC = "ewc"
    VCL = "vcl"
    DWC = "dwc"
    FEDERATED_AVERAGING = "federated_averaging"

    @property
    def sequential(self) -> bool:
        """Whether the R matrix is a sequence of site visits (backward transfer applies): :data:`SEQUENTIAL`."""
        return self in SEQUENTIAL

    @property
    def bayesian(self) -> bool:
        """Whether the strategy trains Bayesian networks: :data:`BAYESIAN`."""
        return self in BAYESIAN

    @property
    def order_dependent(self) -> bool:
        """Whether the result depends on the order the sites are visited in: :data:`ORDER_DEPENDENT`."""
        return self in ORDER_DEPENDENT

    @property
    def summary_rows(self) -> tuple[str, ...]:
        """The rows of a summary table this strategy's run gives, each a named result of the run or the strategy's
        own final model: ``dwc`` gives the consolidated model before and after fine-tuning.

        Example::

            >>> Strategy.DWC.summary_rows
            ('dwc', 'dwc_finetuned')
        """
        return (self.value, DWC_FINETUNED) if self is Strategy.DWC else (self.value,)


#: strategies whose R matrix is a sequence of site visits (backward transfer applies)
SEQUENTIAL = (
    Strategy.SINGLE_WEIGHT_TRANSFER,
    Strategy.CYCLIC_WEIGHT_TRANSFER,
    Strategy.FINE_TUNING,
    Strategy.REPLAY,
    Strategy.EWC,
    Strategy.VCL,
)
#: strategies that train Bayesian networks
BAYESIAN = (Strategy.VCL, Strategy.DWC)
#: strategies whose result depends on the site order, in the order a summary lists their spread over orders
ORDER_DEPENDENT = (
    Strategy.FINE_TUNING, Strategy.REPLAY, Strategy.EWC, Strategy.VCL, Strategy.CYCLIC_WEIGHT_TRANSFER
)
#: the named result of DWC's consolidated model fine-tuned on the first site (``dwc``: before fine-tuning)
DWC_FINETUNED = "dwc_finetuned"
#: the summary row of ``federated_averaging`` with FedProx's proximal term (Li et al. 2020), a run of its own
FEDPROX = "fedprox"
#: every summary row in display order (:attr:`Strategy.summary_rows` of each strategy, ``fedprox`` after FedAvg's)
SUMMARY_ROWS = tuple(row for strategy in Strategy for row in strategy.summary_rows) + (FEDPROX,)


def strategy_of(name: str | Strategy) -> Strategy:
    """The :class:`Strategy` named ``name``; an unknown name raises a ``ValueError`` listing the valid ones.

    Example::

        >>> strategy_of("vcl") is Strategy.VCL
        True
    """
    return look_up_option(name, Strategy)
