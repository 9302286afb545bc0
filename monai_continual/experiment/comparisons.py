"""The headline comparisons of the papers, checked on our own runs with paired tests across test volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_continual.metrics import paired_tests

__all__ = ["PAPER_COMPARISONS", "run_comparisons"]

#: (claim, paper, strategy A, strategy B, "held_out" or "training" volumes): the paper found A >= B.
PAPER_COMPARISONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("DWC beats the ensemble of site models", "McClure et al. (Table 2)", "dwc_finetuned", "ensemble", "training"),
    ("DWC generalizes like the ensemble (held-out site)", "McClure et al. (Table 2)", "dwc_finetuned", "ensemble",
     "held_out"),
    ("cyclic transfer beats single-site models", "Chang et al.; Remedios et al.", "cyclic_weight_transfer",
     "single_site", "training"),
    ("cyclic transfer beats single weight transfer", "Chang et al.; Darzidehkalani et al.", "cyclic_weight_transfer",
     "single_weight_transfer", "training"),
    ("cyclic transfer approaches centrally hosted training", "Chang et al. (Table 2)", "cyclic_weight_transfer",
     "centrally_hosted", "training"),
    ("replay beats sequential fine-tuning", "Karthik et al.", "replay", "fine_tuning", "training"),
)


def _volumes(scores: Mapping[str, Sequence[float]], sites: Sequence[str]) -> list[float]:
    return [value for site in sites for value in scores.get(site, [])]


def run_comparisons(
    scores: Mapping[str, Mapping[str, Sequence[float]]], training_sites: Sequence[str], held_out_sites: Sequence[str]
) -> list[dict[str, Any]]:
    """Paired t-test and Wilcoxon test of every :data:`PAPER_COMPARISONS` entry whose two strategies were run.

    ``scores`` maps strategy -> site -> per-volume Dice. For ``single_site`` each site's volumes are scored by that
    site's own model; a held-out comparison needs a strategy with held-out scores on both sides.
    """
    rows = []
    for claim, paper, a, b, which in PAPER_COMPARISONS:
        if a not in scores or b not in scores:
            continue
        sites = list(held_out_sites) if which == "held_out" else list(training_sites)
        x, y = _volumes(scores[a], sites), _volumes(scores[b], sites)
        if len(x) != len(y) or len(x) < 2:
            continue
        result = paired_tests(x, y)
        rows.append(
            {
                "claim": claim,
                "paper": paper,
                "a": a,
                "b": b,
                "volumes": which,
                "mean_a": sum(x) / len(x),
                "mean_b": sum(y) / len(y),
                "direction_holds": result.mean_difference >= 0,
                **result.to_dict(),
            }
        )
    return rows
