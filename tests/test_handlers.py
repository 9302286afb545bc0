"""Every handler inside an ordinary MONAI SupervisedTrainer that knows nothing of sites."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss

from monai_continual.bayes import bayesianize
from monai_continual.consolidation import DirectoryWeightStore, Posterior, consolidate_dwc
from monai_continual.data import ReplayBuffer, load_multisite_datalist
from monai_continual.handlers import (
    ConsolidationHandler,
    ContinualEvaluationHandler,
    PosteriorExportHandler,
    PriorHandler,
    ReplayBufferHandler,
    WeightTransferHandler,
)
from monai_continual.losses import ELBOLoss
from monai_continual.metrics import ContinualMatrix
from monai_continual.networks import MeshNet
from runner_utils import tiny_sites, transform


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_multisite_datalist(tiny_sites(tmp_path_factory.mktemp("tiny_handlers")))


def _trainer(network, items, handlers, loss=None):
    loader = DataLoader(Dataset(items, transform()), batch_size=2)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-3),
        loss_function=loss or DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=handlers,
    )


def _net():
    return MeshNet(3, 1, 4, channels=4, dilations=(1, 2))


def test_weight_transfer_replay_and_evaluation_in_a_plain_trainer(data, tmp_path):
    store = DirectoryWeightStore(tmp_path / "shared")
    buffer_dir = tmp_path / "alpha_local" / "replay"
    first = _net()
    _trainer(first, data.items("alpha", "training"), [
        WeightTransferHandler(store, "alpha", first),
        ReplayBufferHandler(buffer_dir, "alpha", data.items("alpha", "training"), capacity_per_site=2),
        ContinualEvaluationHandler(first, {s: data.items(s, "test") for s in data.site_names}, transform(), 4,
                                   trained_on="alpha", matrix=tmp_path / "R.json"),
    ]).run()
    published = store.latest()
    assert published.site == "alpha" and published.stage == 0
    assert len(ReplayBuffer.load(buffer_dir)) == 2
    second = _net()
    handler = WeightTransferHandler(store, "beta", second)
    trainer = _trainer(second, data.items("beta", "training"), [handler])
    trainer.run()
    assert handler.loaded == published  # beta started from alpha's weights
    assert store.latest().site == "beta" and store.latest().stage == 1
    matrix = ContinualMatrix.load_json(tmp_path / "R.json")
    assert matrix.num_stages == 1 and matrix.trained_on(0) == ["alpha"] and set(matrix.sites) == set(data.site_names)


def test_prior_and_consolidation_handlers_in_a_plain_trainer(data, tmp_path):
    prior_net = bayesianize(_net(), bound_std=False)
    prior_file = Posterior.from_model(prior_net, site="q0").save(tmp_path / "q0.safetensors")
    files = []
    for site in ("beta", "gamma"):
        net = bayesianize(_net(), bound_std=True)
        items = data.items(site, "training")
        loss = ELBOLoss(DiceCELoss(to_onehot_y=True, softmax=True), net, len(items))
        prior_handler = PriorHandler(prior_file, net, init_posterior=True)
        export = PosteriorExportHandler(net, tmp_path / f"{site}.safetensors", site=site, num_examples=len(items))
        _trainer(net, items, [prior_handler, export], loss=loss).run()
        assert prior_handler.loaded_sha256 == Posterior.load(prior_file).sha256()
        files.append(tmp_path / f"{site}.safetensors")
        assert Posterior.load(files[-1]).site == site
    merged_net = bayesianize(_net())
    consolidate = ConsolidationHandler(merged_net, prior_file, [str(tmp_path / "[bg]*a.safetensors")],
                                       tmp_path / "merged.safetensors")
    _trainer(merged_net, data.items("alpha", "training"), [consolidate]).run()  # consolidates when training starts
    expected = consolidate_dwc(prior_file, files)
    assert consolidate.site_files() == [str(f) for f in files]
    assert torch.equal(
        Posterior.load(tmp_path / "merged.safetensors").mean["layers.0.weight"], expected.mean["layers.0.weight"]
    )
    with pytest.raises(ValueError, match="no site posterior files match"):
        ConsolidationHandler(merged_net, prior_file, [str(tmp_path / "none*.safetensors")]).site_files()
    with pytest.raises(ValueError, match="site_posteriors is empty"):
        ConsolidationHandler(merged_net, prior_file, [])


def test_weight_transfer_refuses_weights_of_another_network(data, tmp_path):
    store = DirectoryWeightStore(tmp_path / "shared")
    store.publish(MeshNet(3, 1, 4, channels=6, dilations=(1,)).state_dict(), "alpha", 0)
    net = _net()
    with pytest.raises(ValueError, match="published by site 'alpha' \\(stage 0\\) do not fit site 'beta'"):
        WeightTransferHandler(store, "beta", net).load_weights()
    with pytest.raises(ValueError, match="unknown ignite event"):
        WeightTransferHandler(store, "beta", net, load_event="whenever")
