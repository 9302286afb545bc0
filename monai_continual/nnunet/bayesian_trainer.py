"""nnU-Net trainers whose planned network is Bayesian: ``nnUNetTrainerBayesian`` and ``nnUNetTrainerVCL``.

The network nnU-Net plans is built as usual and its convolutions are replaced by their Bayesian twins
(:func:`monai_continual.bayes.bayesianize`); the loss is nnU-Net's own (Dice + CE with deep supervision) plus the KL
divergence divided by N, the number of training voxels (cases x patch voxels; :class:`monai_continual.losses.ELBOLoss`).
Priors are buffers of the network, so nnU-Net's checkpoints hold them. When training ends the posterior is also written
as ``posterior.safetensors`` next to the checkpoints: the file that may cross a site boundary.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import ClassVar

import torch
from monai.utils import look_up_option
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from monai_continual.bayes import BayesConfig, StdInit, bayesianize
from monai_continual.bayes.laplace import calibrate_posterior_std
from monai_continual.consolidation.posterior import Posterior
from monai_continual.losses import ElboExamples, ELBOLoss
from monai_continual.nnunet.training_batches import training_batches

__all__ = [
    "nnUNetTrainerBayesian",
    "nnUNetTrainerVCL",
    "nnUNetTrainerVCLUnbounded",
    "POSTERIOR_FILE",
    "PRIOR_ENV",
]

#: the posterior a Bayesian training leaves in its fold folder
POSTERIOR_FILE = "posterior.safetensors"
#: environment variable naming the prior posterior file of nnUNetTrainerVCL (for nnU-Net's own CLI)
PRIOR_ENV = "MONAI_CONTINUAL_PRIOR"


class nnUNetTrainerBayesian(nnUNetTrainer):
    """nnUNetTrainer with a Bayesian network (FFG posterior, local reparameterization) and the ELBO loss.

    Settings (class attributes, so that variants are one-line subclasses): ``bayes``, the
    :class:`~monai_continual.bayes.BayesConfig` of the network, the same as the MONAI runner's
    (:meth:`~monai_continual.bayes.BayesConfig.calibrated`: ``std_init="laplace"``, at the start of training every
    posterior std is set from the site's data, see :func:`~monai_continual.bayes.laplace.calibrate_posterior_std`;
    ``prior_std="he"``, per layer sqrt(2 / fan_in)); ``elbo_examples`` (``"voxels"``: N = training cases x patch
    voxels; or ``"volumes"``), ``kl_weight`` (1.0), ``mc_samples`` (10, used by our ``predict``).

    Example::

        python -m monai_continual.nnunet train 501 3d_fullres all -tr nnUNetTrainerBayesian -device cpu
        nnUNetv2_train 501 3d_fullres all -tr nnUNetTrainerBayesian   # with nnUNet_extTrainer set

        class nnUNetTrainerBayesianPaper(nnUNetTrainerBayesian):  # McClure et al.'s fixed std and N(0, 1) prior
            bayes = BayesConfig(weight_norm=True)
    """

    bayes: ClassVar[BayesConfig] = BayesConfig.calibrated()
    kl_weight: float = 1.0
    mc_samples: int = 10
    elbo_examples: ElboExamples = ElboExamples.VOXELS

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        legacy = sorted(name for name in ("std_init", "prior_std", "prior_mean", "weight_norm", "bound_std",
                                          "sample_mode") if name in vars(cls))
        if legacy:  # these settings live in one BayesConfig: a class attribute of that name would do nothing
            raise TypeError(f"{cls.__name__}: set {legacy} through the BayesConfig class attribute, e.g. "
                            f"bayes = nnUNetTrainerBayesian.bayes.replace({legacy[0]}=...).")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_training_cases: int | None = None
        #: N of the KL term when set (1 weights the data as one example: McClure et al.'s DWC fine-tuning)
        self.kl_num_examples: float | None = None
        #: per epoch: (mean data term, mean KL / N)
        self.elbo_history: list[tuple[float, float]] = []
        self.std_stats: dict | None = None

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
        )
        return bayesianize(network, cls.bayes, inplace=True)

    def _build_loss(self) -> nn.Module:
        train_keys, _ = self.do_split()
        self.num_training_cases = len(train_keys)
        n = self.kl_num_examples if self.kl_num_examples is not None else self.num_training_cases
        return ELBOLoss(super()._build_loss(), self.network, num_examples=n * self.voxels_per_example(),
                        kl_weight=self.kl_weight)

    def voxels_per_example(self) -> int:
        """Voxels of one training patch when the ELBO counts voxels (the default), else 1."""
        if look_up_option(self.elbo_examples, ElboExamples) == ElboExamples.VOLUMES:
            return 1
        return int(math.prod(self.configuration_manager.patch_size))

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.bayes.std_init != StdInit.LAPLACE or self.current_epoch > 0:
            return
        # as many random patches as the site has cases, from nnU-Net's own training loader
        batches, seen = training_batches(self, self.num_training_cases)
        network = getattr(self.network, "_orig_mod", self.network)
        self.std_stats = calibrate_posterior_std(network, batches, seed=self.current_epoch,
                                                 scale=self.num_training_cases / seen)
        self.print_to_log_file("Posterior std from the data (diagonal Laplace): median "
                               f"{self.std_stats['after']['median']:.3g}, "
                               f"5-95% {self.std_stats['after']['p05']:.3g}-{self.std_stats['after']['p95']:.3g}")

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        result["kl"] = self.loss.last_kl.cpu().numpy()
        result["data_term"] = self.loss.last_data_loss.cpu().numpy()
        return result

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        kl = float(sum(float(o["kl"]) for o in train_outputs) / max(1, len(train_outputs)))
        data = float(sum(float(o["data_term"]) for o in train_outputs) / max(1, len(train_outputs)))
        self.elbo_history.append((data, kl / self.loss.num_examples))
        self.print_to_log_file(f"ELBO terms: data {data:.4g}, KL / N {kl / self.loss.num_examples:.4g} (KL {kl:.4g}, "
                               f"N = {self.loss.num_examples:g})")

    def posterior(self) -> Posterior:
        """The network's current posterior, labelled with this dataset and its number of training cases."""
        network = getattr(self.network, "_orig_mod", self.network)
        return Posterior.from_model(network, site=self.plans_manager.dataset_name, num_examples=self.num_training_cases,
                                    trainer=type(self).__name__)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.local_rank == 0 and not self.disable_checkpointing:
            self.posterior().save(Path(self.output_folder) / POSTERIOR_FILE)


