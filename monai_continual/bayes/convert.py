"""Turning an existing network into its Bayesian twin, and the model-wide VCL step."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from monai_continual.bayes.base import BayesianModule
from monai_continual.bayes.bayes_conv import (
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesConvTranspose1d,
    BayesConvTranspose2d,
    BayesConvTranspose3d,
)
from monai_continual.bayes.bayes_linear import BayesLinear
from monai_continual.bayes.config import BayesConfig, PriorMean, PriorStd

__all__ = ["bayesianize", "bayesian_layers", "posterior_to_prior", "he_std", "layer_settings", "LAYER_GROUPS"]

#: Layer groups ``bayesianize`` can convert, by name.
LAYER_GROUPS: dict[str, dict[type[nn.Module], type[BayesianModule]]] = {
    "conv": {nn.Conv1d: BayesConv1d, nn.Conv2d: BayesConv2d, nn.Conv3d: BayesConv3d},
    "conv_transpose": {
        nn.ConvTranspose1d: BayesConvTranspose1d,
        nn.ConvTranspose2d: BayesConvTranspose2d,
        nn.ConvTranspose3d: BayesConvTranspose3d,
    },
    "linear": {nn.Linear: BayesLinear},
}
_ALL_SUPPORTED = {k: v for group in LAYER_GROUPS.values() for k, v in group.items()}


def bayesian_layers(model: nn.Module) -> Iterator[tuple[str, BayesianModule]]:
    """Yield ``(qualified_name, layer)`` for every Bayesian layer of ``model``, in ``named_modules`` order."""
    for name, module in model.named_modules():
        if isinstance(module, BayesianModule):
            yield name, module


def _resolve_layers(layers: Sequence[str | type[nn.Module]]) -> dict[type[nn.Module], type[BayesianModule]]:
    mapping: dict[type[nn.Module], type[BayesianModule]] = {}
    for item in layers:
        if isinstance(item, str):
            if item not in LAYER_GROUPS:
                raise ValueError(f"bayesianize: unknown layer group {item!r}; known groups: {sorted(LAYER_GROUPS)}.")
            mapping.update(LAYER_GROUPS[item])
        elif isinstance(item, type) and item in _ALL_SUPPORTED:
            mapping[item] = _ALL_SUPPORTED[item]
        else:
            supported = ", ".join(sorted(t.__name__ for t in _ALL_SUPPORTED))
            raise TypeError(f"bayesianize: cannot convert layer type {item!r}; supported types: {supported}.")
    return mapping


def bayesianize(
    model: nn.Module,
    config: BayesConfig | None = None,
    *,
    layers: Sequence[str | type[nn.Module]] = ("conv", "conv_transpose"),
    exclude: Sequence[str] = (),
    inplace: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Replace the convolutions (and optionally linear layers) of ``model`` by their FFG Bayesian twins.

    The means of every new layer are the weights of the layer it replaces, so the converted model gives the original
    output in ``eval()`` mode. Works on any ``nn.Module`` built from torch layers: MONAI's UNet, BasicUNet, DynUNet,
    SegResNet, nnU-Net's PlainConvUNet and MeshNet.

    Args:
        model: the network to convert.
        config: the layer settings (:class:`~monai_continual.bayes.config.BayesConfig`; ``None``: its defaults).
            ``std_init="laplace"`` builds the layers with a placeholder std (:func:`conversion_std_init`), to be set
            from the data; ``prior_mean="weights"`` centres the prior on the existing weights; ``prior_std="he"``
            gives each layer ``sqrt(2 / fan_in)``, the scale of He initialization (a draw from this prior is a sound
            initialization of the layer; a weight the data do not constrain keeps that scale instead of N(0, 1)'s,
            which would swamp the layer's output).
        layers: what to convert: group names from :data:`LAYER_GROUPS` (``"conv"``, ``"conv_transpose"``,
            ``"linear"``) or torch layer classes.
        exclude: qualified module names (as in ``model.named_modules()``) to leave deterministic, and everything
            below them.
        inplace: convert ``model`` itself instead of a deep copy.
        overrides: settings of :class:`BayesConfig` (``std_init``, ``prior_mean``, ``prior_std``, ``weight_norm``,
            ``bound_std``, ``sample_mode``) that replace those of ``config``.

    Returns:
        The converted model.

    Raises:
        TypeError: a requested layer type cannot be converted, or an override is not a setting.
        ValueError: a bad setting (e.g. a non-positive ``std_init``/``prior_std``), an unknown group, an ``exclude``
            name that is not in the model; messages name the layer at fault (for a bad setting: the first layer it
            would have been applied to).

    Example::

        >>> from monai.networks.nets import UNet
        >>> net = UNet(3, 1, 2, channels=(8, 16), strides=(2,))
        >>> bnet = bayesianize(net, BayesConfig(prior_std="he", bound_std=True))
        >>> bnet = bayesianize(net, std_init=1e-3, prior_std=1.0)  # the same settings as keywords
        >>> kl_divergence(bnet)  # closed-form KL to N(0, 1)
    """
    if config is not None and not isinstance(config, BayesConfig):
        raise TypeError(f"bayesianize: config must be a BayesConfig or None, got {type(config).__name__}.")
    mapping = _resolve_layers(layers)
    if not inplace:
        model = copy.deepcopy(model)
    names = {name for name, _ in model.named_modules()}
    missing = [name for name in exclude if name not in names]
    if missing:
        raise ValueError(f"bayesianize: exclude names {missing} are not modules of {type(model).__name__}.")

    def excluded(name: str) -> bool:
        return any(name == ex or name.startswith(ex + ".") for ex in exclude)

    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name and type(module) in mapping and not excluded(name)
    ]
    if type(model) in mapping and "" not in exclude:
        targets.insert(0, ("", model))
    try:
        config = (config if config is not None else BayesConfig()).replace(**overrides)
    except ValueError as err:
        first = f"layer {targets[0][0] or '<root>'!r} ({type(targets[0][1]).__name__}): " if targets else ""
        raise ValueError(f"bayesianize: {first}{err}") from err
    converted: dict[int, nn.Module] = {}
    for name, module in targets:
        if id(module) in converted:  # a layer shared between two places stays shared
            continue
        try:
            layer = mapping[type(module)].from_module(module, **layer_settings(config, module))
        except (ValueError, TypeError) as err:
            raise type(err)(f"bayesianize: layer {name or '<root>'!r} ({type(module).__name__}): {err}") from err
        if config.prior_mean == PriorMean.WEIGHTS:
            layer.prior_mean.copy_(module.weight.detach())
            if layer.bias_shape is not None:
                layer.bias_prior_mean.copy_(module.bias.detach())
        converted[id(module)] = layer
    if ("", model) in targets:
        return converted[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in converted:
                setattr(parent, child_name, converted[id(child)])
    return model


def layer_settings(config: BayesConfig, module: nn.Module) -> dict[str, Any]:
    """The keyword arguments of ``from_module`` that build the Bayesian twin of ``module`` under ``config``: the
    choices resolved to numbers for this layer (``"weights"`` prior means are copied in after construction).

    Example::

        >>> layer_settings(BayesConfig(prior_std="he"), torch.nn.Conv3d(12, 4, 3))["prior_std"]  # he_std
    """
    settings = config.to_dict()
    settings["std_init"] = config.conversion_std_init
    if config.prior_std == PriorStd.HE:
        settings["prior_std"] = he_std(module)
    if config.prior_mean == PriorMean.WEIGHTS:
        settings["prior_mean"] = 0.0
    return settings


def he_std(module: nn.Module) -> float:
    """``sqrt(2 / fan_in)`` of a convolution or linear layer (He et al.'s initialization scale).

    Example::

        >>> he_std(torch.nn.Conv3d(12, 4, 3))  # sqrt(2 / (12 * 27))
    """
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)  # PyTorch's own convention
    return math.sqrt(2.0 / max(fan_in, 1))


@torch.no_grad()
def posterior_to_prior(model: nn.Module) -> nn.Module:
    """Copy every Bayesian layer's current posterior into its prior: one step of variational continual learning.

    Example::

        >>> train(bnet, site_1); posterior_to_prior(bnet); train(bnet, site_2)  # site 1's posterior is site 2's prior
    """
    for _, layer in bayesian_layers(model):
        layer.posterior_to_prior()
    return model
