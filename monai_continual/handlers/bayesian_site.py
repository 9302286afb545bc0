"""A Bayesian site of variational continual learning or DWC in any MONAI training: prior in, posterior out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import
from torch import nn

from monai_continual.bayes.laplace import calibrate_posterior_std
from monai_continual.consolidation.posterior import Posterior
from monai_continual.handlers.site_batches import site_batches
from monai_continual.losses import ELBOLoss, voxels_per_item
from monai_continual.utils.names import check_site_name
from monai_continual.utils.stage_files import parse_stage_file_name, stage_file_name

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["BayesianSiteHandler", "PosteriorEntry"]

_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class PosteriorEntry:
    """A posterior in the exchange directory: its stage number, the site that trained it and its file."""

    stage: int
    site: str
    file: Path

    @property
    def sha256(self) -> str:
        """The content hash of the posterior (what :class:`~monai_continual.consolidation.Posterior` reports)."""
        return Posterior.load(self.file).sha256()


class BayesianSiteHandler:
    """Prior in, posterior out, for a Bayesian network trained by any MONAI trainer at one site.

    At training start the newest posterior of ``<exchange_dir>/posteriors/`` (or the file given as ``prior``, e.g. a
    consolidated DWC posterior) becomes the prior and the start of the posterior; every posterior std is then set
    from this site's data (:func:`~monai_continual.bayes.laplace.calibrate_posterior_std`) and the ELBO's N is set to
    the site's training voxels. A site that starts the chain keeps the network's own prior and initial std. At
    training end the posterior is published as ``stage####_<site>.safetensors`` (one more than the prior's stage):
    only means and stds leave the site.

    Args:
        network: the Bayesian network (:func:`~monai_continual.bayes.bayesianize` of the bundle's network).
        exchange_dir: the directory the sites share.
        site: this site's name (``^[A-Za-z0-9_-]+$``, it becomes part of a file name).
        dataset: the site's training dataset (the bundle's ``train#dataset``): for the std and for N.
        loss: the trainer's :class:`~monai_continual.losses.ELBOLoss`, whose N is set; ``None``: the trainer's own
            loss function is wrapped in one when training starts (any MONAI loss with mean reduction).
        prior: a posterior file to use as the prior instead of the newest one in the exchange directory.
        calibrate: set the stds from the data when a prior was loaded.

    Example::

        >>> handler = BayesianSiteHandler(bnet, "/exchange", "hospital_b", train_ds, loss)
        >>> handler.attach(trainer)
    """

    def __init__(self, network: nn.Module, exchange_dir: str | os.PathLike, site: str, dataset: Any,
                 loss: ELBOLoss | None = None, prior: str | os.PathLike | None = None, calibrate: bool = True) -> None:
        self.network = network
        self.directory = Path(exchange_dir) / "posteriors"
        self.site = check_site_name(site, "BayesianSiteHandler: site")
        self.dataset = dataset
        self.loss = loss
        self.prior = None if prior in (None, "") else Path(prior)
        self.calibrate = bool(calibrate)
        self.loaded: PosteriorEntry | None = None
        self.published: PosteriorEntry | None = None
        self.std_stats: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._wrap_loss)  # a trainer sets its loss after its handlers
        engine.add_event_handler(Events.STARTED, self.load_prior)
        engine.add_event_handler(Events.COMPLETED, self.publish_posterior)

    def _wrap_loss(self, engine: Engine) -> None:
        if self.loss is None:  # the trainer's own loss becomes the ELBO's data term
            if not isinstance(engine.loss_function, ELBOLoss):
                engine.loss_function = ELBOLoss(engine.loss_function, self.network, num_examples=1)
            self.loss = engine.loss_function

    def entries(self) -> list[PosteriorEntry]:
        """The posteriors in the exchange directory, by stage number."""
        found = []
        for path in self.directory.glob("stage*_*.safetensors"):
            parsed = parse_stage_file_name(path.name, _SUFFIX)
            if parsed is not None and parsed[1] is not None:
                found.append(PosteriorEntry(parsed[0], parsed[1], path))
        return sorted(found, key=lambda e: e.stage)


    def load_prior(self, engine: Engine | None = None) -> PosteriorEntry | None:
        items, voxels = len(self.dataset), voxels_per_item(self.dataset[0])
        if self.loss is not None:
            self.loss.num_examples = float(items * voxels)
        if self.prior is not None:
            parsed = parse_stage_file_name(self.prior.name, _SUFFIX)
            number, site = parsed if parsed is not None else (0, None)
            entry = PosteriorEntry(number, site or "prior", self.prior)
        else:
            entries = self.entries()
            entry = entries[-1] if entries else None
        if entry is None:
            return None
        Posterior.load(entry.file).to_prior(self.network, init_posterior=True)
        if self.calibrate:
            self.std_stats = calibrate_posterior_std(self.network, lambda: site_batches(self.dataset, self.network))
        self.loaded = entry
        if engine is not None:
            engine.logger.info(f"site {self.site!r}: prior from {entry.file.name}; N = {items} x {voxels} voxels")
        return entry

    @torch.no_grad()
    def publish_posterior(self, engine: Engine | None = None) -> PosteriorEntry:
        entries = self.entries()
        stage = (self.loaded.stage if self.loaded is not None else (entries[-1].stage if entries else 0)) + 1
        taken = {e.stage for e in entries if e.site != self.site}
        while stage in taken:  # sites trained in parallel from one prior (DWC) take the next free numbers
            stage += 1
        site = check_site_name(self.site, "BayesianSiteHandler: site")  # here too: the name becomes a file name
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / stage_file_name(stage, _SUFFIX, site=site)
        Posterior.from_model(self.network, site=self.site, num_examples=len(self.dataset)).save(path)
        self.published = PosteriorEntry(stage, self.site, path)
        if engine is not None:
            engine.logger.info(f"site {self.site!r}: posterior published as {path.name}")
        return self.published
