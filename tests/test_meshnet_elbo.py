"""MeshNet's shape (McClure Table 1), the ELBO's scale, and a Bayesian MeshNet that learns."""

from __future__ import annotations

import pytest
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import nn

from monai_continual.bayes import BayesConv3d, MCInferer, kl_divergence
from monai_continual.losses import ELBOLoss
from monai_continual.networks import MeshNet


def test_meshnet_matches_table_1():
    net = MeshNet(3, 1, 50)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 2, 4, 8, 1, 1]
    assert [c.padding[0] for c in convs] == [1, 1, 1, 2, 4, 8, 1, 0]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1]
    assert [c.out_channels for c in convs] == [96] * 7 + [50]
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 7
    bnet = MeshNet(3, 1, 50, bayesian=True, weight_norm=True)  # the paper's weight-normalized means
    bconvs = [m for m in bnet.modules() if isinstance(m, BayesConv3d)]
    assert len(bconvs) == 8 and all(c.weight_norm for c in bconvs)
    assert [c.dilation[0] for c in bconvs] == [1, 1, 1, 2, 4, 8, 1, 1]
    torch.testing.assert_close(bconvs[0].weight_std, torch.full(bconvs[0].weight_shape, 1e-3))
    assert MeshNet(2, 2, 3, channels=8, dropout=0.1)(torch.randn(1, 2, 20, 20)).shape == (1, 3, 20, 20)
    with pytest.raises(ValueError, match="dilations"):
        MeshNet(3, 1, 2, dilations=(1, 0))


def test_elbo_is_data_plus_kl_over_num_examples():
    net = MeshNet(3, 1, 3, channels=4, dilations=(1, 2), bayesian=True)
    data_loss = nn.CrossEntropyLoss()
    x, y = torch.randn(2, 1, 6, 6, 6), torch.randint(0, 3, (2, 6, 6, 6))
    torch.manual_seed(1)
    logits = net(x)
    loss = ELBOLoss(data_loss, net, num_examples=250, kl_weight=0.5)(logits, y)
    expected = data_loss(logits, y) + 0.5 * kl_divergence(net) / 250
    torch.testing.assert_close(loss, expected)
    assert "_model" not in dict(ELBOLoss(data_loss, net, 1).named_modules())  # not a submodule
    assert len(ELBOLoss(data_loss, net, 1).state_dict()) == 0
    with pytest.raises(ValueError, match="num_examples"):
        ELBOLoss(data_loss, net, 0)
    with pytest.raises(ValueError, match="kl_weight"):
        ELBOLoss(data_loss, net, 10, kl_weight=-1)


def _spheres(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    images, labels = [], []
    for _ in range(n):
        centre = size / 2 + (torch.rand(3, 1, 1, 1, generator=generator) - 0.5) * size / 3
        radius = size * (0.2 + 0.1 * torch.rand(1, generator=generator))
        label = (((grid - centre) ** 2).sum(0) <= radius**2).long()
        image = label.float() + 0.3 * torch.randn(label.shape, generator=generator)
        images.append(image[None])
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def test_bayesian_meshnet_learns_a_two_class_problem():
    """Bright noisy spheres (foreground ~10% of voxels). Predicting all foreground scores Dice 2f / (1 + f) < 0.2,
    a coin flip f / (0.5 + f) < 0.2; a trained network must reach 0.85 in deterministic and in MC mode.

    The training set has N = 200 volumes and the full ELBO (KL / N, prior N(0, 1)); with only a dozen volumes the
    prior rightly dominates and the network stays near its prior (Dice ~0.79 in 150 steps), which is the ELBO's
    documented scale at work, not a failure to learn."""
    g = torch.Generator().manual_seed(0)
    images, labels = _spheres(200, 16, g)
    test_images, test_labels = _spheres(4, 16, g)
    f = float(test_labels.float().mean())
    assert 2 * f / (1 + f) < 0.2
    net = MeshNet(3, 1, 2, channels=8, dilations=(1, 1, 2, 4, 1), bayesian=True)
    loss_fn = ELBOLoss(nn.CrossEntropyLoss(), net, num_examples=len(images))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for step in range(150):
        idx = torch.randint(0, len(images), (4,), generator=g)
        opt.zero_grad()
        loss_fn(net(images[idx]), labels[idx]).backward()
        opt.step()
    net.eval()
    target = one_hot(test_labels[:, None], 2)
    with torch.no_grad():
        pred = one_hot(net(test_images).argmax(1, keepdim=True), 2)
        mc = one_hot(MCInferer(10)(test_images, net).argmax(1, keepdim=True), 2)
    dice = float(compute_dice(pred, target, include_background=False).mean())
    dice_mc = float(compute_dice(mc, target, include_background=False).mean())
    assert dice > 0.85 and dice_mc > 0.85, (dice, dice_mc)
