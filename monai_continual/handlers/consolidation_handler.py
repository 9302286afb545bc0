"""DWC in training loops: consolidate the sites' posteriors into a network (Eq. 17)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.consolidation.dwc import Fallback, consolidate_dwc
from monai_continual.consolidation.posterior import Posterior
from monai_continual.handlers._events import resolve_event
from monai_continual.utils.choices import look_up_choice

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["ConsolidationHandler"]


class ConsolidationHandler:
    """The consolidating party of distributed weight consolidation (McClure et al.) as an ignite handler.

    At ``event`` (default: started) consolidate the ``site_posteriors`` (paths or glob patterns, as written by
    :class:`~monai_continual.handlers.PosteriorExportHandler`) with the shared ``prior`` (Eq. 17), load the result
    into the network as posterior and prior (the next round starts from it), and save it to ``posterior_file`` if
    given.

    Args:
        network: the Bayesian network.
        prior: the shared prior file.
        site_posteriors: site posterior files or glob patterns.
        posterior_file: where the consolidated posterior is written.
        fallback: see :func:`consolidate_dwc`.
        event: an ignite event or its name.
        max_mean_shift: see :func:`consolidate_dwc`: the site posteriors come from other parties through the exchange
            directory, so one whose means moved more than 5 prior stds on more than 0.1% of its weights is refused
            (``None``: not checked).

    Example::

        >>> ConsolidationHandler(net, "/shared/q0.safetensors", ["/shared/sites/*.safetensors"]).attach(trainer)
    """

    def __init__(
        self,
        network: nn.Module,
        prior: str | os.PathLike,
        site_posteriors: Sequence[str | os.PathLike],
        posterior_file: str | os.PathLike | None = None,
        fallback: Fallback | str = Fallback.RAISE,
        event: Any = "STARTED",
        max_mean_shift: float | None = 5.0,
    ) -> None:
        if not site_posteriors:
            raise ValueError("ConsolidationHandler: site_posteriors is empty.")
        self.network = network
        self.posterior_file = None if posterior_file is None else str(posterior_file)
        self.prior = str(prior)
        self.site_posteriors = [str(p) for p in site_posteriors]
        self.fallback = look_up_choice(fallback, Fallback, "ConsolidationHandler: fallback")
        self.max_mean_shift = max_mean_shift
        self.event = resolve_event(event, "ConsolidationHandler")
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
        self.result = consolidate_dwc(self.prior, self.site_files(), fallback=self.fallback,
                                      max_mean_shift=self.max_mean_shift)
        self.result.to_prior(self.network, init_posterior=True)
        if self.posterior_file is not None:
            self.result.save(self.posterior_file)
        if engine is not None:
            engine.logger.info(f"ConsolidationHandler: {self.result!r}")
        return self.result