class nnUNetTrainerVCL(nnUNetTrainerBayesian):
    """Variational continual learning in nnU-Net: the prior is the previous site's posterior file.

    The prior comes from ``trainer.prior_file`` (set by ``python -m monai_continual.nnunet train --prior FILE``) or
    the environment variable ``MONAI_CONTINUAL_PRIOR`` (for ``nnUNetv2_train``); without either, the first site
    trains from N(0, ``prior_std``). The posterior starts at the prior and its std is bounded by the prior's
    (``bound_std``), as distributed weight consolidation requires.

    Example::

        MONAI_CONTINUAL_PRIOR=site_a/posterior.safetensors nnUNetv2_train 502 3d_fullres all -tr nnUNetTrainerVCL
    """

    bayes = nnUNetTrainerBayesian.bayes.replace(bound_std=True)
    init_posterior_from_prior: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.prior_file: str | None = os.environ.get(PRIOR_ENV) or None

    def initialize(self) -> None:
        super().initialize()
        if not self.prior_file:
            self.print_to_log_file(f"VCL: no prior file; training from N(0, {self.bayes.prior_std}).")
            return
        prior = Posterior.load(self.prior_file)  # checks format, shapes and hash; names the file on error
        prior.to_prior(getattr(self.network, "_orig_mod", self.network), init_posterior=self.init_posterior_from_prior)
        self.print_to_log_file(
            f"VCL: prior loaded from {self.prior_file} (site {prior.site}, N = {prior.num_examples})."
        )


class nnUNetTrainerVCLUnbounded(nnUNetTrainerVCL):
    """Variational continual learning without the std bound: the posterior may widen beyond its prior.

    McClure et al.'s VCL (Eq. 8) places no constraint on the posterior; the bound sigma_s <= sigma_0 belongs to DWC's
    site training (Eq. 17 needs it). The strategy engine uses this trainer for VCL stages and
    :class:`nnUNetTrainerVCL` for DWC's site stages, as the MONAI runner does.

    Example::

        python -m monai_continual.nnunet train 502 3d_fullres all -tr nnUNetTrainerVCLUnbounded \\
            --prior site_a.safetensors
    """

    bayes = nnUNetTrainerVCL.bayes.replace(bound_std=False)
