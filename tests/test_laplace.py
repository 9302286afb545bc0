"""The data-calibrated posterior std: the Fisher estimator against per-voxel gradients, the Laplace formula, the He
prior, and the bound DWC relies on."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from monai_continual.bayes import bayesianize
from monai_continual.bayes.convert import he_std
from monai_continual.bayes.laplace import calibrate_posterior_std, fisher_diagonal, laplace_std, std_summary


def _tiny(bound_std: bool = False, weight_norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 1))
    return bayesianize(net, prior_std="he", bound_std=bound_std, weight_norm=weight_norm)


def _exact_fisher(net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor) -> list[torch.Tensor]:
    """Sum over voxels of the squared gradient of each voxel's cross-entropy, one backward pass per voxel."""
    layers = [net[0], net[2]]
    means = [layer.weight_mean.detach().clone().requires_grad_(True) for layer in layers]
    for layer, mean in zip(layers, means):
        layer._mean_override = (mean, layer.bias_mu.detach())
    net.eval()
    per_voxel = F.cross_entropy(net(image), label[:, 0], reduction="none").flatten()
    total = [torch.zeros_like(m) for m in means]
    for value in per_voxel:
        for acc, grad in zip(total, torch.autograd.grad(value, means, retain_graph=True)):
            acc += grad**2
    for layer in layers:
        layer._mean_override = None
    return total


@pytest.mark.parametrize("weight_norm", [False, True])
def test_random_sign_fisher_is_the_sum_of_per_voxel_squared_gradients(weight_norm):
    net = _tiny(weight_norm=weight_norm)
    generator = torch.Generator().manual_seed(1)
    image, label = torch.randn(2, 1, 5, 5, generator=generator), torch.randint(0, 3, (2, 1, 5, 5), generator=generator)
    exact = _exact_fisher(net, image, label)
    estimate = fisher_diagonal(net, [(image, label)], draws=1500, seed=0)
    for (name, (w, _)), reference in zip(estimate.items(), exact):
        # unbiased; with 1500 draws the total relative error is a few percent
        assert float((w - reference).abs().sum() / reference.sum()) < 0.06, name


def test_laplace_std_formula_and_the_prior_bound():
    fisher = torch.tensor([0.0, 3.0, 1e6])
    prior = torch.tensor([1.0, 1.0, 0.1])
    expected = torch.tensor([1.0, 0.5, 1.0 / math.sqrt(1e6 + 100.0)])
    assert torch.allclose(laplace_std(fisher, prior), expected)
    net = _tiny(bound_std=True)
    image, label = torch.randn(2, 1, 6, 6), torch.randint(0, 3, (2, 1, 6, 6))
    stats = calibrate_posterior_std(net, [(image, label)], scale=50.0)
    for layer in (net[0], net[2]):  # never above the prior (DWC's sigma_s <= sigma_0), means untouched
        assert torch.all(layer.weight_std <= layer.prior_std * (1 + 1e-6)) and torch.all(
            layer.bias_std <= layer.bias_prior_std * (1 + 1e-6)
        )
    assert stats["before"]["median"] == pytest.approx(1e-3) and stats["after"] == std_summary(net)
    assert stats["after"]["ratio_p05"] < 1.0  # the data constrain some weights


def test_more_data_means_a_smaller_std():
    net = _tiny()
    image, label = torch.randn(2, 1, 6, 6), torch.randint(0, 3, (2, 1, 6, 6))
    calibrate_posterior_std(net, [(image, label)], scale=1.0, seed=3)
    few = net[0].weight_std.detach().clone()
    calibrate_posterior_std(net, [(image, label)], scale=100.0, seed=3)
    assert torch.all(net[0].weight_std <= few + 1e-7) and float(net[0].weight_std.detach().mean()) < float(few.mean())


def test_he_prior_is_sqrt_two_over_fan_in():
    conv, transposed = torch.nn.Conv3d(12, 4, 3), torch.nn.ConvTranspose3d(8, 6, 2, stride=2)
    assert he_std(conv) == pytest.approx(math.sqrt(2 / (12 * 27)))
    assert he_std(transposed) == pytest.approx(math.sqrt(2 / (6 * 8)))  # PyTorch's fan_in for transposed weights
    net = bayesianize(torch.nn.Sequential(conv), prior_std="he")
    assert torch.allclose(net[0].prior_std, torch.full_like(net[0].prior_std, math.sqrt(2 / 324)))
    with pytest.raises(ValueError, match="prior_std must be a positive number or 'he'"):
        bayesianize(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3)), prior_std="kaiming")


def test_bad_arguments_are_refused():
    net = _tiny()
    with pytest.raises(ValueError, match="draws must be >= 1"):
        fisher_diagonal(net, [], draws=0)
    with pytest.raises(ValueError, match="no Bayesian layer"):
        fisher_diagonal(torch.nn.Conv2d(1, 1, 1), [])
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        calibrate_posterior_std(net, [], scale=0.0)
