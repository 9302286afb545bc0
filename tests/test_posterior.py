"""Posterior objects: round trips through models and files, and every corruption rejected with its own error."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from monai_continual.bayes import bayesian_layers, bayesianize
from monai_continual.consolidation import Posterior, PosteriorFileError, consolidate_dwc
from monai_continual.networks import MeshNet


def _net(**kw) -> nn.Module:
    return MeshNet(3, 1, 3, channels=4, dilations=(1, 2), bayesian=True, **kw)


def _perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def test_round_trip_through_a_bayesian_meshnet():
    source = _perturbed(_net())
    post = Posterior.from_model(source, site="A", num_examples=12)
    target = _net()
    post.to_model(target)
    again = Posterior.from_model(target)
    for name in post.mean:
        # exact up to float32 rounding of the weight-norm and softplus parameterizations
        torch.testing.assert_close(again.mean[name], post.mean[name], rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(again.std[name], post.std[name], rtol=2e-6, atol=1e-9)
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=1e-5, atol=1e-6)


def test_deterministic_state_travels_with_a_converted_unet():
    from monai.networks.nets import UNet

    net = _perturbed(bayesianize(UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch")))
    with torch.no_grad():
        net.train()(torch.randn(2, 1, 8, 8, 8))  # moves batch-norm statistics
    post = Posterior.from_model(net)
    assert any("running_mean" in k for k in post.deterministic) and not any("prior" in k for k in post.deterministic)
    fresh = bayesianize(UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1, norm="batch"))
    post.to_model(fresh)
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x), rtol=1e-5, atol=1e-6)


class _Aliased(nn.Module):
    """A conv reachable by two paths, as in nnU-Net's ConvDropoutNormReLU (``conv`` and ``all_modules.0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3)
        self.all_modules = nn.Sequential(self.conv, nn.InstanceNorm3d(2, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


def test_a_layer_with_two_names_is_bayesian_under_both():
    torch.manual_seed(0)
    trained = bayesianize(_Aliased(), bound_std=True)
    with torch.no_grad():
        trained.conv.weight_mu.add_(0.5)
    posterior = Posterior.from_model(trained, site="a")
    assert not any(k.startswith(("all_modules.0.", "conv.")) for k in posterior.deterministic)
    assert set(posterior.deterministic) == {"all_modules.1.weight", "all_modules.1.bias"}
    fresh = bayesianize(_Aliased(), bound_std=True)
    posterior.to_prior(fresh, init_posterior=True)  # the alias must not overwrite the prior just set
    for alias in ("conv", "all_modules.0"):
        torch.testing.assert_close(
            fresh.state_dict()[f"{alias}.prior_mean"], posterior.mean["conv.weight"], rtol=0, atol=0
        )
        torch.testing.assert_close(
            fresh.state_dict()[f"{alias}.prior_std"], posterior.std["conv.weight"], rtol=0, atol=0
        )


def test_file_round_trip_is_lossless(tmp_path):
    post = Posterior.from_model(_perturbed(_net()), site="hospital A", num_examples=40, round=2)
    path = post.save(tmp_path / "a.safetensors")
    loaded = Posterior.load(path)
    for group in ("mean", "std", "deterministic"):
        original, restored = getattr(post, group), getattr(loaded, group)
        assert set(original) == set(restored)
        assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.metadata == {"site": "hospital A", "num_examples": 40, "round": 2}
    assert loaded.sha256() == post.sha256()
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_vcl_and_dwc_priors_load_into_a_model():
    previous = _perturbed(_net())
    post = Posterior.from_model(previous)
    nxt = _net()
    post.to_prior(nxt)
    for (_, a), (_, b) in zip(bayesian_layers(nxt), bayesian_layers(previous)):
        torch.testing.assert_close(a.prior_mean, b.weight_mean.detach())
        torch.testing.assert_close(a.prior_std, b.weight_std.detach())
    assert not torch.allclose(nxt.layers[0].weight_mean, previous.layers[0].weight_mean)
    prior_back = Posterior.prior_of(nxt)
    torch.testing.assert_close(prior_back.mean["layers.0.weight"], post.mean["layers.0.weight"])
    bounded = _net(bound_std=True)
    post.to_prior(bounded, init_posterior=True)  # a DWC site starts from the shared prior
    torch.testing.assert_close(
        bounded.layers[0].weight_mean, previous.layers[0].weight_mean.detach(), rtol=1e-5, atol=1e-6
    )
    assert torch.all(bounded.layers[0].weight_std <= bounded.layers[0].prior_std)


def _unchecked(post: Posterior, **changes) -> Posterior:
    """A copy of ``post`` with fields replaced, skipping validation (to write deliberately bad files)."""
    bad = object.__new__(Posterior)
    bad.mean, bad.std, bad.deterministic = dict(post.mean), dict(post.std), dict(post.deterministic)
    bad.metadata, bad._source = dict(post.metadata), None
    for key, value in changes.items():
        getattr(bad, key).update(value) if isinstance(value, dict) and key != "metadata" else setattr(bad, key, value)
    return bad


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_header(path, key, value):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])


