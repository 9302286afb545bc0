"""A site's side of distributed weight consolidation: save its posterior when its training finishes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.consolidation.posterior import Posterior
from monai_continual.handlers._events import resolve_event

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["PosteriorExportHandler"]


class PosteriorExportHandler:
    """At ``event`` (default: training completed) save ``Posterior.from_model(network)`` with the site's name and its
    number of training examples to ``posterior_file`` (McClure et al.'s site posterior, for
    :class:`~monai_continual.handlers.ConsolidationHandler` or ``monai-continual consolidate``).

    Args:
        network: the Bayesian network.
        posterior_file: where the posterior is written (atomically).
        site: the site's name.
        num_examples: the site's number of training examples (weights the deterministic averages).
        event: an ignite event or its name.

    Example::

        >>> PosteriorExportHandler(net, "/shared/site_a.safetensors", site="A", num_examples=90).attach(trainer)
    """

    def __init__(self, network: nn.Module, posterior_file: str | os.PathLike, site: str | None = None,
                 num_examples: int | None = None, event: Any = "COMPLETED") -> None:
        self.network = network
        self.posterior_file = str(posterior_file)
        self.site = site
        self.num_examples = num_examples
        self.event = resolve_event(event, "PosteriorExportHandler")
        self.result: Posterior | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> Posterior:
        meta = {k: v for k, v in (("site", self.site), ("num_examples", self.num_examples)) if v is not None}
        self.result = Posterior.from_model(self.network, **meta)
        self.result.save(self.posterior_file)
        if engine is not None:
            engine.logger.info(f"posterior of site {self.site!r} saved to {self.posterior_file}")
        return self.result
