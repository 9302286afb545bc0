"""The weighted quadratic penalty around anchor weights, ``strength/2 * sum_i c_i (w_i - a_i)^2``, written once for
FedProx (``c = 1``) and elastic weight consolidation (``c``: a diagonal Fisher)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["check_strength", "parameter_state", "anchored_quadratic", "PenalizedLoss"]


def check_strength(name: str, value: float) -> float:
    """``value`` as a float when it is a finite number >= 0; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def parameter_state(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of ``model``'s trainable parameters (or of ``state``'s entries of the same names), each on its
    parameter's device and dtype: the anchor ``a`` (or the weights ``c``) of :func:`anchored_quadratic`.

    Args:
        model: the network being trained.
        state: tensors by the names of ``model.named_parameters()`` (e.g. a published ``state_dict``, or a Fisher);
            ``None``: the model's current parameters.

    Raises:
        KeyError: ``state`` lacks a trainable parameter of ``model`` (named).

    Example::

        >>> anchor = parameter_state(network)  # before the first step
    """
    copies = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if state is not None and name not in state:
            raise KeyError(f"the given tensors lack parameter {name!r}.")
        source = param if state is None else state[name]
        copies[name] = source.detach().to(device=param.device, dtype=param.dtype).clone()
    return copies


def anchored_quadratic(model: nn.Module, anchor: Mapping[str, torch.Tensor], strength: float,
                       weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``strength / 2 * sum_i c_i (w_i - a_i)^2`` over ``model``'s trainable parameters ``w``, their ``anchor``
    entries ``a`` and ``weights`` entries ``c`` (``None``: every ``c_i = 1``); its gradient is
    ``strength * c * (w - a)``.

    Example::

        >>> anchored_quadratic(network, anchor, 0.01)  # FedProx's term, mu = 0.01
    """
    terms = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            square = (param - anchor[name]) ** 2
            terms.append((square if weights is None else weights[name] * square).sum())
    if not terms:
        raise ValueError("the model has no trainable parameters.")
    return 0.5 * strength * torch.stack(terms).sum()


class PenalizedLoss(_Loss):
    """``loss = data_loss(input, target) + penalty()``, the penalty computed on ``model`` itself.

    ``model`` is the unwrapped network, not a ``DistributedDataParallel`` wrapper: the penalty's gradient is the
    same in every process, so averaging gradients over processes keeps it. A subclass defines :meth:`penalty`.

    Args:
        data_loss: the data loss.
        model: the network being trained (held by reference, not registered as a submodule).
    """

    def __init__(self, data_loss: Callable[..., torch.Tensor], model: nn.Module) -> None:
        super().__init__()
        self.data_loss = data_loss
        object.__setattr__(self, "_model", model)  # not a submodule: its parameters are not the loss's

    def penalty(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.data_loss(*args, **kwargs) + self.penalty()
