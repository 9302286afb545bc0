"""Posterior standard deviations from the data: a diagonal Laplace approximation with the empirical Fisher.

For the ELBO with a per-weight Gaussian prior N(mu_p, sigma_p^2) and a data term that is a mean over N examples, the
optimal variance of a fully factorized Gaussian posterior under a local quadratic approximation of the data term is

    sigma^2 = 1 / (N * F + 1 / sigma_p^2)

with F the per-example curvature of the data term at the means (here: the diagonal empirical Fisher, the mean of
squared per-example gradients). This is the fixed point that variational training drifts towards, and the
diagonal Laplace posterior. Starting a Bayesian stage from it instead of a fixed small std (McClure et al.: 1e-3)
matters in continual learning: the posterior becomes the next site's prior, and a std far below what the data
support pins every later site to the first one.

The examples are voxels: a segmentation's categorical likelihood is a product over voxels, and the data term
(cross-entropy, Dice) averages over them. ``N * F`` is then the sum over every training voxel of the squared
gradient of that voxel's cross-entropy. It is estimated without per-voxel backward passes: with independent random
signs s_v = +-1, E[(sum_v s_v g_v)^2] = sum_v g_v^2, so one backward pass of the sign-weighted sum of the voxels'
cross-entropies per mini-batch gives an unbiased estimate for every weight at once.

Since ``1 / (N F + 1 / sigma_p^2) <= sigma_p^2``, the result never exceeds the prior's std: the condition of
distributed weight consolidation (McClure et al. Sec. 2.4.4) holds by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from monai_continual.bayes.base import BayesianModule
from monai_continual.bayes.config import conversion_std_init
from monai_continual.bayes.convert import bayesian_layers

__all__ = ["laplace_std", "fisher_diagonal", "parameter_fisher", "calibrate_posterior_std", "std_summary",
           "conversion_std_init"]


def laplace_std(fisher_sum: torch.Tensor, prior_std: torch.Tensor) -> torch.Tensor:
    """``(N F + 1 / sigma_p^2) ** -1/2``: the posterior std of a diagonal Laplace approximation.

    Args:
        fisher_sum: ``N * F``, the curvature of the data term summed over the N examples (>= 0).
        prior_std: the prior's std (> 0), broadcastable to ``fisher_sum``.

    Example::

        >>> laplace_std(torch.tensor([0.0, 3.0]), torch.tensor(1.0))  # tensor([1.0000, 0.5000])
    """
    return torch.rsqrt(fisher_sum.clamp_min(0) + prior_std.pow(-2))


def _voxel_fisher_sums(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    leaves: Callable[[], list[torch.Tensor | None]],
    draws: int,
    seed: int,
) -> tuple[list[torch.Tensor | None], int]:
    """The random-sign estimate of the module docstring, once for every caller: per tensor of ``leaves()`` (called
    before each forward pass; ``None`` entries are skipped), the sum over every voxel of the squared gradient of its
    cross-entropy, and the number of voxels. The model runs in ``eval()`` mode."""
    if int(draws) < 1:
        raise ValueError(f"the Fisher estimate: draws must be >= 1, got {draws}.")
    sums = [None if t is None else torch.zeros_like(t, dtype=torch.float32) for t in leaves()]
    generator = torch.Generator().manual_seed(int(seed))
    voxels = 0
    was_training = model.training
    model.eval()
    try:
        for image, label in batches:
            if isinstance(label, (list, tuple)):  # deep supervision: the full-resolution target
                label = label[0]
            target = label[:, 0] if label.dim() == image.dim() else label
            for _ in range(int(draws)):
                flat = leaves()
                logits = model(image)
                if isinstance(logits, (list, tuple)):
                    logits = logits[0]
                per_voxel = F.cross_entropy(logits, target.long(), reduction="none")
                signs = torch.randint(0, 2, per_voxel.shape, generator=generator).to(per_voxel) * 2 - 1
                used = [t for t in flat if t is not None]
                # tensors that do not reach the used output (deep-supervision heads) get no curvature
                grads = iter(torch.autograd.grad((per_voxel * signs).sum(), used, allow_unused=True))
                for total, leaf in zip(sums, flat):
                    grad = None if leaf is None else next(grads)
                    if grad is not None:
                        total.add_(grad.detach().float().pow(2))
            voxels += per_voxel.numel()
    finally:
        model.train(was_training)
    return [None if t is None else t / int(draws) for t in sums], voxels


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    draws: int = 1,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per Bayesian layer, the sum over every voxel of the squared gradient of its cross-entropy at the means.

    The network runs deterministically (means, ``eval()``); the gradient is taken with respect to the layers' weight
    and bias means whatever their parameterization (weight normalization included).

    Args:
        model: a network with Bayesian layers, producing class logits ``(B, C, *spatial)`` (or a list of them, deep
            supervision: the first, full-resolution one is used).
        batches: ``(image, label)`` pairs; ``label`` holds class indices, ``(B, 1, *spatial)`` or ``(B, *spatial)``
            (or a list of them, matching the outputs).
        draws: random-sign draws per batch (more: less variance, one backward pass each).
        seed: seed of the random signs.

    Returns:
        layer name -> (weight Fisher sum, bias Fisher sum or ``None``).

    Example::

        >>> fisher = fisher_diagonal(bnet, [(image, label)])
    """
    layers = dict(bayesian_layers(model))
    if not layers:
        raise ValueError("fisher_diagonal: the model has no Bayesian layer.")
    try:
        sums, _ = _voxel_fisher_sums(
            model, batches, lambda: [t for pair in _override_means(layers).values() for t in pair], draws, seed
        )
    finally:
        for layer in layers.values():
            layer._mean_override = None
    pairs = iter(sums)
    return {name: (next(pairs), next(pairs)) for name in layers}


