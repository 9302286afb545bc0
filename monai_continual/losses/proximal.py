"""FedProx's proximal term (Li et al. 2020): the local objective is ``h(w) = F(w) + mu/2 ||w - w^t||^2``, with
``w^t`` the weights the site received at the start of the round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from monai_continual.losses.quadratic import PenalizedLoss, anchored_quadratic, check_strength, parameter_state

__all__ = ["proximal_anchor", "proximal_term", "ProximalLoss"]


def proximal_anchor(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The ``w^t`` of :func:`proximal_term`: :func:`~monai_continual.losses.quadratic.parameter_state` of the start
    weights (``state``, by the names of ``model.named_parameters()``; ``None``: the model's current parameters).

    Example::

        >>> anchor = proximal_anchor(network)  # before the first local step
    """
    return parameter_state(model, state)


def proximal_term(model: nn.Module, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """``mu / 2 * sum ||w - w0||^2`` over ``model``'s trainable parameters ``w`` and their ``anchor`` entries
    ``w0``; its gradient is ``mu * (w - w0)``.

    Args:
        model: the network being trained.
        anchor: :func:`proximal_anchor` of the stage's start weights.
        mu: FedProx's mu (>= 0; 0 gives a zero term).

    Example::

        >>> loss = data_loss + proximal_term(network, anchor, mu=0.01)
    """
    return anchored_quadratic(model, anchor, check_strength("proximal_mu", mu))


class ProximalLoss(PenalizedLoss):
    """``loss = data_loss(input, target) + mu/2 * ||w - w0||^2`` (FedProx's local objective).

    Args:
        data_loss: the data loss.
        model: the network being trained (the unwrapped network, see
            :class:`~monai_continual.losses.quadratic.PenalizedLoss`).
        anchor: :func:`proximal_anchor` of the round's start weights, by the names of ``model.named_parameters()``.
        mu: FedProx's mu (> 0).

    Example::

        >>> loss = ProximalLoss(DiceCELoss(softmax=True), network, proximal_anchor(network), mu=0.01)
        >>> loss(network(image), label).backward()
    """

    def __init__(self, data_loss: Callable[..., torch.Tensor], model: nn.Module,
                 anchor: Mapping[str, torch.Tensor], mu: float) -> None:
        if check_strength("proximal_mu", mu) == 0:
            raise ValueError("ProximalLoss: mu must be > 0 (with mu = 0, use the data loss itself).")
        super().__init__(data_loss, model)
        self.mu = float(mu)
        self.anchor = dict(anchor)

    def penalty(self) -> torch.Tensor:
        return proximal_term(self._model, self.anchor, self.mu)
