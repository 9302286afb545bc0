"""Monte Carlo inference: streaming statistics equal the stacked reference; composes with sliding windows."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_continual.bayes import MCInferer, bayesianize, sampling
from monai_continual.networks import MeshNet


def _reference(net, x, t, seed, mode):
    torch.manual_seed(seed)
    with torch.no_grad(), sampling(net, mode):
        probs = torch.stack([torch.softmax(net(x), 1) for _ in range(t)])
    mean = probs.mean(0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(1, keepdim=True)
    expected_entropy = (-(probs * probs.clamp_min(1e-12).log()).sum(2, keepdim=True)).mean(0)
    variance = probs.var(0, unbiased=False).sum(1, keepdim=True)
    return mean, variance, entropy, entropy - expected_entropy


@pytest.mark.parametrize("mode", ["weights", "local"])
def test_streaming_statistics_match_stacked_reference(mode):
    net = MeshNet(3, 1, 3, channels=4, dilations=(1, 2), bayesian=True, std_init=0.2).eval()
    x = torch.randn(2, 1, 8, 8, 8)
    ref = _reference(net, x, 7, seed=5, mode=mode)
    torch.manual_seed(5)
    out = MCInferer(7, mode=mode, return_uncertainty=True)(x, net)
    for key, expected in zip(("probs", "variance", "entropy", "mutual_information"), ref):
        torch.testing.assert_close(
            out[key], expected.clamp_min(0) if key != "probs" else expected, rtol=1e-4, atol=1e-5
        )
    assert out["variance"].shape == (2, 1, 8, 8, 8)
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(2, 8, 8, 8))
    assert not net.layers[0].sampling  # the context was left


def test_deterministic_network_has_no_epistemic_uncertainty():
    net = MeshNet(2, 1, 2, channels=4, dilations=(1,)).eval()
    x = torch.randn(1, 1, 8, 8)
    out = MCInferer(5, return_uncertainty=True)(x, net)
    assert float(out["variance"].max()) < 1e-10 and float(out["mutual_information"].max()) < 1e-6
    torch.testing.assert_close(out["probs"], torch.softmax(net(x), 1))


def test_composes_with_sliding_window_and_sigmoid():
    net = bayesianize(nn.Sequential(nn.Conv3d(1, 2, 3, padding=1)), std_init=0.3).eval()
    x = torch.randn(1, 1, 20, 18, 16)
    inferer = MCInferer(4, SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25), activation="sigmoid")
    probs = inferer(x, net)
    assert probs.shape == (1, 2, 20, 18, 16) and float(probs.min()) >= 0 and float(probs.max()) <= 1
    assert MCInferer(4, return_uncertainty=True, activation="sigmoid")(x, net)["entropy"].shape == (1, 1, 20, 18, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        MCInferer(0)
    with pytest.raises(ValueError, match="activation"):
        MCInferer(3, activation="tanh")