def _tamper_metadata(path):
    _edit_header(path, "metadata", json.dumps({"num_examples": 10_000}))


W0 = "layers.0.weight"
FILE_CORRUPTIONS = [
    ("truncated", _truncate, "unreadable"),
    ("tampered tensor bytes", _flip_data_byte, "SHA-256 mismatch"),
    ("tampered metadata", _tamper_metadata, "SHA-256 mismatch"),
    ("other format", lambda p: _edit_header(p, "format", "something-else"), "is not a monai-continual-posterior file"),
    ("future version", lambda p: _edit_header(p, "format_version", "99"), "format version '99'"),
]


@pytest.mark.parametrize("case,corrupt,message", FILE_CORRUPTIONS, ids=[c[0] for c in FILE_CORRUPTIONS])
def test_corrupt_files_are_rejected(tmp_path, case, corrupt, message):
    path = Posterior.from_model(_net(), num_examples=3).save(tmp_path / "site.safetensors")
    corrupt(path)
    with pytest.raises(PosteriorFileError, match=message) as info:
        Posterior.load(path)
    assert "site.safetensors" in str(info.value)


def _bad_values(kind):
    post = Posterior.from_model(_net())
    if kind == "nan":
        value = post.mean[W0].clone()
        value[0, 0, 0, 0, 0] = float("nan")
        return _unchecked(post, mean={W0: value})
    if kind == "inf":
        value = post.std[W0].clone()
        value[0, 0, 0, 0, 0] = float("inf")
        return _unchecked(post, std={W0: value})
    value = post.std[W0].clone()
    value[0, 0, 0, 0, :2] = 0.0 if kind == "zero std" else -1.0
    return _unchecked(post, std={W0: value})


VALUE_CORRUPTIONS = [
    ("nan", r"mean of parameter 'layers.0.weight' contains NaN or Inf"),
    ("inf", r"std of parameter 'layers.0.weight' contains NaN or Inf"),
    ("zero std", r"std of parameter 'layers.0.weight' is <= 0 at 2 weight"),
    ("negative std", r"std of parameter 'layers.0.weight' is <= 0 at 2 weight"),
]


@pytest.mark.parametrize("kind,message", VALUE_CORRUPTIONS, ids=[c[0] for c in VALUE_CORRUPTIONS])
def test_files_with_bad_values_are_rejected(tmp_path, kind, message):
    path = _bad_values(kind).save(tmp_path / "bad.safetensors")  # a correctly hashed file with bad content
    with pytest.raises(PosteriorFileError, match=message) as info:
        Posterior.load(path)
    assert "bad.safetensors" in str(info.value)


def test_parameter_mismatches_with_a_model_or_another_posterior(tmp_path):
    post = Posterior.from_model(_net())
    missing = _unchecked(post)
    del missing.mean[W0], missing.std[W0]
    with pytest.raises(PosteriorFileError, match=r"missing parameters \['layers.0.weight'\]"):
        Posterior.load(missing.save(tmp_path / "missing.safetensors")).to_model(_net())
    extra = _unchecked(post, mean={"head.weight": torch.zeros(2)}, std={"head.weight": torch.ones(2)})
    with pytest.raises(PosteriorFileError, match=r"extra parameters \['head.weight'\]"):
        Posterior.load(extra.save(tmp_path / "extra.safetensors")).to_prior(_net())
    wider = Posterior.from_model(MeshNet(3, 1, 3, channels=5, dilations=(1, 2), bayesian=True))
    with pytest.raises(
        PosteriorFileError,
        match=r"parameter 'layers.0.weight' has shape \(5, 1, 3, 3, 3\), the model's is \(4, 1, 3, 3, 3\)",
    ):
        wider.to_model(_net())
    with pytest.raises(PosteriorFileError, match=r"parameter 'layers.0.weight' has shape \(5, 1, 3, 3, 3\)"):
        consolidate_dwc(post, [wider])
    with pytest.raises(PosteriorFileError, match="does not exist"):
        Posterior.load(tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="has no Bayesian layer"):
        Posterior.from_model(nn.Conv2d(1, 1, 3))
    with pytest.raises(PosteriorFileError, match="mean and std name different parameters"):
        Posterior({"a": torch.zeros(1)}, {"b": torch.ones(1)})


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = Posterior.from_model(_net(), site="old").save(tmp_path / "p.safetensors")
    import monai_continual.utils.tensor_files as module

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        Posterior.from_model(_net(), site="new").save(path)
    assert Posterior.load(path).site == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
