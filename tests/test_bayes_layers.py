"""FFG layers: local reparameterization statistics, KL, parameterizations, priors in state_dict, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from monai_continual.bayes import (
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesConvTranspose3d,
    BayesianModule,
    BayesLinear,
    kl_divergence,
    posterior_to_prior,
    sampling,
)

CASES = [
    # (class, functional conv, input shape, kwargs)
    (BayesConv1d, F.conv1d, (1, 2, 20), {"kernel_size": 3, "dilation": 2, "padding": 2, "stride": 2}),
    (BayesConv2d, F.conv2d, (1, 2, 9, 9), {"kernel_size": 3, "dilation": 2, "padding": 1, "stride": 2}),
    (BayesConv3d, F.conv3d, (1, 2, 7, 7, 7), {"kernel_size": 3, "dilation": 2, "padding": 2, "stride": 1}),
]


def _random_posterior(layer, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    shape = layer.weight_shape
    w_mean = torch.randn(shape, generator=g, dtype=torch.float64)
    w_std = scale * (0.2 + torch.rand(shape, generator=g, dtype=torch.float64))
    b_mean = torch.randn(layer.bias_shape, generator=g, dtype=torch.float64)
    b_std = scale * (0.2 + torch.rand(layer.bias_shape, generator=g, dtype=torch.float64))
    layer.set_posterior(w_mean, w_std, b_mean, b_std)
    return w_mean, w_std, b_mean, b_std


@pytest.mark.parametrize("cls,conv,shape,kwargs", CASES)
@pytest.mark.parametrize("mode", ["local", "weights"])
def test_output_moments_match_closed_form(cls, conv, shape, kwargs, mode):
    """Empirical mean/variance of sampled outputs equal conv(x, mu) + b and conv(x^2, sigma^2) + b_sigma^2.

    Tolerance: 5 standard errors per element (mean: sqrt(var / n); variance: var * sqrt(2 / n)), so a correct layer
    fails with probability < 1e-4 over all elements, and a layer off by more than a few percent fails surely.
    """
    layer = cls(2, 3, dtype=torch.float64, sample_mode=mode, **kwargs)
    w_mean, w_std, b_mean, b_std = _random_posterior(layer)
    x = torch.randn(shape, dtype=torch.float64)
    expected_mean = conv(
        x, w_mean, b_mean, stride=kwargs["stride"], padding=kwargs["padding"], dilation=kwargs["dilation"]
    )
    expected_var = conv(
        x * x, w_std**2, b_std**2, stride=kwargs["stride"], padding=kwargs["padding"], dilation=kwargs["dilation"]
    )
    layer.train()
    n = 4000
    with torch.no_grad():
        if mode == "local":  # one draw per output element: a batch of copies gives n independent draws
            draws = layer(x.expand(n, *shape[1:]).contiguous())
        else:  # one weight draw per call
            draws = torch.cat([layer(x) for _ in range(n)])
    emp_mean, emp_var = draws.mean(0), draws.var(0)
    assert expected_var.min() > 0
    assert torch.all((emp_mean - expected_mean[0]).abs() <= 5 * torch.sqrt(expected_var[0] / n))
    assert torch.all((emp_var / expected_var[0] - 1).abs() <= 5 * math.sqrt(2 / n))


def _two_convolutions(layer):
    """The layer with local reparameterization's two operations (an instance attribute hides the fused method)."""
    twin = copy.deepcopy(layer)
    twin._mean_and_var = BayesianModule._mean_and_var.__get__(twin)
    return twin


@pytest.mark.parametrize("layer", [
    BayesConv3d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="reflect", dtype=torch.float64),
    BayesConv3d(4, 6, 3, padding=1, bias=False, dtype=torch.float64),
    BayesConvTranspose3d(4, 6, 2, stride=2, groups=2, dtype=torch.float64),
    BayesConv1d(2, 3, 3, padding=1, padding_mode="circular", dtype=torch.float64),
])
def test_the_fused_cpu_convolution_equals_the_two_convolutions_and_their_gradients(layer):
    """On the CPU at batch 1 one grouped convolution of [x, x^2] gives the mean and the variance of local
    reparameterization: a training forward with the same noise, and every gradient, equal the two convolutions'."""
    if layer.bias_shape:
        _random_posterior(layer)
    layer.train()
    results = []
    for net in (layer, _two_convolutions(layer)):
        x = torch.randn((1, layer.in_channels) + (5,) * (layer.weight_mu.dim() - 2), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3), requires_grad=True)
        torch.manual_seed(0)  # the same noise
        y = net(x)
        (y.sin() * y).sum().backward()
        results.append([y, x.grad] + [p.grad for p in net.parameters()])
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)


def test_layers_without_a_fused_path_train_at_batch_one_and_unbatched():
    torch.manual_seed(0)
    linear = BayesLinear(6, 4).train()
    linear(torch.randn(1, 6)).sum().backward()
    assert linear.weight_rho.grad is not None
    conv = BayesConv2d(1, 3, 3, padding=1).train()  # an unbatched (C=1, H, W) input: its first size is not a batch
    assert conv(torch.randn(1, 8, 8)).shape == (3, 8, 8)


