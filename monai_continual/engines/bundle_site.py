"""A hospital's own MONAI bundle as a site: which config files, which overrides, and the workflow built from them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigComponent, ConfigWorkflow

from monai_continual.bayes.config import BayesConfig
from monai_continual.utils.names import check_site_name

__all__ = ["BundleSite", "BUNDLE_KEYS"]

#: what a bundle must define for a site to run it (the model zoo's layout, as MONAI's ``MonaiAlgo`` reads it)
BUNDLE_KEYS = ("network_def", "network", "train#trainer", "train#dataset", "validate#evaluator")
_SAVERS = ("CheckpointLoader", "CheckpointSaver")


@dataclass(frozen=True)
class BundleSite:
    """A site that trains and evaluates with its own, unmodified bundle.

    The bundle follows the model zoo's layout (``network_def``, ``network``, ``train#trainer``, ``train#dataset``,
    ``validate#evaluator``, as MONAI's ``MonaiAlgo`` reads it); nothing of this package appears in it. A stage
    builds a fresh workflow from ``train_config`` (plus ``evaluate_config`` to score), runs the bundle's own
    ``initialize`` section (its determinism), and uses the bundle's trainer, loss, transforms, inferer and AMP.

    Args:
        bundle_root: the bundle's directory (the config files are relative to it).
        site: this site's name (``^[A-Za-z0-9_-]+$``).
        train_config: the training config file(s), relative to ``bundle_root`` or absolute.
        evaluate_config: config file(s) merged over ``train_config`` to score a model (a model zoo
            ``configs/evaluate.json``); ``None``: ``configs/evaluate.json`` when the bundle has one, else the training
            config's ``validate#evaluator``.
        overrides: config overrides of this site (its own data paths, e.g. ``{"dataset_dir": "/data/spleen"}``);
            ``bundle_root`` defaults to ``bundle_root``.
        bayes: how the bundle's network is made Bayesian for a VCL or DWC stage
            (:meth:`~monai_continual.bayes.BayesConfig.calibrated`: He-scaled prior, std from the data).
        mc_samples: Monte Carlo samples when a Bayesian model is scored.

    Example::

        >>> site = BundleSite("/opt/spleen_ct_segmentation", "hospital_b", overrides={"dataset_dir": "/data/spleen"})
        >>> workflow = site.workflow(epochs=3)
    """

    bundle_root: str
    site: str
    train_config: str | Sequence[str] = "configs/train.json"
    evaluate_config: str | Sequence[str] | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bayes: BayesConfig = field(default_factory=BayesConfig.calibrated)
    mc_samples: int = 3

    def __post_init__(self) -> None:
        check_site_name(self.site, "BundleSite: site")
        if not Path(self.bundle_root).is_dir():
            raise FileNotFoundError(f"BundleSite: site {self.site!r}: the bundle root {self.bundle_root!r} is not a "
                                    "directory.")
        if isinstance(self.mc_samples, bool) or int(self.mc_samples) < 1:
            raise ValueError(f"BundleSite: mc_samples must be >= 1, got {self.mc_samples!r}.")
        for file in (*self.train_files, *self.evaluate_files):
            if not file.is_file():
                raise FileNotFoundError(f"BundleSite: site {self.site!r}: no config file {str(file)!r}.")

    def _files(self, names: str | Sequence[str]) -> list[Path]:
        names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
        outside = [str(n) for n in names if Path(n).is_absolute() or ".." in Path(n).parts]
        if outside:  # a job names config files; which files they are is the bundle's
            raise ValueError(f"BundleSite: site {self.site!r}: config files must be inside the bundle, got {outside}.")
        return [Path(self.bundle_root, n) for n in names]

    @property
    def train_files(self) -> list[Path]:
        return self._files(self.train_config)

    @property
    def evaluate_files(self) -> list[Path]:
        if self.evaluate_config is not None:
            return self._files(self.evaluate_config)
        default = Path(self.bundle_root, "configs", "evaluate.json")
        return [default] if default.is_file() else []

    def workflow(self, epochs: int | None = None, evaluate: bool = False, bayesian: bool = False,
                 bound_std: bool = False) -> ConfigWorkflow:
        """A fresh workflow of the bundle, parsed and initialized (its ``initialize`` section has run).

        Args:
            epochs: the trainer's ``max_epochs`` (a stage's length); ``None``: the bundle's.
            evaluate: merge the evaluation config and leave out every checkpoint saver (the hospital's own model
                files are left as they are). Checkpoint loaders are always left out: a stage starts from its start.
            bayesian: the bundle's ``network`` becomes :func:`~monai_continual.bayes.bayesianize` of its
                ``network_def`` with :attr:`bayes` (what the Bayesian overlay does).
            bound_std: posterior stds bounded by the prior's (DWC's site training).
        """
        files = self.train_files + (self.evaluate_files if evaluate else [])
        overrides: dict[str, Any] = {"bundle_root": str(self.bundle_root), **dict(self.overrides)}
        if epochs is not None:
            overrides["train#trainer#max_epochs"] = int(epochs)
        workflow = ConfigWorkflow(config_file=[str(f) for f in files], meta_file=None, logging_file=False,
                                  workflow_type="train", **overrides)
        parser = workflow.parser
        missing = [k for k in BUNDLE_KEYS if k not in parser]
        if missing:
            raise KeyError(f"site {self.site!r}: the bundle config {[str(f) for f in files]} has no {missing}; a site "
                           f"bundle needs {list(BUNDLE_KEYS)} (the model zoo's layout).")
        # a checkpoint loader would replace the stage's start with the hospital's own model file; while a model is
        # scored, savers would overwrite that file with it
        off = _SAVERS if evaluate else ("CheckpointLoader",)
        for section in ("train#handlers", "validate#handlers"):
            for handler in parser.get(section, []) if isinstance(parser.get(section), list) else []:
                if ConfigComponent.is_instantiable(handler) and any(s in handler["_target_"] for s in off):
                    handler["_disabled_"] = True
        if bayesian:
            parser["imports"] = [*parser.get("imports", []), "$from monai_continual.bayes import bayesianize"]
            parser["continual_bayes"] = self.bayes.to_dict() | {
                "_target_": "monai_continual.bayes.BayesConfig", "bound_std": bool(bound_std)}
            parser["network"] = "$bayesianize(@network_def, @continual_bayes).to(@device)"
        workflow.initialize()
        return workflow
