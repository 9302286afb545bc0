"""FedProx's proximal term (Li et al. 2020): the local objective is ``h(w) = F(w) + mu/2 ||w - w^t||^2``, with
``w^t`` the weights the site received at the start of the round."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["proximal_anchor", "proximal_term", "ProximalLoss"]


def _check_mu(mu: float) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {mu!r}.")
    return float(mu)


def proximal_anchor(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of ``model``'s trainable parameters (or of ``state``'s entries of the same names), each on its
    parameter's device and dtype: the ``w^t`` of :func:`proximal_term`.

    Args:
        model: the network being trained.
        state: the start weights by the names of ``model.named_parameters()`` (e.g. a published ``state_dict``);
            ``None``: the model's current parameters.

    Raises:
        KeyError: ``state`` lacks a trainable parameter of ``model`` (named).

    Example::

        >>> anchor = proximal_anchor(network)  # before the first local step
    """
    anchor = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if state is not None and name not in state:
            raise KeyError(f"the start weights lack parameter {name!r}.")
        source = param if state is None else state[name]
        anchor[name] = source.detach().to(device=param.device, dtype=param.dtype).clone()
    return anchor


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
    mu = _check_mu(mu)
    squares = [((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad]
    if not squares:
        raise ValueError("the model has no trainable parameters.")
    return 0.5 * mu * torch.stack(squares).sum()


class ProximalLoss(_Loss):
    """``loss = data_loss(input, target) + mu/2 * ||w - w0||^2`` (FedProx's local objective).

    The term is computed on ``model`` itself (the unwrapped network, not a ``DistributedDataParallel`` wrapper):
    its gradient is the same in every process, so averaging gradients over processes keeps it.

    Args:
        data_loss: the data loss.
        model: the network being trained (held by reference, not registered as a submodule).
        anchor: :func:`proximal_anchor` of the round's start weights, by the names of ``model.named_parameters()``.
        mu: FedProx's mu (> 0).

    Example::

        >>> loss = ProximalLoss(DiceCELoss(softmax=True), network, proximal_anchor(network), mu=0.01)
        >>> loss(network(image), label).backward()
    """

    def __init__(self, data_loss: Callable[..., torch.Tensor], model: nn.Module,
                 anchor: Mapping[str, torch.Tensor], mu: float) -> None:
        super().__init__()
        if _check_mu(mu) == 0:
            raise ValueError("ProximalLoss: mu must be > 0 (with mu = 0, use the data loss itself).")
        self.data_loss = data_loss
        self.mu = float(mu)
        self.anchor = dict(anchor)
        object.__setattr__(self, "_model", model)  # not a submodule: its parameters are not the loss's

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.data_loss(*args, **kwargs) + proximal_term(self._model, self.anchor, self.mu)
