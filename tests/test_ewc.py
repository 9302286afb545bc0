"""``ewc``: online elastic weight consolidation. The penalty and the running Fisher are the hand-computed ones; the
Fisher is the mean squared voxel gradient; with lambda = 0 a run publishes fine-tuning's models, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monai_continual.bayes.laplace import parameter_fisher
from monai_continual.consolidation import DirectoryWeightStore
from monai_continual.losses import EWCLoss, ewc_penalty, running_fisher
from monai_continual.strategies import Stage, build_schedule, make_options
from monai_continual.strategies.artifacts import StageArtifacts
from monai_continual.strategies.stage import NetworkKind
from runner_utils import tiny_runner, tiny_sites


def _linear(weight: list[float], bias: float) -> nn.Linear:
    model = nn.Linear(len(weight), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
        model.bias.fill_(bias)
    return model


def test_the_penalty_and_its_step_are_the_hand_computed_ones():
    model = _linear([0.5, -1.0], 0.25)
    anchor = {"weight": torch.tensor([[0.1, -0.5]]), "bias": torch.tensor([1.0])}
    fisher = {"weight": torch.tensor([[2.0, 4.0]]), "bias": torch.tensor([0.5])}
    lam = 3.0
    # sum F (w - w*)^2 = 2 * 0.16 + 4 * 0.25 + 0.5 * 0.5625 = 1.60125; times lambda / 2
    assert float(ewc_penalty(model, anchor, fisher, lam).detach()) == pytest.approx(1.60125 * 1.5, rel=1e-6)
    assert float(ewc_penalty(model, anchor, fisher, 0.0).detach()) == 0.0
    x, y, lr = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]), 0.1
    loss = EWCLoss(nn.MSELoss(), model, anchor, fisher, lam)
    loss(model(x), y).backward()
    torch.optim.SGD(model.parameters(), lr=lr).step()
    residual = 0.5 * 1.0 - 1.0 * 2.0 + 0.25  # w x + b - y = -1.25; d/dw (.)^2 = 2 * residual * x
    expected_w = [0.5 - lr * (2 * residual * 1.0 + lam * 2.0 * 0.4),
                  -1.0 - lr * (2 * residual * 2.0 + lam * 4.0 * -0.5)]
    expected_b = 0.25 - lr * (2 * residual + lam * 0.5 * -0.75)
    torch.testing.assert_close(model.weight.detach(), torch.tensor([expected_w]))
    torch.testing.assert_close(model.bias.detach(), torch.tensor([expected_b]))


def test_the_running_fisher_decays_the_previous_one():
    previous, own = {"w": torch.tensor([2.0, 8.0])}, {"w": torch.tensor([1.0, 0.0])}
    torch.testing.assert_close(running_fisher(previous, own, 0.5)["w"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(running_fisher(None, own, 0.5)["w"], own["w"])
    with pytest.raises(ValueError, match="gamma"):
        running_fisher(previous, own, 0.0)
    with pytest.raises(KeyError, match="other parameters"):
        running_fisher({"v": torch.ones(2)}, own, 1.0)


def test_the_fisher_is_the_mean_squared_voxel_gradient_of_the_cross_entropy():
    # a 1x1 convolution of one channel into two classes; a one-voxel batch makes the random-sign estimate exact
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.3, -0.7]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.1, 0.2]))
    voxels = [(1.5, 0), (-2.0, 1)]
    batches = [(torch.full((1, 1, 1, 1), x), torch.full((1, 1, 1), y)) for x, y in voxels]
    fisher = parameter_fisher(conv, batches, seed=3)
    w_sq, b_sq = torch.zeros(2), torch.zeros(2)
    for x, y in voxels:  # d CE / d logit_c = p_c - [c == y]; d logit_c / d w_c = x
        logits = [0.3 * x + 0.1, -0.7 * x + 0.2]
        z = math.exp(logits[0]) + math.exp(logits[1])
        residual = torch.tensor([math.exp(v) / z - (c == y) for c, v in enumerate(logits)])
        w_sq += (residual * x) ** 2
        b_sq += residual ** 2
    torch.testing.assert_close(fisher["weight"].flatten(), w_sq / 2)
    torch.testing.assert_close(fisher["bias"], b_sq / 2)


@pytest.mark.parametrize("options", [{"ewc_lambda": -1.0}, {"ewc_lambda": math.nan}, {"gamma": 0.0},
                                     {"gamma": 1.5}, {"gamma": True}])
def test_invalid_options_are_refused_by_name(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        make_options("ewc", **options)


def test_the_schedule_is_fine_tuning_with_the_fisher_of_the_start():
    ewc = build_schedule("ewc", ["a", "b", "c"], make_options("ewc", ewc_lambda=2.0, gamma=0.9, order=["b", "a", "c"]))
    tuning = build_schedule("fine_tuning", ["a", "b", "c"], make_options("fine_tuning", order=["b", "a", "c"]))
    assert [(s.sites, s.start) for s in ewc] == [(s.sites, s.start) for s in tuning]
    assert [(s.fisher, s.ewc_lambda, s.ewc_gamma) for s in ewc] == [(None, 0.0, 0.9), (1, 2.0, 0.9), (2, 2.0, 0.9)]
    assert all(set(e.to_dict()) - set(t.to_dict()) <= {"fisher", "ewc_lambda", "ewc_gamma"}
               for e, t in zip(ewc, tuning))
    assert "ewc_lambda" not in ewc[0].to_dict() and "fisher" not in ewc[0].to_dict()
    with pytest.raises(ValueError, match="ewc_lambda needs the stage of the Fisher"):
        Stage(2, sites=("a",), start=1, ewc_lambda=1.0)
    with pytest.raises(ValueError, match="fisher applies to deterministic train stages"):
        Stage(2, sites=("a",), start=1, network=NetworkKind.BAYES, fisher=1)
    with pytest.raises(ValueError, match="ewc_gamma must be"):
        Stage(2, sites=("a",), start=1, ewc_gamma=0.0)


def test_monai_runner_lambda_zero_is_fine_tuning_and_a_large_lambda_stays_near_the_start(tmp_path):
    sites = tiny_sites(tmp_path / "data")

    def run(name: str, strategy: str, **options):
        sgd = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.05), "batch_size": 1}
        result = tiny_runner(sites, tmp_path / name, **sgd).run(strategy, epochs=2, **options)
        return result, StageArtifacts(result.directory, runner_schedule)

    runner_schedule = build_schedule("ewc", ["alpha", "beta", "gamma"], make_options("ewc"))
    tuning, tuning_files = run("tuning", "fine_tuning")
    zero, zero_files = run("zero", "ewc", ewc_lambda=0.0)
    assert [t["published"] for t in zero.transfers] == [t["published"] for t in tuning.transfers]
    assert zero.matrix.as_array().tolist() == tuning.matrix.as_array().tolist()
    for transfer in zero.transfers[2:]:  # every stage after the first loaded its start's running Fisher
        assert transfer["loaded"]["fisher"] == zero_files.fisher_sha(transfer["stage"] - 1)
    _, near_files = run("near", "ewc", ewc_lambda=50.0)  # lr * lambda * max F stays well below 2: no oscillation

    def distances(artifacts: StageArtifacts, number: int) -> tuple[float, float]:
        """sum (w - w*)^2 and the penalty's sum F (w - w*)^2, F the running Fisher that stage trained with"""
        fisher, start, trained = near_files.fisher(number - 1), artifacts.weights(number - 1), artifacts.weights(number)
        squares = {k: (trained[k] - start[k]) ** 2 for k in fisher}
        weighted = sum(float((fisher[k] * v).sum()) for k, v in squares.items())
        return sum(float(v.sum()) for v in squares.values()), weighted

    for number in (2, 3):
        far, near = distances(tuning_files, number), distances(near_files, number)
        print(f"stage {number}: sum (w - w*)^2 fine-tuning {far[0]:.3g}, ewc {near[0]:.3g}; "
              f"sum F (w - w*)^2 fine-tuning {far[1]:.3g}, ewc {near[1]:.3g}")
        assert 0 < near[0] < far[0] and 0 < near[1] < far[1] / 3
    fisher = near_files.fisher(1)
    assert set(fisher) == {n for n, _ in tiny_runner(sites, tmp_path / "x").settings.plain_network().named_parameters()}
    assert all(bool((f >= 0).all()) for f in fisher.values()) and any(bool((f > 0).any()) for f in fisher.values())
    assert DirectoryWeightStore(near_files.layout.store).entry(3) is not None