def test_local_noise_is_independent_per_element():
    """One draw per voxel and example: two examples with the same input get uncorrelated outputs."""
    layer = BayesConv2d(1, 1, 3, padding=1, dtype=torch.float64, std_init=0.5)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    out = layer(x.expand(2000, 1, 8, 8)).detach()
    centred = out - out.mean(0)
    corr_examples = torch.corrcoef(torch.stack([centred[:1000].flatten(), centred[1000:].flatten()]))[0, 1]
    corr_voxels = torch.corrcoef(torch.stack([centred[:, 0, 3, 3], centred[:, 0, 3, 4]]))[0, 1]
    assert abs(float(corr_examples)) < 0.02 and abs(float(corr_voxels)) < 0.1


def test_mixed_precision_keeps_gradients_finite_and_moments():
    """float16 autocast (nnU-Net on CUDA) flushes sigma^2 x^2 to zero; the variance path must stay in float32."""
    torch.manual_seed(0)
    layer = BayesConv3d(2, 4, 3, padding=1, bias=False)
    x = torch.zeros(64, 2, 6, 6, 6)
    x[..., 2:4, 2:4, 2:4] = torch.randn(64, 2, 2, 2, 2)  # zero padding and empty regions: exactly zero variance
    with torch.autocast("cpu", dtype=torch.float16):
        y = layer(x)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert torch.isfinite(layer.weight_rho.grad).all() and torch.isfinite(layer.weight_mu.grad).all()
    # the noise has the closed-form std sqrt(conv(x^2, sigma^2)) where the variance is non-zero
    mean = F.conv3d(x, layer.weight_mean.detach(), padding=1)
    std = F.conv3d(x * x, layer.weight_std.detach() ** 2, padding=1).sqrt()
    where = std > 1e-3
    z = (y.float() - mean)[where] / std[where]
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1  # float16 rounding of y included


def test_eval_is_deterministic_and_sampling_context_restores():
    layer = BayesConv3d(1, 2, 3, padding=1, std_init=0.1)
    x = torch.randn(1, 1, 6, 6, 6)
    layer.eval()
    plain = F.conv3d(x, layer.weight_mean, layer.bias_mean, padding=1)
    torch.testing.assert_close(layer(x), plain, rtol=0, atol=0)
    with sampling(layer, mode="weights"):
        assert layer.sampling and layer.sample_mode == "weights"
        assert not torch.equal(layer(x), layer(x))
    assert not layer.sampling and layer.sample_mode == "local"
    torch.testing.assert_close(layer(x), plain, rtol=0, atol=0)


