"""Online elastic weight consolidation (Kirkpatrick et al. 2017; Schwarz et al. 2018): a site trains on
``loss + lambda/2 * sum_i F_i (w_i - w*_i)^2``, ``w*`` the weights it started from and ``F`` the running diagonal
Fisher of the sites before it, ``F <- gamma * F + F_site`` after every site."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from monai_continual.losses.quadratic import PenalizedLoss, anchored_quadratic, check_strength, parameter_state

__all__ = ["ewc_penalty", "running_fisher", "EWCLoss"]


def ewc_penalty(model: nn.Module, anchor: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor],
                ewc_lambda: float) -> torch.Tensor:
    """``lambda / 2 * sum_i F_i (w_i - w*_i)^2`` over ``model``'s trainable parameters; its gradient is
    ``lambda * F * (w - w*)``.

    Args:
        model: the network being trained.
        anchor: ``w*`` by parameter name (the start weights).
        fisher: ``F`` by parameter name (the running Fisher, >= 0).
        ewc_lambda: the penalty's weight (>= 0).

    Example::

        >>> loss = data_loss + ewc_penalty(network, start_weights, fisher, ewc_lambda=1.0)
    """
    return anchored_quadratic(model, anchor, check_strength("ewc_lambda", ewc_lambda), fisher)


def running_fisher(previous: Mapping[str, torch.Tensor] | None, own: Mapping[str, torch.Tensor],
                   gamma: float) -> dict[str, torch.Tensor]:
    """Online EWC's running Fisher ``gamma * F_previous + F_own`` (``F_own`` alone when there is no previous one).

    Raises:
        KeyError: the two Fishers name different parameters.

    Example::

        >>> running_fisher({"w": torch.tensor([2.0])}, {"w": torch.tensor([1.0])}, 0.5)
        {'w': tensor([2.])}
    """
    if not 0 < float(gamma) <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}.")
    if previous is None:
        return {k: v.detach().clone() for k, v in own.items()}
    if set(previous) != set(own):
        raise KeyError(f"the running Fisher names other parameters: {sorted(set(previous) ^ set(own))[:5]}.")
    return {k: float(gamma) * previous[k].to(v) + v.detach() for k, v in own.items()}


class EWCLoss(PenalizedLoss):
    """``loss = data_loss(input, target) + lambda/2 * sum_i F_i (w_i - w*_i)^2`` (:func:`ewc_penalty`).

    Args:
        data_loss: the data loss.
        model: the network being trained (the unwrapped network, see
            :class:`~monai_continual.losses.quadratic.PenalizedLoss`).
        anchor: ``w*`` by the names of ``model.named_parameters()`` (e.g. the start stage's ``state_dict``).
        fisher: the running Fisher by the same names.
        ewc_lambda: the penalty's weight (> 0).

    Example::

        >>> loss = EWCLoss(DiceCELoss(softmax=True), network, start_weights, fisher, ewc_lambda=1.0)
        >>> loss(network(image), label).backward()
    """

    def __init__(self, data_loss: Callable[..., torch.Tensor], model: nn.Module, anchor: Mapping[str, torch.Tensor],
                 fisher: Mapping[str, torch.Tensor], ewc_lambda: float) -> None:
        if check_strength("ewc_lambda", ewc_lambda) == 0:
            raise ValueError("EWCLoss: ewc_lambda must be > 0 (with 0, use the data loss itself).")
        super().__init__(data_loss, model)
        self.ewc_lambda = float(ewc_lambda)
        self.anchor = parameter_state(model, anchor)
        self.fisher = parameter_state(model, fisher)
        if any(bool((f < 0).any()) or not bool(torch.isfinite(f).all()) for f in self.fisher.values()):
            raise ValueError("EWCLoss: a Fisher is finite and >= 0.")

    def penalty(self) -> torch.Tensor:
        return ewc_penalty(self._model, self.anchor, self.fisher, self.ewc_lambda)
