"""Loads a posterior file as the network's prior when training starts (a VCL step, or a DWC site's shared prior)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.bayes.laplace import calibrate_posterior_std
from monai_continual.consolidation.posterior import Posterior
from monai_continual.handlers._events import resolve_event
from monai_continual.handlers.site_batches import site_batches

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["PriorHandler"]


class PriorHandler:
    """At ``event`` (training start) load ``posterior_file`` as the prior of every Bayesian layer of ``network``.

    Args:
        posterior_file: a posterior safetensors file (another site's, or a consolidated one).
        network: a Bayesian network with the same layers.
        init_posterior: also start the posterior from it (how a DWC site starts from the shared prior).
        event: the ignite event.
        calibrate_with: the site's training dataset: after loading, set every posterior std from its data
            (:func:`~monai_continual.bayes.laplace.calibrate_posterior_std`, the package's default for a Bayesian
            stage; the prior's stds, far wider than the data support, are a poor start). ``None``: keep them.

    Example::

        >>> PriorHandler("/shared/q0.safetensors", net, init_posterior=True, calibrate_with=train_ds).attach(trainer)
    """

    def __init__(
        self,
        posterior_file: str | os.PathLike,
        network: nn.Module,
        init_posterior: bool = False,
        event: Any = "STARTED",
        calibrate_with: Any = None,
    ) -> None:
        self.posterior_file = str(posterior_file)
        self.network = network
        self.init_posterior = init_posterior
        self.event = resolve_event(event, "PriorHandler")
        self.calibrate_with = calibrate_with
        self.loaded_sha256: str | None = None
        self.std_stats: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> None:
        posterior = Posterior.load(self.posterior_file)
        posterior.to_prior(self.network, init_posterior=self.init_posterior)
        self.loaded_sha256 = posterior.sha256()
        if self.calibrate_with is not None:
            self.std_stats = calibrate_posterior_std(self.network, lambda: site_batches(self.calibrate_with,
                                                                                       self.network))
        if engine is not None:
            engine.logger.info(f"prior loaded from {self.posterior_file}")
