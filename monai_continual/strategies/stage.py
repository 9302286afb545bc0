"""One stage of a strategy: what runs where, for how long, and which earlier stages' outputs it starts from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from monai.utils import StrEnum

from monai_continual.utils.names import check_site_name

__all__ = ["Stage", "Action", "NetworkKind"]


class Action(StrEnum):
    """``train``: train at ``sites``; ``average``: weighted mean of the ``inputs``' weights (FedAvg); ``dwc``: McClure
    Eq. 17 of the ``inputs``' posteriors with the ``prior`` stage's; ``ensemble``: mean softmax of the inputs."""

    TRAIN = "train"
    AVERAGE = "average"
    DWC = "dwc"
    ENSEMBLE = "ensemble"


class NetworkKind(StrEnum):
    """``map``: a deterministic network trained on the data loss; ``bayes``: a Bayesian one trained on the ELBO."""

    MAP = "map"
    BAYES = "bayes"


@dataclass(frozen=True)
class Stage:
    """One stage. Every input is named by a stage number, never as "the latest": stage 0 is the run's initial
    weights, and stage ``n`` publishes exactly one model (weights for ``map``, a posterior for ``bayes``).

    Attributes:
        number: 1, 2, ... in schedule order.
        action: see :class:`Action`.
        sites: the sites whose training data a ``train`` stage uses (several: pooled, centrally hosted); each name
            must match ``^[A-Za-z0-9_-]+$`` (:func:`~monai_continual.utils.check_site_name`), ``ValueError`` otherwise.
        network: the kind of model the stage publishes.
        epochs: maximum epochs of a ``train`` stage.
        iterations: if set, a ``train`` stage is this many iterations instead of ``epochs`` whole epochs.
        start: the stage whose published model this stage starts from (0: the initial weights).
        prior: the stage whose posterior is this stage's prior (VCL, DWC); ``None``: N(0, prior_std).
        bound_std: posterior std bounded by the prior's (DWC site training, McClure's sigma_s <= sigma_0).
        num_examples: N of the ELBO's KL/N; ``None``: the stage's number of training examples.
        patience: train to a validation plateau with this patience (single weight transfer).
        previous_visit: the same site's previous ``train`` stage of the same network kind (where a site keeps its
            own optimizer state across visits, it continues from that stage's).
        memory: the replay stage whose saved memory this stage mixes in (``None``: no memory).
        remember: this stage adds its site's cases to the memory (replay).
        inputs: the stages a consolidation combines.
        evaluate: score the published model on every site's test data (an R-matrix row).
        label: the row's label.
        result: a named result this stage's scores stand for (e.g. ``"dwc"``, ``"single_site[a]"``).
        round: the round a stage belongs to (cyclic transfer, DWC, FedAvg).
        proximal_mu: FedProx's mu of a deterministic ``train`` stage: every step adds ``mu/2 ||w - w_start||^2``
            to the loss, ``w_start`` the ``start`` stage's weights (0: none). Part of :meth:`to_dict` only when
            not 0, so that runs made before this field keep their configuration hash.
        ewc_lambda: EWC's lambda of a deterministic ``train`` stage: every step adds
            ``lambda/2 sum_i F_i (w_i - w_start_i)^2`` to the loss, ``F`` the ``fisher`` stage's running Fisher
            (0: none).
        fisher: the stage whose running Fisher the penalty uses and this stage's own decays (``None``: none).
        ewc_gamma: when set, the stage publishes its running Fisher after training, ``ewc_gamma * F_fisher +
            F_own`` (``F_own``: the site's Fisher at the trained weights); in (0, 1].
            ``ewc_lambda``, ``fisher`` and ``ewc_gamma`` are part of :meth:`to_dict` only when set, as
            ``proximal_mu``.
    """

    number: int
    action: Action = Action.TRAIN
    sites: tuple[str, ...] = ()
    network: NetworkKind = NetworkKind.MAP
    epochs: int = 1
    iterations: int | None = None
    start: int | None = 0
    prior: int | None = None
    bound_std: bool = False
    num_examples: float | None = None
    patience: int | None = None
    previous_visit: int | None = None
    memory: int | None = None
    remember: bool = False
    inputs: tuple[int, ...] = ()
    evaluate: bool = True
    label: str = ""
    result: str | None = None
    round: int | None = None
    proximal_mu: float = 0.0
    ewc_lambda: float = 0.0
    fisher: int | None = None
    ewc_gamma: float | None = None

    def __post_init__(self) -> None:
        # site names become folder names of a run (``sites/<site>/``, ``stages/<number>_<site>/``), also where a
        # stage arrives from elsewhere (a federated server): refuse anything but ``^[A-Za-z0-9_-]+$`` here
        for site in self.sites:
            check_site_name(site, f"stage {self.number}: site")
        self._check_number("proximal_mu", self.proximal_mu)
        self._check_number("ewc_lambda", self.ewc_lambda)
        if self.ewc_gamma is not None:
            self._check_number("ewc_gamma", self.ewc_gamma, high=1.0)
            if self.ewc_gamma == 0:
                raise ValueError(f"stage {self.number}: ewc_gamma must be in (0, 1], got {self.ewc_gamma!r}.")
        if self.ewc_lambda and self.fisher is None:
            raise ValueError(f"stage {self.number}: ewc_lambda needs the stage of the Fisher it weighs (fisher).")
        anchored = {"proximal_mu": self.proximal_mu, "ewc_lambda": self.ewc_lambda,
                    "fisher": self.fisher is not None, "ewc_gamma": self.ewc_gamma is not None}
        if self.action != Action.TRAIN or self.network != NetworkKind.MAP or self.start is None:
            for name in (name for name, value in anchored.items() if value):
                raise ValueError(f"stage {self.number}: {name} applies to deterministic train stages with a start, "
                                 f"not to a {self.network} {self.action} stage.")

    def _check_number(self, name: str, value: float, high: float = math.inf) -> None:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not 0 <= value <= high):
            bound = "" if high == math.inf else f" and <= {high:g}"
            raise ValueError(f"stage {self.number}: {name} must be a finite number >= 0{bound}, got {value!r}.")

    @property
    def site(self) -> str:
        """The stage's sites joined by ``+`` (a name for directories and logs)."""
        return "+".join(self.sites)

    @property
    def is_training(self) -> bool:
        return self.action == Action.TRAIN

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["action"], data["network"] = str(self.action), str(self.network)
        data["sites"], data["inputs"] = list(self.sites), list(self.inputs)
        for name, unset in (("proximal_mu", 0.0), ("ewc_lambda", 0.0), ("fisher", None), ("ewc_gamma", None)):
            if data[name] == unset:
                del data[name]
        return data
