"""DWC in training loops: export a site's posterior when it finishes; consolidate site posteriors into a network."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, StrEnum, min_version, optional_import
from torch import nn

from monai_continual.consolidation.dwc import Fallback, consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.handlers._events import resolve_event
from monai_continual.utils.choices import look_up_choice

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ConsolidationHandler", "ConsolidationMode"]


class ConsolidationMode(StrEnum):
    """``export``: a site saves its posterior; ``consolidate``: the consolidating party merges the sites'."""

    EXPORT = "export"
    CONSOLIDATE = "consolidate"


class ConsolidationHandler:
    """Both sides of distributed weight consolidation (McClure et al.) as one ignite handler.

    ``mode="export"`` (a site): at ``event`` (default: training completed) save ``Posterior.from_model(network)``
    with the site name and its number of training examples to ``posterior_file``.

    ``mode="consolidate"`` (the consolidating party): at ``event`` (default: started) consolidate the
    ``site_posteriors`` (paths or glob patterns) with the shared ``prior`` (Eq. 17), load the result into the
    network as posterior and prior (the next round starts from it), and save it to ``posterior_file`` if given.

    Args:
        network: the Bayesian network.
        mode: ``"export"`` or ``"consolidate"``.
        posterior_file: where the site's (or the consolidated) posterior is written.
        site: the site's name (export).
        num_examples: the site's number of training examples (export; weights the deterministic averages).
        prior: the shared prior file (consolidate).
        site_posteriors: site posterior files or glob patterns (consolidate).
        fallback: see :func:`consolidate_dwc`.
        max_mean_shift: see :func:`consolidate_dwc`: the site posteriors come from other parties through the exchange
            directory, so one whose means moved more than 5 prior stds on more than 0.1% of its weights is refused
            (``None``: not checked).

    Example::

        >>> ConsolidationHandler(net, "export", "/shared/site_a.safetensors", site="A", num_examples=90).attach(trainer)
    """

    def __init__(
        self,
        network: nn.Module,
        mode: ConsolidationMode | str = ConsolidationMode.EXPORT,
        posterior_file: str | os.PathLike | None = None,
        site: str | None = None,
        num_examples: int | None = None,
        prior: str | os.PathLike | None = None,
        site_posteriors: Sequence[str | os.PathLike] = (),
        fallback: Fallback | str = Fallback.RAISE,
        event: Any = None,
        max_mean_shift: float | None = 5.0,
    ) -> None:
        mode = look_up_choice(mode, ConsolidationMode, "ConsolidationHandler: mode")
        if mode == ConsolidationMode.EXPORT and posterior_file is None:
            raise ValueError("ConsolidationHandler: export mode needs posterior_file.")
        if mode == ConsolidationMode.CONSOLIDATE and (prior is None or not site_posteriors):
            raise ValueError("ConsolidationHandler: consolidate mode needs prior and site_posteriors.")
        self.network = network
        self.mode = mode
        self.posterior_file = None if posterior_file is None else str(posterior_file)
        self.site = site
        self.num_examples = num_examples
        self.prior = None if prior is None else str(prior)
        self.site_posteriors = [str(p) for p in site_posteriors]
        self.fallback = look_up_choice(fallback, Fallback, "ConsolidationHandler: fallback")
        self.max_mean_shift = max_mean_shift
        default_event = "COMPLETED" if mode == ConsolidationMode.EXPORT else "STARTED"
        self.event = resolve_event(event or default_event, "ConsolidationHandler")
        self.result: Posterior | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def site_files(self) -> list[str]:
        """The site posterior files, glob patterns expanded (sorted), duplicates removed."""
        files: list[str] = []
        for pattern in self.site_posteriors:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            files.extend(m for m in matches if m not in files)
        if not files:
            raise ValueError(f"ConsolidationHandler: no site posterior files match {self.site_posteriors}.")
        return files

    def __call__(self, engine: Engine | None = None) -> Posterior:
        if self.mode == ConsolidationMode.EXPORT:
            meta = {k: v for k, v in (("site", self.site), ("num_examples", self.num_examples)) if v is not None}
            self.result = Posterior.from_model(self.network, **meta)
            self.result.save(self.posterior_file)
        else:
            self.result = consolidate_dwc(self.prior, self.site_files(), fallback=self.fallback,
                                          max_mean_shift=self.max_mean_shift)
            self.result.to_prior(self.network, init_posterior=True)
            if self.posterior_file is not None:
                self.result.save(self.posterior_file)
        if engine is not None:
            engine.logger.info(f"ConsolidationHandler ({self.mode}): {self.result!r}")
        return self.result
