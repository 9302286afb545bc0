"""Switching a model's Bayesian layers to stochastic forward passes in eval mode (Monte Carlo inference)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from monai_continual.bayes.base import SAMPLE_MODES
from monai_continual.bayes.convert import bayesian_layers

__all__ = ["sampling"]


@contextmanager
def sampling(model: nn.Module, mode: str | None = None) -> Iterator[nn.Module]:
    """Make every Bayesian layer of ``model`` sample even in ``eval()`` mode, for as long as the block lasts.

    Dropout and batch-norm keep their eval behaviour: only the Bayesian weights are sampled.

    Args:
        model: a network with Bayesian layers.
        mode: ``"local"`` (local reparameterization: two ops per layer, independent noise per output element) or
            ``"weights"`` (one weight draw per forward: one op per layer, the whole batch shares the draw);
            ``None`` keeps each layer's own ``sample_mode``.

    Example::

        >>> net.eval()
        >>> with sampling(net, mode="weights"):
        ...     draws = [net(x) for _ in range(10)]
    """
    if mode is not None and mode not in SAMPLE_MODES:
        raise ValueError(f"sampling: mode must be one of {SAMPLE_MODES} or None, got {mode!r}.")
    layers = [layer for _, layer in bayesian_layers(model)]
    saved = [(layer.sampling, layer.sample_mode) for layer in layers]
    try:
        for layer in layers:
            layer.sampling = True
            if mode is not None:
                layer.sample_mode = mode
        yield model
    finally:
        for layer, (was_sampling, was_mode) in zip(layers, saved):
            layer.sampling = was_sampling
            layer.sample_mode = was_mode
