"""bayesianize keeps a network's outputs, converts the layers asked for, and names the layer on bad input."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, SegResNet, UNet
from torch import nn

from monai_continual.bayes import BayesianModule, bayesian_layers, bayesianize, kl_divergence, posterior_to_prior

NETWORKS = {
    "UNet": lambda: UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    "BasicUNet": lambda: BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)),
    "DynUNet": lambda: DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2]),
    "SegResNet": lambda: SegResNet(3, init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1),
                                   blocks_up=(1,)),
}


def _count(model: nn.Module, types: tuple[type, ...]) -> int:
    return sum(1 for m in model.modules() if type(m) in types)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("weight_norm", [False, True])
def test_converted_monai_networks_keep_eval_outputs(name, weight_norm):
    net = NETWORKS[name]().eval()
    n_conv = _count(net, (nn.Conv3d, nn.ConvTranspose3d))
    bnet = bayesianize(net, std_init=1e-3, weight_norm=weight_norm).eval()
    assert sum(1 for _ in bayesian_layers(bnet)) == n_conv > 0
    assert _count(bnet, (nn.Conv3d, nn.ConvTranspose3d)) == 0
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bnet(x), net(x), rtol=1e-4, atol=1e-5)
        bnet.train()
        assert not torch.allclose(bnet(x), bnet(x), atol=1e-6)  # training mode samples
    assert torch.isfinite(kl_divergence(bnet))


def test_plain_conv_unet_of_nnunet():
    pytest.importorskip("dynamic_network_architectures", reason="nnU-Net extra not installed")
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    net = PlainConvUNet(
        1, 3, (4, 8, 16), nn.Conv3d, 3, (1, 2, 2), (1, 1, 1), 3, (1, 1), False,
        nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
    ).eval()
    bnet = bayesianize(net).eval()
    assert sum(1 for _ in bayesian_layers(bnet)) == _count(net, (nn.Conv3d, nn.ConvTranspose3d))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bnet(x), net(x), rtol=1e-4, atol=1e-5)


def test_layer_selection_exclude_linear_and_copy_semantics():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    only_conv = bayesianize(net)
    assert isinstance(only_conv[0], BayesianModule) and type(only_conv[3]) is nn.Linear
    assert type(net[0]) is nn.Conv2d  # not in place by default
    both = bayesianize(net, layers=("conv", "linear"), exclude=("0",))
    assert type(both[0]) is nn.Conv2d and isinstance(both[3], BayesianModule)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(both.eval()(x), net.eval()(x))
    same = bayesianize(net, layers=(nn.Linear,), inplace=True)
    assert same is net and isinstance(net[3], BayesianModule)
    single = bayesianize(nn.Conv1d(1, 1, 3))
    assert isinstance(single, BayesianModule)


def test_prior_centred_on_weights_and_std_arguments():
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Conv3d(2, 2, 1))
    bnet = bayesianize(net, prior_mean="weights", prior_std=0.1, std_init=0.05)
    for (_, layer), conv in zip(bayesian_layers(bnet), (net[0], net[2])):
        torch.testing.assert_close(layer.prior_mean, conv.weight.detach())
        torch.testing.assert_close(layer.bias_prior_mean, conv.bias.detach())
        torch.testing.assert_close(layer.prior_std, torch.full_like(conv.weight, 0.1))
        torch.testing.assert_close(layer.weight_std, torch.full_like(conv.weight, 0.05))


def test_state_dict_round_trip_after_vcl_step():
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,))
    bnet = bayesianize(net, weight_norm=True)
    with torch.no_grad():
        for p in bnet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    posterior_to_prior(bnet)
    restored = bayesianize(net, weight_norm=True)
    restored.load_state_dict(bnet.state_dict())
    for (_, a), (_, b) in zip(bayesian_layers(restored), bayesian_layers(bnet)):
        torch.testing.assert_close(a.prior_mean, b.prior_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.prior_std, b.prior_std, rtol=0, atol=0)
        torch.testing.assert_close(a.prior_mean, b.weight_mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"std_init": 0.0}, ValueError, r"layer '0' \(Conv2d\).*std_init"),
        ({"prior_std": -1.0}, ValueError, r"layer '0' \(Conv2d\).*prior_std"),
        ({"layers": (nn.LSTM,)}, TypeError, "cannot convert layer type .*LSTM"),
        ({"layers": ("attention",)}, ValueError, "unknown layer group 'attention'"),
        ({"exclude": ("decoder",)}, ValueError, r"exclude names \['decoder'\]"),
        ({"prior_mean": "pretrained"}, ValueError, "prior_mean"),
    ],
)
def test_bad_input_names_the_layer(kwargs, error, match):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(error, match=match):
        bayesianize(net, **kwargs)
