"""A run's training budget: epochs per training site, and whether its stages' training losses plateaued."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_continual.metrics import loss_plateaued

__all__ = ["training_budget"]


def training_budget(stages: Sequence[Mapping[str, Any]], num_sites: int, window: int = 3,
                    tolerance: float = 0.05) -> dict[str, Any]:
    """Epochs a run spent per training site and whether its training losses plateaued.

    A stage with at least ``2 * window`` epochs is judged alone (:func:`~monai_continual.metrics.loss_plateaued`);
    shorter stages (cyclic visits, federated rounds) are judged per site over the concatenation of that site's
    consecutive stages of the same kind.

    Args:
        stages: the run's stage records as mappings (``sites``, ``details`` with ``loss`` per epoch and, Bayesian,
            ``elbo``).
        num_sites: training sites of the run.
        window: epochs per window of :func:`~monai_continual.metrics.loss_plateaued`.
        tolerance: its relative tolerance.

    Example::

        >>> training_budget([asdict(r) for r in state.stage_records()], 4)["epochs_per_site"]
    """
    site_epochs, verdicts, groups = 0, [], {}
    for record in stages:
        losses = (record.get("details") or {}).get("loss")
        if not losses:
            continue
        site_epochs += len(losses) * len(record["sites"])
        if len(losses) >= 2 * window:
            verdicts.append(loss_plateaued(losses, window, tolerance))
        else:
            groups.setdefault(("+".join(record["sites"]), "elbo" in record["details"]), []).extend(losses)
    verdicts += [loss_plateaued(v, window, tolerance) for v in groups.values()]
    judged = [v for v in verdicts if v is not None]
    return {"site_epochs": site_epochs, "epochs_per_site": site_epochs / max(num_sites, 1),
            "plateaued": sum(judged), "judged": len(judged), "unjudged": len(verdicts) - len(judged)}