def parameter_fisher(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    draws: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per trainable parameter of a deterministic network, the diagonal empirical Fisher as a mean over voxels: the
    estimate of :func:`fisher_diagonal` divided by the number of voxels of ``batches`` (elastic weight
    consolidation's ``F``, on the scale of a data loss that averages over voxels).

    Args:
        model: a network producing class logits ``(B, C, *spatial)`` (or a list of them: the first is used).
        batches: ``(image, label)`` pairs as for :func:`fisher_diagonal`.
        draws, seed: see :func:`fisher_diagonal`.

    Returns:
        parameter name (of ``model.named_parameters()``) -> its Fisher, float32, >= 0.

    Example::

        >>> fisher = parameter_fisher(net, [(image, label)])
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    sums, voxels = _voxel_fisher_sums(model, batches, lambda: [params[n] for n in names], draws, seed)
    if not voxels:
        raise ValueError("parameter_fisher: no batch to estimate the Fisher from.")
    return {name: total / voxels for name, total in zip(names, sums)}


def _override_means(layers: dict[str, BayesianModule]) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    leaves = {}
    for name, layer in layers.items():
        w = layer.weight_mean.detach().clone().requires_grad_(True)
        b = None if layer.bias_shape is None else layer.bias_mean.detach().clone().requires_grad_(True)
        layer._mean_override = (w, b)
        leaves[name] = (w, b)
    return leaves


@torch.no_grad()
def _write_std(layer: BayesianModule, fisher: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    w_std = laplace_std(fisher[0], layer.prior_std)
    b_std = None if layer.bias_shape is None else laplace_std(fisher[1], layer.bias_prior_std)
    layer.set_posterior(layer.weight_mean.detach().clone(), w_std,
                        None if b_std is None else layer.bias_mean.detach().clone(), b_std)


def calibrate_posterior_std(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[Any]],
    draws: int = 1,
    seed: int = 0,
    scale: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Set every Bayesian layer's posterior std to :func:`laplace_std` of the data's Fisher and the layer's prior.

    The means are kept. Returns the std statistics before and after (:func:`std_summary`).

    Args:
        model: a network with Bayesian layers (its prior already set: the stage's prior).
        batches: the site's training ``(image, label)`` batches, or a callable returning them.
        draws, seed: see :func:`fisher_diagonal`.
        scale: multiplies the Fisher sum, when ``batches`` cover a part of the site's examples (e.g. N / examples
            seen, for random patches).

    Example::

        >>> stats = calibrate_posterior_std(bnet, [(image, label)])
        >>> stats["after"]["median"]
    """
    before = std_summary(model)
    fisher = fisher_diagonal(model, batches() if callable(batches) else batches, draws=draws, seed=seed)
    layers = dict(bayesian_layers(model))
    if not (float(scale) > 0 and math.isfinite(float(scale))):
        raise ValueError(f"calibrate_posterior_std: scale must be a positive finite number, got {scale}.")
    for name, (w, b) in fisher.items():
        _write_std(layers[name], (w * scale, None if b is None else b * scale))
    return {"before": before, "after": std_summary(model)}


@torch.no_grad()
def std_summary(model: nn.Module) -> dict[str, float]:
    """Median, 5th and 95th percentile of every posterior std of ``model``, and of std / prior std."""
    stds, ratios = [], []
    for _, layer in bayesian_layers(model):
        stds.append(layer.weight_std.flatten())
        ratios.append((layer.weight_std / layer.prior_std).flatten())
        if layer.bias_shape is not None:
            stds.append(layer.bias_std.flatten())
            ratios.append((layer.bias_std / layer.bias_prior_std).flatten())
    if not stds:
        return {}
    std, ratio = torch.cat(stds).float().cpu(), torch.cat(ratios).float().cpu()
    if std.numel() > 1 << 24:  # torch.quantile's input limit: an evenly strided subsample
        step = -(-std.numel() // (1 << 24))
        std, ratio = std[::step], ratio[::step]
    q = torch.tensor([0.05, 0.5, 0.95])
    s, r = torch.quantile(std, q).tolist(), torch.quantile(ratio, q).tolist()
    return {"p05": s[0], "median": s[1], "p95": s[2], "ratio_p05": r[0], "ratio_median": r[1], "ratio_p95": r[2]}