def test_kl_matches_torch_distributions_and_has_gradients():
    layer = BayesConv3d(2, 3, 3, weight_norm=True, prior_std=0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    layer.set_prior(
        torch.randn(layer.weight_shape, generator=g, dtype=torch.float64),
        0.1 + torch.rand(layer.weight_shape, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
        0.1 + torch.rand(3, generator=g, dtype=torch.float64),
    )
    _random_posterior(layer)
    q_w = torch.distributions.Normal(layer.weight_mean, layer.weight_std)
    p_w = torch.distributions.Normal(layer.prior_mean, layer.prior_std)
    q_b = torch.distributions.Normal(layer.bias_mean, layer.bias_std)
    p_b = torch.distributions.Normal(layer.bias_prior_mean, layer.bias_prior_std)
    expected = torch.distributions.kl_divergence(q_w, p_w).sum() + torch.distributions.kl_divergence(q_b, p_b).sum()
    kl = kl_divergence(nn.Sequential(layer, nn.ReLU()))
    torch.testing.assert_close(kl, expected, rtol=1e-12, atol=0)
    kl.backward()
    for name in ("weight_v", "weight_g", "weight_rho", "bias_mu", "bias_rho"):
        grad = getattr(layer, name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_kl_of_model_without_bayesian_layers_is_zero():
    assert float(kl_divergence(nn.Conv2d(1, 1, 3))) == 0.0


def test_kl_is_zero_when_posterior_equals_prior():
    layer = BayesLinear(4, 3, bias=True, dtype=torch.float64)
    posterior_to_prior(layer)
    assert abs(float(layer.kl().detach())) < 1e-9


@pytest.mark.parametrize("weight_norm", [False, True])
@pytest.mark.parametrize("bound_std", [False, True])
def test_set_posterior_round_trip(weight_norm, bound_std):
    layer = BayesConv2d(3, 4, 3, weight_norm=weight_norm, bound_std=bound_std, dtype=torch.float64, prior_std=2.0)
    w_mean, w_std, b_mean, b_std = _random_posterior(layer)
    torch.testing.assert_close(layer.weight_mean, w_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.weight_std, w_std, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.bias_mean, b_mean, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias_std, b_std, rtol=1e-12, atol=1e-14)


def test_std_init_and_softplus_parameterization():
    layer = BayesConv3d(1, 2, 3)
    torch.testing.assert_close(layer.weight_std, torch.full(layer.weight_shape, 1e-3))
    torch.testing.assert_close(layer.weight_std, F.softplus(layer.weight_rho))


def test_bound_holds_by_construction_under_optimization():
    """Gradient ascent on std for many Adam steps: the bounded std approaches the prior std but never exceeds it."""
    prior_std = torch.rand(4, 2, 3, 3) * 0.5 + 0.05
    layer = BayesConv2d(2, 4, 3, bound_std=True, prior_std=prior_std, std_init=1e-3, bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        (-layer.weight_std.sum()).backward()
        opt.step()
        assert torch.all(layer.weight_std <= layer.prior_std)
    assert torch.all(layer.weight_std > 0.99 * layer.prior_std)
    unbounded = BayesConv2d(2, 4, 3, prior_std=prior_std, bias=False)
    opt = torch.optim.Adam(unbounded.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        (-unbounded.weight_std.sum()).backward()
        opt.step()
    assert torch.any(unbounded.weight_std > unbounded.prior_std)  # the bound is the parameterization's doing


def test_bounded_prior_change_caps_std():
    layer = BayesConv1d(1, 2, 3, bound_std=True, std_init=0.5, bias=False)
    new_std = torch.full(layer.weight_shape, 0.1)
    layer.set_prior(torch.zeros(layer.weight_shape), new_std)
    assert torch.all(layer.weight_std <= new_std) and torch.all(layer.weight_std > 0.0999)


def test_priors_survive_state_dict_round_trip():
    net = nn.Sequential(
        BayesConv3d(1, 4, 3, padding=1, weight_norm=True), nn.ReLU(), BayesConvTranspose3d(4, 2, 2, stride=2)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    posterior_to_prior(net)
    state = net.state_dict()
    for key in ("0.prior_mean", "0.prior_std", "0.bias_prior_mean", "0.bias_prior_std", "2.prior_mean", "2.prior_std"):
        assert key in state
    fresh = nn.Sequential(
        BayesConv3d(1, 4, 3, padding=1, weight_norm=True), nn.ReLU(), BayesConvTranspose3d(4, 2, 2, stride=2)
    )
    assert not torch.equal(fresh[0].prior_mean, net[0].prior_mean)
    fresh.load_state_dict(state)
    for a, b in ((fresh[0], net[0]), (fresh[2], net[2])):
        torch.testing.assert_close(a.prior_mean, b.weight_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.prior_std, b.weight_std, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a.prior_mean, b.prior_mean, rtol=0, atol=0)
    assert abs(float(kl_divergence(fresh).detach())) < 1e-2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"std_init": 0.0}, "std_init"),
        ({"std_init": -1e-3}, "std_init"),
        ({"prior_std": 0.0}, "prior_std"),
        ({"prior_std": torch.zeros(2, 1, 3)}, "prior_std"),
        ({"prior_mean": torch.zeros(5)}, r"prior_mean .* shape \(5,\), expected \(2, 1, 3\)"),
        ({"sample_mode": "flipout"}, "sample_mode"),
        ({"bound_std": True, "std_init": 2.0}, "bound_std"),
        ({"prior_std": float("nan")}, "NaN"),
    ],
)
def test_bad_arguments_raise_named_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        BayesConv1d(1, 2, 3, **kwargs)
    assert "BayesConv1d" in str(info.value)


def test_set_prior_and_posterior_reject_bad_shapes_and_values():
    layer = BayesConv2d(1, 2, 3)
    with pytest.raises(ValueError, match=r"prior weight mean has shape \(3,\)"):
        layer.set_prior(torch.zeros(3), torch.ones(layer.weight_shape), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="weight std must be > 0"):
        layer.set_posterior(
            torch.zeros(layer.weight_shape), torch.zeros(layer.weight_shape), torch.zeros(2), torch.ones(2)
        )
    with pytest.raises(ValueError, match="has a bias"):
        layer.set_posterior(torch.zeros(layer.weight_shape), torch.ones(layer.weight_shape))


def test_same_constructor_as_torch_including_padding_modes_and_groups():
    for padding_mode in ("zeros", "reflect", "circular"):
        torch_conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode=padding_mode)
        bayes = BayesConv2d.from_module(torch_conv).eval()
        x = torch.randn(2, 4, 9, 9)
        torch.testing.assert_close(bayes(x), torch_conv(x))
        bayes.train()
        assert bayes(x).shape == torch_conv(x).shape
    same = BayesConv3d(2, 3, 3, padding="same", dilation=2)
    assert same(torch.randn(1, 2, 5, 6, 7)).shape == (1, 3, 5, 6, 7)
    with pytest.raises(TypeError, match="expects a Conv3d"):
        BayesConv3d.from_module(nn.Conv2d(1, 1, 3))
