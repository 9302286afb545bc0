"""Stage schedules of the multi-site strategies: which site trains when, for how long, starting from what."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Stage", "STRATEGIES", "site_order", "sequential_schedule", "cyclic_schedule", "dwc_schedule"]

#: Strategies of :class:`~monai_continual.engines.ContinualRunner` (``dwc`` also yields ``dwc_finetuned``).
STRATEGIES = (
    "single_site",
    "ensemble",
    "centrally_hosted",
    "single_weight_transfer",
    "cyclic_weight_transfer",
    "fine_tuning",
    "replay",
    "vcl",
    "dwc",
)


@dataclass
class Stage:
    """One training stage.

    Attributes:
        sites: the site(s) whose training data the stage uses (several: pooled, as in centrally hosted training).
        epochs: maximum epochs (``patience`` may stop earlier).
        iterations: if set, the stage is this many iterations instead of whole epochs (cyclic transfer every n
            iterations).
        kind: ``"map"`` (deterministic network, data loss), ``"bayes"`` (Bayesian network, ELBO) or
            ``"consolidate"`` (no training: DWC of the round's site posteriors).
        init: where the stage's weights come from: ``"store"`` (the latest published weights: weight transfer),
            ``"fresh"`` (the initial network), ``"prior"`` (the shared prior posterior of a DWC round).
        vcl: make the loaded posterior the prior before training (variational continual learning).
        bound_std: Bayesian std bounded by the prior std (DWC site training).
        num_examples: N of the ELBO; ``None`` means the stage's number of training items.
        patience: stop after this many epochs without validation improvement (single weight transfer).
        export_posterior: file name (in the run's shared store) to export the stage's posterior to.
        publish: publish the weights to the store when the stage ends.
        evaluate: add an R-matrix row after the stage.
        label: the stage's label in the R matrix.
    """

    sites: list[str]
    epochs: int = 1
    iterations: int | None = None
    kind: str = "map"
    init: str = "store"
    vcl: bool = False
    bound_std: bool = False
    num_examples: float | None = None
    patience: int | None = None
    export_posterior: str | None = None
    publish: bool = True
    evaluate: bool = True
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def site_order(sites: Sequence[str], order: str | Sequence[str] = "fixed", seed: int = 0, skip: Sequence[str] = ()) -> list[str]:
    """The visiting order: ``"fixed"`` (as given), ``"random"`` (shuffled by ``seed``) or an explicit list.

    Skipped sites are left out (Chang et al.'s experiment of skipping an institution).
    """
    sites = list(sites)
    unknown = [s for s in skip if s not in sites]
    if unknown:
        raise ValueError(f"skip names unknown site(s) {unknown}; sites are {sites}.")
    if isinstance(order, str):
        if order == "fixed":
            ordered = list(sites)
        elif order == "random":
            ordered = list(sites)
            random.Random(seed).shuffle(ordered)
        else:
            raise ValueError(f"order must be 'fixed', 'random' or a list of sites, got {order!r}.")
    else:
        ordered = list(order)
        unknown = [s for s in ordered if s not in sites]
        if unknown or len(set(ordered)) != len(ordered):
            raise ValueError(f"order {ordered} must list distinct sites among {sites}.")
    ordered = [s for s in ordered if s not in skip]
    if not ordered:
        raise ValueError("no site left to train on after skipping.")
    return ordered


def sequential_schedule(
    order: Sequence[str], epochs: int, kind: str = "map", vcl: bool = False, patience: int | None = None
) -> list[Stage]:
    """Each site once, in order, from the previous site's weights (SWT, fine-tuning, replay, VCL)."""
    return [
        Stage([site], epochs=epochs, kind=kind, init="store", vcl=vcl and i > 0, patience=patience)
        for i, site in enumerate(order)
    ]


def cyclic_schedule(
    order: Sequence[str], cycles: int, epochs_per_visit: int = 1, iterations_per_visit: int | None = None
) -> list[Stage]:
    """Every site ``cycles`` times, moving on every ``epochs_per_visit`` epochs (or ``iterations_per_visit``).

    Chang et al.'s cyclical weight transfer; ``epochs_per_visit=1`` is Remedios et al.'s alternating scheme.
    """
    if cycles < 1 or epochs_per_visit < 1:
        raise ValueError(f"cycles and epochs_per_visit must be >= 1, got {cycles} and {epochs_per_visit}.")
    if iterations_per_visit is not None and iterations_per_visit < 1:
        raise ValueError(f"iterations_per_visit must be >= 1, got {iterations_per_visit}.")
    return [
        Stage([site], epochs=1 if iterations_per_visit else epochs_per_visit, iterations=iterations_per_visit, label=f"c{c + 1}:{site}")
        for c in range(cycles)
        for site in order
    ]


def dwc_schedule(order: Sequence[str], epochs: int, rounds: int = 1, finetune: bool = True) -> list[Stage]:
    """McClure et al. Sec. 3.1.5-3.1.6: a prior from the first site, parallel site posteriors, consolidation.

    Stages: MAP network on the first site; Bayesian network on the first site from the MAP weights with a N(0, 1)
    prior (the shared prior q0); per round, every other site trains from q0 with std bounded by q0's and exports its
    posterior, then the posteriors are consolidated (Eq. 17) into the next q0; optionally the consolidated network is
    fine-tuned on the first site with the data term weighted as one example (the paper's "DWC" row).
    """
    if len(order) < 2:
        raise ValueError("DWC needs at least two sites: one for the prior and one or more to consolidate.")
    first, others = order[0], list(order[1:])
    stages = [
        Stage([first], epochs=epochs, kind="map", init="fresh", publish=True, label=f"map:{first}"),
        Stage([first], epochs=epochs, kind="bayes", init="store", export_posterior="prior_round1.safetensors", label=f"q0:{first}"),
    ]
    for r in range(1, rounds + 1):
        prior = f"prior_round{r}.safetensors"
        for site in others:
            stages.append(
                Stage(
                    [site], epochs=epochs, kind="bayes", init="prior", bound_std=True, publish=False,
                    export_posterior=f"round{r}_{site}.safetensors", label=f"r{r}:{site}", extra={"prior": prior},
                )
            )
        stages.append(
            Stage(
                list(others), epochs=0, kind="consolidate", init="prior", publish=True,
                export_posterior=f"prior_round{r + 1}.safetensors", label=f"dwc r{r}",
                extra={"prior": prior, "sites": [f"round{r}_{s}.safetensors" for s in others], "result": "dwc"},
            )
        )
    if finetune:
        stages.append(
            Stage(
                [first], epochs=epochs, kind="bayes", init="prior", num_examples=1, label=f"dwc+ft:{first}",
                extra={"prior": f"prior_round{rounds + 1}.safetensors", "result": "dwc_finetuned"},
            )
        )
    return stages
