"""FedProx: ``federated_averaging`` with ``proximal_mu`` adds mu/2 ||w - w_start||^2 to every local step, on the
MONAI runner, nnU-Net's trainer and the federated sites; mu = 0 is FedAvg, unchanged."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from monai_continual.consolidation import DirectoryWeightStore
from monai_continual.federated.payload import stage_from_meta, stage_to_meta
from monai_continual.losses import ProximalLoss, proximal_anchor, proximal_term
from monai_continual.strategies import Stage, build_schedule, make_options
from monai_continual.strategies.stage import NetworkKind
from runner_utils import tiny_runner, tiny_sites


def _sgd_step(mu: float, w: float, w0: float, x: float, y: float, lr: float) -> float:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    anchor = {"weight": torch.full((1, 1), w0)}
    data_loss = nn.MSELoss()
    loss = ProximalLoss(data_loss, model, anchor, mu) if mu else data_loss
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss(model(torch.tensor([[x]])), torch.tensor([[y]])).backward()
    optimizer.step()
    return float(model.weight.detach())


def test_one_sgd_step_is_the_closed_form():
    w, w0, x, y, lr, mu = 0.7, 0.2, 1.5, -0.4, 0.1, 3.0
    grad = 2 * (w * x - y) * x  # of (w x - y)^2
    assert _sgd_step(mu, w, w0, x, y, lr) == pytest.approx(w - lr * (grad + mu * (w - w0)), rel=1e-6)
    assert _sgd_step(0.0, w, w0, x, y, lr) == pytest.approx(w - lr * grad, rel=1e-6)
    model = nn.Linear(2, 3)
    anchor = {k: torch.zeros_like(v) for k, v in proximal_anchor(model).items()}
    expected = 0.5 * mu * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    assert float(proximal_term(model, anchor, mu).detach()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mu", [-0.1, math.nan, math.inf, True, "0.1"])
def test_invalid_mu_is_refused_by_name(mu):
    with pytest.raises(ValueError, match="proximal_mu"):
        make_options("federated_averaging", proximal_mu=mu)
    with pytest.raises(ValueError, match="proximal_mu"):
        Stage(1, sites=("a",), proximal_mu=mu)


def test_the_schedule_carries_mu_to_local_stages_and_into_the_run_identity():
    plain = build_schedule("federated_averaging", ["a", "b"], make_options("federated_averaging"))
    zero = build_schedule("federated_averaging", ["a", "b"], make_options("federated_averaging", proximal_mu=0.0))
    prox = build_schedule("federated_averaging", ["a", "b"], make_options("federated_averaging", proximal_mu=0.5))
    assert [s.to_dict() for s in zero] == [s.to_dict() for s in plain]  # runs made before the option resume
    assert [s.proximal_mu for s in prox if s.is_training] == [0.5] * 4
    assert all(s.proximal_mu == 0 and "proximal_mu" not in s.to_dict() for s in prox if not s.is_training)
    assert [s.to_dict() for s in prox] != [s.to_dict() for s in plain]
    with pytest.raises(ValueError, match="proximal_mu applies to deterministic train stages"):
        Stage(1, sites=("a",), network=NetworkKind.BAYES, proximal_mu=0.5)


def test_the_stage_sent_to_a_site_carries_mu():
    stage = build_schedule("federated_averaging", ["a", "b"], make_options("federated_averaging", proximal_mu=0.5))[0]
    received, _ = stage_from_meta(stage_to_meta(stage, {0: "map"}))
    assert received == stage and received.proximal_mu == 0.5
    meta = stage_to_meta(stage, {0: "map"})
    meta["stage"]["proximal_mu"] = float("nan")  # a site refuses a term it cannot apply
    with pytest.raises(ValueError, match="proximal_mu"):
        stage_from_meta(meta)


def test_monai_runner_mu_zero_is_fedavg_and_a_large_mu_stays_near_the_start(tmp_path):
    sites = tiny_sites(tmp_path / "data")

    def run(name: str, **options):
        sgd = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.05), "batch_size": 1}
        runner = tiny_runner(sites, tmp_path / name, **sgd)  # a site of one training case: two local steps
        result = runner.run("federated_averaging", rounds=1, local_epochs=2, **options)
        store = DirectoryWeightStore(result.directory / "store")
        return result, store

    plain, _ = run("plain")
    zero, far_store = run("zero", proximal_mu=0.0)
    assert [t["published"] for t in zero.transfers] == [t["published"] for t in plain.transfers]
    assert zero.matrix.as_array().tolist() == plain.matrix.as_array().tolist()
    _, near_store = run("near", proximal_mu=10.0)

    def distance(store, number):
        start, local = store.load(store.entry(0)), store.load(store.entry(number))
        return sum(float(((local[k] - start[k]) ** 2).sum()) for k in start if start[k].is_floating_point())

    for number in (1, 2, 3):  # every site's local stage of the round
        assert 0 < distance(near_store, number) < distance(far_store, number)


def test_nnunet_trainer_adds_the_term_in_train_step(monkeypatch):
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from monai_continual.nnunet.proximal_trainer import nnUNetTrainerFedProx
    from monai_continual.nnunet.sites import NnUNetStageExecutor

    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)  # no dataset: only the step runs

    def step(cls, mu: float) -> torch.Tensor:
        trainer = cls.__new__(cls)  # nnU-Net's train_step on a one-weight network, without plans or data
        if cls is nnUNetTrainerFedProx:
            trainer.proximal_mu, trainer._proximal_loss = mu, None
            trainer.proximal_anchor = {"weight": torch.zeros(1, 1)}  # the round's start: 0
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
        trainer.network = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            trainer.network.weight.fill_(0.5)
        trainer.loss = nn.MSELoss()
        trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.1)
        trainer.on_train_start()
        trainer.train_step({"data": torch.ones(1, 1), "target": torch.zeros(1, 1)})
        assert isinstance(trainer.loss, nn.MSELoss)  # validation keeps the data loss
        return trainer.network.weight.detach()

    plain, zero, prox = step(nnUNetTrainer, 0.0), step(nnUNetTrainerFedProx, 0.0), step(nnUNetTrainerFedProx, 2.0)
    assert torch.equal(zero, plain)
    torch.testing.assert_close(prox, plain - 0.1 * 2.0 * 0.5)  # - lr * mu * (w - w0)
    executor = NnUNetStageExecutor.__new__(NnUNetStageExecutor)
    executor.trainer = "nnUNetTrainer"
    stages = build_schedule("federated_averaging", ["a", "b"], make_options("federated_averaging", proximal_mu=0.5))
    assert executor._trainer_for(stages[0]) == "nnUNetTrainerFedProx"
    assert executor._trainer_for(dataclasses.replace(stages[0], proximal_mu=0.0)) == "nnUNetTrainer"


def test_federated_sites_train_with_the_servers_mu(tmp_path, monkeypatch):
    pytest.importorskip("nvflare")
    from pathlib import Path

    from loopback import loopback_run
    from monai_continual.engines import monai_executor

    trained = []

    class Recorded(ProximalLoss):  # what the site's MONAI executor trains with
        def __init__(self, data_loss, model, anchor, mu):
            super().__init__(data_loss, model, anchor, mu)
            trained.append(mu)

    monkeypatch.setattr(monai_executor, "ProximalLoss", Recorded)
    config = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
    overrides = {"channels": 4, "dilations": [1, 2, 1], "epochs": 1, "mc_samples": 2, "device": "cpu", "threads": 1}
    loopback_run(config, tiny_sites(tmp_path / "data"), tmp_path / "fl", "federated_averaging",
                 {"rounds": 1, "proximal_mu": 0.5}, overrides, sites=("alpha", "beta"))
    assert trained == [0.5, 0.5]  # one local stage per site