def test_a_stage_whose_start_published_another_fisher_trains_again(tmp_path):
    from monai_continual.strategies.base_executor import BaseStageExecutor

    stages = build_schedule("ewc", ["a", "b"], make_options("ewc"))
    executor = BaseStageExecutor(tmp_path, stages)
    executor.store.publish({"w": torch.zeros(2)}, "init", 0)
    executor.store.publish({"w": torch.ones(2)}, "a", 1)
    executor.artifacts.save_fisher(1, {"w": torch.ones(2)})
    executor.publish(stages[1], {"w": torch.full((2,), 2.0)}, "b", 3, {})
    assert executor.published(stages[1]).loaded["fisher"] == executor.artifacts.fisher_sha(1)
    executor.artifacts.save_fisher(1, {"w": torch.full((2,), 3.0)})  # its inputs changed: the receipt no longer fits
    assert executor.published(stages[1]) is None


def test_nnunet_trainer_adds_the_penalty_in_train_step_and_estimates_its_fisher(monkeypatch):
    pytest.importorskip("nnunetv2")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from monai_continual.nnunet.ewc_trainer import nnUNetTrainerEWC
    from monai_continual.nnunet.sites import NnUNetStageExecutor

    monkeypatch.setattr(nnUNetTrainer, "on_train_start", lambda self: None)  # no dataset: only the hooks run
    monkeypatch.setattr(nnUNetTrainer, "on_train_end", lambda self: None)
    batches = [(torch.tensor([[1.5]]), torch.tensor([[0]])), (torch.tensor([[-2.0]]), torch.tensor([[1]]))]

    def trained(cls, lam: float) -> nnUNetTrainer:
        trainer = cls.__new__(cls)  # nnU-Net's train_step on a one-input, two-class network, without plans or data
        if cls is nnUNetTrainerEWC:
            trainer.ewc_lambda, trainer.estimate_fisher = lam, True
            trainer.ewc_anchor = {"weight": torch.zeros(2, 1), "bias": torch.zeros(2)}  # w* = 0
            trainer.ewc_fisher = {"weight": torch.tensor([[2.0], [4.0]]), "bias": torch.zeros(2)}
        trainer.device, trainer.grad_scaler = torch.device("cpu"), None
        trainer.network = nn.Linear(1, 2)
        with torch.no_grad():
            trainer.network.weight.copy_(torch.tensor([[0.5], [-0.25]]))
            trainer.network.bias.zero_()
        trainer.loss = nn.MSELoss()
        trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.1)
        trainer.on_train_start()
        trainer.train_step({"data": torch.ones(1, 1), "target": torch.zeros(1, 2)})
        assert isinstance(trainer.loss, nn.MSELoss)  # validation keeps the data loss
        trainer.dataloader_train = iter({"data": x, "target": y} for x, y in batches)
        trainer.do_split = lambda: (["case0", "case1"], [])
        trainer.on_train_end()
        return trainer

    plain, zero, ewc = trained(nnUNetTrainer, 0.0), trained(nnUNetTrainerEWC, 0.0), trained(nnUNetTrainerEWC, 3.0)
    assert torch.equal(zero.network.weight, plain.network.weight)
    step = 0.1 * 3.0 * torch.tensor([[2.0 * 0.5], [4.0 * -0.25]])  # lr * lambda * F * (w - w*)
    torch.testing.assert_close(ewc.network.weight.detach(), plain.network.weight.detach() - step)
    expected = parameter_fisher(ewc.network, batches)  # both training cases, at the trained weights
    assert set(ewc.fisher) == {"weight", "bias"}
    for name in expected:
        torch.testing.assert_close(ewc.fisher[name], expected[name])
    executor = NnUNetStageExecutor.__new__(NnUNetStageExecutor)
    executor.trainer = "nnUNetTrainer"
    stages = build_schedule("ewc", ["a", "b"], make_options("ewc"))
    assert [executor._trainer_for(s) for s in stages] == ["nnUNetTrainerEWC"] * 2
    executor.trainer = "nnUNetTrainerReplay"  # a trainer that would lose the penalty without a word
    with pytest.raises(ValueError, match="ewc needs nnUNetTrainerEWC"):
        executor._trainer_for(stages[1])


