"""The headline comparisons of the papers, checked on our own runs with paired tests across test volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_continual.metrics import paired_tests
from monai_continual.report.paper_claims import PAPER_CLAIMS, Check, Volumes

__all__ = ["run_comparisons", "site_volumes"]


def site_volumes(scores: Mapping[str, Sequence[float]], sites: Sequence[str]) -> list[float]:
    """The per-volume scores of ``sites``, site after site (a site without scores adds none)."""
    return [value for site in sites for value in scores.get(site, [])]


def run_comparisons(
    scores: Mapping[str, Mapping[str, Sequence[float]]], training_sites: Sequence[str], held_out_sites: Sequence[str]
) -> list[dict[str, Any]]:
    """Paired t-test and Wilcoxon test of every ``comparison`` claim of
    :data:`~monai_continual.report.paper_claims.PAPER_CLAIMS` whose two strategies were run.

    For ``single_site`` each site's volumes are scored by that site's own model; a held-out comparison needs a
    strategy with held-out scores on both sides.

    Args:
        scores: strategy (summary row) -> site -> per-volume Dice.
        training_sites: the volumes of a ``training`` comparison.
        held_out_sites: the volumes of a ``held_out`` comparison.

    Example::

        >>> rows = run_comparisons({"replay": replay, "fine_tuning": ft}, ["site_a", "site_b"], [])
    """
    rows = []
    for claim in PAPER_CLAIMS:
        if claim.check != Check.COMPARISON or claim.a not in scores or claim.b not in scores:
            continue
        sites = list(held_out_sites) if claim.volumes == Volumes.HELD_OUT else list(training_sites)
        x, y = site_volumes(scores[claim.a], sites), site_volumes(scores[claim.b], sites)
        if len(x) != len(y) or len(x) < 2:
            continue
        result = paired_tests(x, y)
        a, b = claim.labels
        rows.append(
            {
                "claim": claim.text,
                "paper": claim.paper,
                "a": a,
                "b": b,
                "volumes": str(claim.volumes),
                "mean_a": sum(x) / len(x),
                "mean_b": sum(y) / len(y),
                "direction_holds": result.mean_difference >= 0,
                **result.to_dict(),
            }
        )
    return rows
