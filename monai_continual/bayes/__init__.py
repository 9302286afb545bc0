"""Fully factorized Gaussian Bayesian layers, their KL divergence, network conversion and Monte Carlo inference.

Plain PyTorch (plus MONAI's ``Inferer`` base class for :class:`MCInferer`): nothing here imports ignite, engines,
nnU-Net or federated code.
"""

from __future__ import annotations

from monai_continual.bayes.base import SAMPLE_MODES, BayesianModule
from monai_continual.bayes.bayes_conv import (
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesConvTranspose1d,
    BayesConvTranspose2d,
    BayesConvTranspose3d,
)
from monai_continual.bayes.bayes_linear import BayesLinear
from monai_continual.bayes.config import BayesConfig, PriorMean, PriorStd, SampleMode, StdInit
from monai_continual.bayes.convert import LAYER_GROUPS, bayesian_layers, bayesianize, posterior_to_prior
from monai_continual.bayes.gaussian import gaussian_kl
from monai_continual.bayes.kl import kl_divergence
from monai_continual.bayes.mc_inferer import UNCERTAINTY_KEYS, Activation, MCInferer, predictive_entropy
from monai_continual.bayes.sampling import sampling

__all__ = [
    "SAMPLE_MODES",
    "UNCERTAINTY_KEYS",
    "LAYER_GROUPS",
    "Activation",
    "BayesianModule",
    "BayesConfig",
    "PriorMean",
    "PriorStd",
    "SampleMode",
    "StdInit",
    "BayesConv1d",
    "BayesConv2d",
    "BayesConv3d",
    "BayesConvTranspose1d",
    "BayesConvTranspose2d",
    "BayesConvTranspose3d",
    "BayesLinear",
    "MCInferer",
    "bayesian_layers",
    "bayesianize",
    "gaussian_kl",
    "kl_divergence",
    "predictive_entropy",
    "posterior_to_prior",
    "sampling",
]
