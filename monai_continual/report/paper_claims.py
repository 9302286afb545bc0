"""The papers' claims that the main job checks on its own runs: which strategy should beat which, with which test.

One declarative table, :data:`PAPER_CLAIMS`, read by :func:`~monai_continual.report.run_comparisons` (the two-sided
comparisons of ``summary["comparisons"]``) and :func:`~monai_continual.report.check_goals` (the one-sided goals of
``summary["goals"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from monai.utils import StrEnum

from monai_continual.strategies.names import DWC_FINETUNED, FEDPROX, Strategy

__all__ = ["Check", "Claim", "PAPER_CLAIMS", "SINGLE_SITE_MEAN", "Volumes"]

#: a goal's operand: per volume, the mean score of the single-site models
SINGLE_SITE_MEAN = f"{Strategy.SINGLE_SITE}_mean"


class Check(StrEnum):
    """How a claim is tested.

    ``comparison``: paired t-test and Wilcoxon test over test volumes, two-sided (A >= B expected);
    ``volumes``: paired t-test over the training sites' test volumes, one-sided, A + margin > B;
    ``size_orders``: A in increasing against A in decreasing site-size order, paired over test volumes, two-sided;
    ``orders_bwt``: A's BWT against B's, paired over site orders, one-sided;
    ``bwt_below_zero``: A's BWT below 0, one-sample t-test over site orders, one-sided.
    """

    COMPARISON = "comparison"
    VOLUMES = "volumes"
    SIZE_ORDERS = "size_orders"
    ORDERS_BWT = "orders_bwt"
    BWT_BELOW_ZERO = "bwt_below_zero"


class Volumes(StrEnum):
    """Whose test volumes a comparison pairs: the training sites' or the held-out sites'."""

    TRAINING = "training"
    HELD_OUT = "held_out"


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, checked on the main job's runs.

    Attributes:
        text: the claim, as the summary states it.
        paper: where it comes from.
        a, b: the strategies (or named results) compared; the paper found A better than B.
        check: how it is tested (:class:`Check`).
        margin: added to A's scores before the test (``volumes``: "within this many Dice points").
        volumes: whose test volumes a ``comparison`` pairs.

    Example::

        >>> Claim("replay beats sequential fine-tuning", "Karthik et al.", Strategy.REPLAY, Strategy.FINE_TUNING,
        ...       Check.COMPARISON)
    """

    text: str
    paper: str
    a: str
    b: str
    check: Check
    margin: float = 0.0
    volumes: Volumes = Volumes.TRAINING

    @property
    def labels(self) -> tuple[str, str]:
        """How a summary names A and B (a size-order claim compares A with itself, a BWT claim A with zero)."""
        if self.check == Check.SIZE_ORDERS:
            return f"{self.a} (increasing)", f"{self.a} (decreasing)"
        if self.check == Check.BWT_BELOW_ZERO:
            return f"{self.a} BWT", "0"
        return str(self.a), str(self.b)


_MCCLURE = "McClure et al. (Table 2)"
_EWC = "Kirkpatrick et al. 2017; González et al. 2023 (Lifelong nnU-Net)"

#: every claim, comparisons first, then the goals in the order the summary lists them
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("DWC beats the ensemble of site models", _MCCLURE, DWC_FINETUNED, Strategy.ENSEMBLE, Check.COMPARISON),
    Claim("DWC generalizes like the ensemble (held-out site)", _MCCLURE, DWC_FINETUNED, Strategy.ENSEMBLE,
          Check.COMPARISON, volumes=Volumes.HELD_OUT),
    Claim("cyclic transfer beats single-site models", "Chang et al.; Remedios et al.", Strategy.CYCLIC_WEIGHT_TRANSFER,
          Strategy.SINGLE_SITE, Check.COMPARISON),
    Claim("cyclic transfer beats single weight transfer", "Chang et al.; Darzidehkalani et al.",
          Strategy.CYCLIC_WEIGHT_TRANSFER, Strategy.SINGLE_WEIGHT_TRANSFER, Check.COMPARISON),
    Claim("cyclic transfer approaches centrally hosted training", "Chang et al. (Table 2)",
          Strategy.CYCLIC_WEIGHT_TRANSFER, Strategy.CENTRALLY_HOSTED, Check.COMPARISON),
    Claim("replay beats sequential fine-tuning", "Karthik et al.", Strategy.REPLAY, Strategy.FINE_TUNING,
          Check.COMPARISON),
    Claim("EWC beats sequential fine-tuning", _EWC, Strategy.EWC, Strategy.FINE_TUNING, Check.COMPARISON),
    Claim("FedProx beats FedAvg across heterogeneous sites", "Li et al. 2020 (FedProx)", FEDPROX,
          Strategy.FEDERATED_AVERAGING, Check.COMPARISON),
    Claim("DWC (fine-tuned) beats the ensemble", _MCCLURE, DWC_FINETUNED, Strategy.ENSEMBLE, Check.VOLUMES),
    Claim("DWC (fine-tuned) beats the mean single-site model", _MCCLURE, DWC_FINETUNED, SINGLE_SITE_MEAN,
          Check.VOLUMES),
    Claim("DWC (fine-tuned) within 4 Dice points of centrally hosted", "McClure et al. (2.8 points)", DWC_FINETUNED,
          Strategy.CENTRALLY_HOSTED, Check.VOLUMES, margin=0.04),
    Claim("fine-tuning the consolidated model helps", _MCCLURE, DWC_FINETUNED, Strategy.DWC, Check.VOLUMES),
    Claim("VCL beats the mean single-site model", _MCCLURE, Strategy.VCL, SINGLE_SITE_MEAN, Check.VOLUMES),
    Claim("CWT within 2 Dice points of centrally hosted", "Chang et al. (Table 2)", Strategy.CYCLIC_WEIGHT_TRANSFER,
          Strategy.CENTRALLY_HOSTED, Check.VOLUMES, margin=0.02),
    Claim("VCL's increasing and decreasing site-size orders differ", _MCCLURE, Strategy.VCL, Strategy.VCL,
          Check.SIZE_ORDERS),
    Claim("replay's BWT above fine-tuning's", "Karthik et al.", Strategy.REPLAY, Strategy.FINE_TUNING,
          Check.ORDERS_BWT),
    Claim("fine-tuning forgets (BWT < 0)", "Karthik et al.", Strategy.FINE_TUNING, Strategy.FINE_TUNING,
          Check.BWT_BELOW_ZERO),
    Claim("EWC's BWT above fine-tuning's", _EWC, Strategy.EWC, Strategy.FINE_TUNING, Check.ORDERS_BWT),
)