def test_federated_sites_publish_the_in_process_models_and_running_fishers(tmp_path):
    pytest.importorskip("nvflare")
    import json
    from pathlib import Path

    from loopback import loopback_run
    from monai_continual.federated.config import parse_config

    config = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
    overrides = {"channels": 4, "dilations": [1, 2, 1], "epochs": 1, "mc_samples": 2, "device": "cpu", "threads": 1,
                 "learning_rate": 0.03}
    data = tiny_sites(tmp_path / "data")
    options = {"ewc_lambda": 10.0, "gamma": 0.5}
    loopback_run(config, data, tmp_path / "fl", "ewc", options, overrides, sites=("alpha", "beta"))
    runner = parse_config(config, {**overrides, "datalist": str(data), "output_dir": str(tmp_path / "local")})
    local = runner.get_parsed_content("runner").run("ewc", skip=["gamma"], **options)

    def records(run_dir: Path) -> list:
        stages = json.loads((run_dir / "state.json").read_text())["stages"]
        return [(r["number"], r["published"], r["loaded"], r["details"].get("fisher")) for r in stages[1:]]

    federated = records(tmp_path / "fl" / "ewc")
    assert federated == records(local.directory)  # weights and running Fishers, stage by stage, by content hash
    assert federated[1][2]["fisher"] == federated[0][3] is not None  # the second site trained with the first's


