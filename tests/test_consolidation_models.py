"""FedAvg of state dicts and the ensemble of site models."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_continual.consolidation import EnsembleModel, weighted_average
from monai_continual.networks import MeshNet


def test_fedavg_weights_by_site_size():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(5.0)
    a.num_batches_tracked.fill_(4)
    merged = weighted_average([a.state_dict(), b.state_dict()], [30, 10])
    torch.testing.assert_close(merged["weight"], torch.full((3,), 2.0))
    assert int(merged["num_batches_tracked"]) == 4
    torch.testing.assert_close(weighted_average([a.state_dict(), b.state_dict()])["weight"], torch.full((3,), 3.0))
    with pytest.raises(ValueError, match=r"state 1, entry 'weight' has shape \(4,\)"):
        weighted_average([a.state_dict(), nn.BatchNorm1d(4).state_dict()])
    with pytest.raises(ValueError, match="2 weights for 1 items"):
        weighted_average([a.state_dict()], [1, 2])
    broken = {k: v.clone() for k, v in a.state_dict().items()}
    broken["weight"][1] = float("nan")
    with pytest.raises(ValueError, match=r"state 1 \(site 'site_b'\), entry 'weight' has non-finite values"):
        weighted_average([a.state_dict(), broken], [3, 1], names=["site_a", "site_b"])
    with pytest.raises(ValueError, match=r"finite and > 0; got \[\"state 0 \(site 'site_a'\): 0.0\"\]"):
        weighted_average([a.state_dict(), b.state_dict()], [0, 1], names=["site_a", "site_b"])


def test_ensemble_is_mean_of_member_probabilities():
    members = [MeshNet(3, 1, 3, channels=4, dilations=(1,)).eval() for _ in range(3)]
    ensemble = EnsembleModel(members).eval()
    x = torch.randn(2, 1, 6, 6, 6)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x), expected)
        log_ensemble = EnsembleModel(members, output="log").eval()
        torch.testing.assert_close(torch.softmax(log_ensemble(x), 1), expected)
        sig = EnsembleModel(members, activation="sigmoid")(x)
        torch.testing.assert_close(sig, torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0))
        windowed = SlidingWindowInferer((4, 4, 4), overlap=0.5)(torch.randn(1, 1, 10, 9, 8), ensemble)
    assert windowed.shape == (1, 3, 10, 9, 8)
    assert len(ensemble.state_dict()) == sum(len(m.state_dict()) for m in members)
    with pytest.raises(ValueError, match="at least one model"):
        EnsembleModel([])