@pytest.mark.parametrize("fisher,reason", [
    ({}, "no entries"),
    ({"w": torch.tensor([1.0, -0.5])}, "not non-negative"),
    ({"w": torch.tensor([1.0, math.nan])}, "non-finite"),
    ({"w": torch.ones(3)}, "shape"),
    ({"v": torch.ones(2)}, "extra"),
])
def test_a_received_fisher_is_checked_before_it_is_stored(fisher, reason):
    pytest.importorskip("nvflare")
    from monai_continual.federated.boundary import BoundaryPolicy, check_fisher
    from monai_continual.federated.payload import PayloadError

    weights = {"w": torch.zeros(2), "running_mean": torch.zeros(4)}
    check_fisher({"w": torch.tensor([0.0, 2.0])}, weights, "site 'a', stage 2", BoundaryPolicy())
    with pytest.raises(PayloadError, match=reason):
        check_fisher(fisher, weights, "site 'a', stage 2", BoundaryPolicy())


def test_every_trainer_names_its_constructor_arguments():
    pytest.importorskip("nnunetv2")
    import inspect

    from monai_continual.nnunet.trainers import TRAINERS

    # nnU-Net records every named constructor argument from locals() (to rebuild the trainer): *args fails there
    for name, cls in TRAINERS.items():
        kinds = {p.kind for p in inspect.signature(cls.__init__).parameters.values()}
        assert not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}, name
