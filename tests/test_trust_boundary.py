"""The federated trust boundary, item by item: each attack first shown to work without the defence, then refused or
bounded with it. The server's executor is driven through a scripted transport, so every payload is exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare")

from monai_continual.consolidation import DirectoryWeightStore, Posterior, consolidate_dwc  # noqa: E402
from monai_continual.consolidation.averaging import weighted_average  # noqa: E402
from monai_continual.consolidation.robust import robust_average, update_norm  # noqa: E402
from monai_continual.consolidation.screening import posterior_shift  # noqa: E402
from monai_continual.federated import FederatedRun, PayloadError, SiteWorker  # noqa: E402
from monai_continual.federated.boundary import BoundaryPolicy, check_count, check_scores  # noqa: E402
from monai_continual.federated.config import parse_config  # noqa: E402
from monai_continual.federated.overrides import (  # noqa: E402
    MONAI_SITE_KEYS,
    OverrideError,
    check_network_def,
    check_overrides,
    parse_overrides,
)
from monai_continual.federated.payload import model_to_params, params_to_weights, split_params  # noqa: E402
from monai_continual.federated.server_executor import FederatedStageExecutor  # noqa: E402
from monai_continual.strategies import RunState, build_schedule, make_options, run_stages  # noqa: E402
from monai_continual.utils.weights import normalized_weights  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
RUN_ID = "ab" * 32


# ------------------------------------------------------------------------------------------ 1. overrides are data

def test_an_override_that_is_code_runs_without_the_check_and_is_refused_with_it():
    attack = "$__import__('os').getpid()"
    # the attack: a bundle config evaluates the override as Python at the site
    assert parse_config(CONFIG, {"epochs": attack}).get_parsed_content("epochs") == os.getpid()
    # the defence: the site's --set parser refuses it before any config is read, naming the key
    with pytest.raises(OverrideError, match="'epochs'.*starts with"):
        parse_overrides([f"epochs={json.dumps(attack)}"], MONAI_SITE_KEYS)
    for value in ("@network_def", "%configs/train.json#network", ["$1", 2]):
        with pytest.raises(OverrideError, match="'channels'"):
            check_overrides({"channels": value}, MONAI_SITE_KEYS)


def test_overrides_outside_the_allow_list_or_not_json_are_refused(tmp_path):
    with pytest.raises(OverrideError, match="'transforms' may not be set.*allowed keys"):
        parse_overrides(['transforms={"_target_": "torch.nn.Identity"}'], MONAI_SITE_KEYS)
    with pytest.raises(OverrideError, match="not JSON"):
        parse_overrides(["epochs=four"], MONAI_SITE_KEYS)
    with pytest.raises(OverrideError, match="nested"):
        check_overrides({"dilations": [[1, 2]]}, MONAI_SITE_KEYS)
    assert parse_overrides(["epochs=4", 'device="cpu"', "dilations=[1,2,1]"], MONAI_SITE_KEYS) == \
        {"epochs": 4, "device": "cpu", "dilations": [1, 2, 1]}
    from runner_utils import tiny_sites

    datalist = tiny_sites(tmp_path / "data")
    with pytest.raises(OverrideError, match="'seed'"):  # the coordinator is refused before any process starts
        FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "out", overrides={"seed": "$0"})


UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes", "channels": [4, 8],
        "strides": [2], "num_res_units": 0}


def test_a_forwarded_network_that_is_code_runs_without_the_check_and_is_refused_with_it():
    pid = os.getpid()
    # the attacks: a site's bundle parser calls any _target_, evaluates expressions in the arguments and _requires_
    attacks = {
        "_target_": ({"_target_": "os.getpid"}, "network"),
        "spatial_dims": ({**UNET, "spatial_dims": "$__import__('os').getpid()"}, "network_def#spatial_dims"),
        "_requires_": ({**UNET, "_requires_": "$__import__('os').getpid()"}, "network_def#_requires_"),
    }
    for key, (definition, evaluated) in attacks.items():
        assert parse_config(CONFIG, {"network_def": definition}).get_parsed_content(evaluated) == pid
        # the defence: refused before any config is read, naming the key
        with pytest.raises(OverrideError, match=f"'network_def#{key}'"):
            check_overrides({"network_def": definition}, MONAI_SITE_KEYS)
    # a bundle class as the "network": a ConfigParser at the site would evaluate whatever config it is given
    parser = parse_config(CONFIG, {"network_def": {"_target_": "monai.bundle.ConfigParser",
                                                   "config": {"x": "$__import__('os').getpid()"}}})
    assert parser.get_parsed_content("network").get_parsed_content("x") == pid
    with pytest.raises(OverrideError, match="'network_def#_target_'.*'monai.bundle.ConfigParser' is not a class"):
        check_overrides({"network_def": {"_target_": "monai.bundle.ConfigParser"}}, MONAI_SITE_KEYS)


def test_a_forwarded_network_names_a_class_of_two_packages_with_plain_arguments():
    checked = check_network_def(UNET)
    assert checked == {**UNET, "_target_": "monai.networks.nets.UNet"} and checked["out_channels"] == "@num_classes"
    assert check_network_def({"_target_": "monai_continual.networks.MeshNet"}) == \
        {"_target_": "monai_continual.networks.MeshNet"}
    for target in ("os.system", "builtins.eval", "torch.nn.Identity", "monai.networks.nets.unet.UNet",
                   "monai.networks.nets.unet", "monai.networks.nets._Private", "Compose", 3):
        with pytest.raises(OverrideError, match="'network_def#_target_'"):
            check_network_def({**UNET, "_target_": target})
    refused = {"channels": ("$[4, 8]", "starts with"), "strides": ({"a": 2}, "nested"),
               "act": (["prelu", {}], "nested"), "dropout": ("@dataset_shape", "not a reference"),
               "bias": ("@network_def", "not a reference"), "dilations": ([1, 2], "no argument 'dilations'"),
               "_mode_": ("callable", "special keys")}
    for key, (value, why) in refused.items():
        with pytest.raises(OverrideError, match=f"'network_def#{key}'.*{why}"):
            check_network_def({**UNET, key: value})
    with pytest.raises(OverrideError, match="'network_def': expected the network's definition"):
        check_network_def("UNet")
    # at the site: the network comes entry by entry (NVFlare passes no braces); a special key is refused there
    site = [f"network_def#{k}={json.dumps(v)}" for k, v in UNET.items()]
    assert parse_overrides(site, MONAI_SITE_KEYS) == {"network_def": checked}
    with pytest.raises(OverrideError, match="'network_def#_requires_'.*special keys"):
        parse_overrides([*site, 'network_def#_requires_="@seed_everything"'], MONAI_SITE_KEYS)
    # the site's config: the forwarded definition, the site's own _requires_ (threads, seeding), its references
    parser = parse_config(CONFIG, {"num_classes": 3, "network_def": checked})
    assert parser["network_def#_requires_"] == ["@set_threads", "@seed_everything"]
    network = parser.get_parsed_content("network")
    assert type(network).__name__ == "UNet" and network.model[-1].conv.out_channels == 3  # "@num_classes" resolved


def test_the_launcher_drops_special_keys_and_refuses_a_network_that_is_not_data(tmp_path):
    from runner_utils import tiny_sites

    datalist = tiny_sites(tmp_path / "data")
    run = FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "out", export=str(tmp_path / "job"),
                       overrides={"network_def": {**UNET, "_requires_": "$print('launcher')", "_disabled_": False}})
    assert run.overrides["network_def"] == check_network_def(UNET)
    run.run()  # the job folder: what a site's script is started with, each entry of the network a --set of its own
    client = (tmp_path / "job" / "monai_continual_cyclic_weight_transfer" / "app_alpha" / "config").glob("*client*")
    args = json.loads(next(client).read_text())["executors"][0]["executor"]["args"]["task_script_args"].split()
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert parse_overrides(sets, MONAI_SITE_KEYS)["network_def"] == check_network_def(UNET)
    assert not any("_requires_" in a or "_disabled_" in a for a in sets)
    for network in (torch.nn.Identity(), {**UNET, "_target_": "os.system"}):  # built by the launcher, or no network
        with pytest.raises(OverrideError, match="'network_def"):
            FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "o", overrides={"network_def": network})


# ------------------------------------------------------------------------------------------ a scripted transport

def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4,), float(value)), "b": torch.zeros(2), "n": torch.tensor(3)}


class ScriptedSites:
    """Answers the server's tasks like honest sites (start + a step per site); ``tamper`` corrupts one answer."""

    def __init__(self, steps: dict[str, float], tamper=None) -> None:
        self.steps, self.tamper, self.calls = steps, tamper, []

    def __call__(self, task, site, params, meta):
        self.calls.append((task, site, (meta.get("stage") or {}).get("number")))
        if task == "initialize":
            weights = _state(0.0)
            return (
                model_to_params("published", weights),
                {"published": DirectoryWeightStore.content_sha256(weights, "init", 0)},
                {},
            )
        if task == "evaluate":
            return {}, {}, {"scores": [0.5, 0.7]}
        start = params_to_weights(split_params(params)["start"])
        number = meta["stage"]["number"]
        trained = {k: (v + self.steps[site] if v.is_floating_point() else v + 1) for k, v in start.items()}
        meta_out = {
            "published": DirectoryWeightStore.content_sha256(trained, site, number),
            "num_examples": 5,
            "details": {},
        }
        answer = [model_to_params("published", trained), meta_out, {}]
        if self.tamper is not None:
            self.tamper(site, number, answer)
        return tuple(answer)


def _fedavg(tmp_path, send, policy=None, sites=("a", "b", "c"), min_clients=1, rounds=1):
    stages = build_schedule(
        "federated_averaging", list(sites), make_options("federated_averaging", rounds=rounds, local_epochs=1)
    )
    executor = FederatedStageExecutor(tmp_path / "server", stages, send, min_clients, run_id=RUN_ID, policy=policy)
    state = run_stages(
        stages, executor, RunState.open(tmp_path / "server", "federated_averaging", {"x": 1}), list(sites), log=None
    )
    return stages, executor, state


def _average(tmp_path, number: int) -> dict[str, torch.Tensor]:
    store = DirectoryWeightStore(tmp_path / "server" / "store")
    return store.load(store.entry(number))


# ------------------------------------------------------------------------------------------ 2. check, then store

def _wrong_hash(site, number, answer):
    if site == "b":
        answer[1]["published"] = "0" * 64


def test_a_model_with_a_wrong_hash_leaves_no_trace_a_resubmit_could_pick_up(tmp_path):
    stages = build_schedule("cyclic_weight_transfer", ["a", "b"], make_options("cyclic_weight_transfer", cycles=1))
    sites = ScriptedSites({"a": 0.1, "b": 0.2}, _wrong_hash)
    executor = FederatedStageExecutor(tmp_path / "server", stages, sites, run_id=RUN_ID)
    executor.initialize(stages[0].network)
    executor.train(stages[0])
    output = executor.train(stages[1])  # b's answer: refused, nothing of it stored; the visit publishes its start
    assert output.details["refused"] and "does not match the hash" in output.details["boundary"][0]["reason"]
    store = DirectoryWeightStore(tmp_path / "server" / "store")
    sent = params_to_weights(
        split_params(
            ScriptedSites({"a": 0.1, "b": 0.2})(
                "train", "b", model_to_params("start", store.load(store.entry(1))), {"stage": {"number": 2}}
            )[0]
        )["published"]
    )
    assert all(not torch.equal(store.load(e)["w"], sent["w"]) for e in store.entries())
    assert store.load(store.entry(2))["w"].equal(store.load(store.entry(1))["w"])
    # the attack without the check: an entry stored under the stage's number is what a resumed run returns unasked
    other = tmp_path / "old"
    DirectoryWeightStore(other / "store").publish(sent, "b", 2)
    asked = ScriptedSites({"a": 0.1, "b": 0.2})
    assert FederatedStageExecutor(other, stages, asked, run_id=RUN_ID).train(stages[1]).published
    assert asked.calls == []


@pytest.mark.parametrize("breaker,message", [
    (lambda t: t.__setitem__("published|weights/w", np.full(4, np.nan, np.float32)), "non-finite"),
    (lambda t: t.__setitem__("published|weights/extra", np.zeros(2, np.float32)), "extra"),
    (lambda t: t.__setitem__("published|weights/w", np.zeros(5, np.float32)), "shape"),
    (lambda t: t.__setitem__("published|weights/w", np.zeros(4, np.float64)), "float64"),
    (lambda t: t.__setitem__("published|weights/w", np.full(4, 1e30, np.float32)), "magnitude"),
])
def test_models_that_do_not_fit_their_start_are_refused_before_anything_is_stored(tmp_path, breaker, message):
    def tamper(site, number, answer):
        if site == "b":
            breaker(answer[0])
            tensors = params_to_weights(split_params(answer[0])["published"])
            answer[1]["published"] = DirectoryWeightStore.content_sha256(tensors, site, number)  # a consistent lie
    stages, executor, state = _fedavg(tmp_path, ScriptedSites({"a": 0.1, "b": 0.2, "c": 0.3}, tamper))
    event = state.records[2].details["boundary"][0]
    assert event["site"] == "b" and event["model"] == "refused" and message in event["reason"]
    assert state.records[4].details["inputs_used"] == [1, 3]  # the average goes on without it
    torch.testing.assert_close(_average(tmp_path, 4)["w"], torch.full((4,), 0.2))


def test_a_model_above_the_size_cap_is_refused(tmp_path):
    def bloated(site, number, answer):
        if site == "b":
            answer[0]["published|weights/padding"] = np.zeros(1000, np.float32)
    stages, executor, state = _fedavg(tmp_path, ScriptedSites({"a": 0.1, "b": 0.2, "c": 0.3}, bloated),
                                      BoundaryPolicy(max_model_bytes=64))
    assert "4032 bytes, above max_model_bytes=64" in state.records[2].details["boundary"][0]["reason"]
    assert not state.records[1].details["boundary"] and not state.records[3].details["boundary"]


# ------------------------------------------------------------------------------------------ 3. stages bound to the run

class _Executor:
    def __init__(self, stages, run_dir):
        self.run_dir = run_dir
        from monai_continual.strategies.artifacts import StageArtifacts

        self.artifacts = StageArtifacts(run_dir, stages)

    def evaluate(self, stage, site):
        return [0.5]


def test_a_site_keeps_every_run_apart_and_refuses_a_task_without_a_valid_run(tmp_path):
    made = []
    worker = SiteWorker(
        lambda stages, run_dir: made.append(run_dir) or _Executor(stages, run_dir), "a", tmp_path / "site"
    )
    meta = {"task": "evaluate",
            "stage": {"number": 1, "action": "train", "sites": ["a"], "network": "map", "inputs": []},
            "kinds": {}, "roles": {}}
    worker.handle("evaluate", {**meta, "run": "1" * 64}, {})
    worker.handle("evaluate", {**meta, "run": "2" * 64}, {})
    assert made == [tmp_path / "site" / "runs" / ("1" * 16), tmp_path / "site" / "runs" / ("2" * 16)]
    for run in (None, "../../x", "1" * 63, "G" * 64):
        with pytest.raises(PayloadError, match="no valid run identity|looks like a file path"):
            worker.handle("evaluate", {**meta, "run": run}, {})


def test_a_stage_published_from_other_inputs_is_trained_again(tmp_path):
    """The attack: the executor returned any stage output found under the stage's number, without training."""
    from runner_utils import tiny_runner, tiny_sites

    datalist = tiny_sites(tmp_path / "data")
    runner = tiny_runner(datalist, tmp_path / "runner")
    stages = build_schedule("fine_tuning", ["alpha", "beta"], make_options("fine_tuning"), 1)
    executor = runner.executor(tmp_path / "site", stages)
    executor.initialize(stages[0].network)
    first = executor.train(stages[0])
    assert executor.train(stages[0]).published == first.published  # same inputs: recognised as done
    store = DirectoryWeightStore(tmp_path / "site" / "store")
    store.publish(
        {k: v + 0.01 if v.is_floating_point() else v for k, v in store.load(store.entry(0)).items()}, "init", 0
    )
    again = executor.train(stages[0])  # another start under the same number: trained from it, not returned stale
    assert again.loaded["start"] != first.loaded["start"] and again.published != first.published


# ------------------------------------------------------------------------------------------ 4. resume keeps counts

def test_a_resumed_stage_keeps_its_example_count(tmp_path):
    stages = build_schedule(
        "federated_averaging", ["a", "b"], make_options("federated_averaging", rounds=1, local_epochs=1)
    )
    sites = ScriptedSites({"a": 0.1, "b": 0.2})
    executor = FederatedStageExecutor(tmp_path / "server", stages, sites, run_id=RUN_ID)
    executor.initialize(stages[0].network)
    assert executor.train(stages[0]).num_examples == 5
    resumed = ScriptedSites({"a": 0.1, "b": 0.2})  # the server restarted after publishing, before saving its state
    output = FederatedStageExecutor(tmp_path / "server", stages, resumed, run_id=RUN_ID).train(stages[0])
    assert resumed.calls == [] and output.num_examples == 5


# ------------------------------------------------------------------------------------------ 5. bounded influence

def test_reported_counts_set_the_weight_only_when_trusted_and_only_as_finite_positive_integers(tmp_path):
    def huge(site, number, answer):
        if site == "c":
            answer[1]["num_examples"] = 10**9
    steps = {"a": 0.1, "b": 0.2, "c": 0.3}
    # the attack: trusting reported counts, 10^9 examples return that site's model
    _fedavg(tmp_path / "trusted", ScriptedSites(steps, huge), BoundaryPolicy.off())
    torch.testing.assert_close(_average(tmp_path / "trusted", 4)["w"], torch.full((4,), 0.3), atol=1e-6, rtol=0)
    # the defence: equal weights by default, or the reported count capped, or the sizes the job declares
    _fedavg(tmp_path / "equal", ScriptedSites(steps, huge))
    torch.testing.assert_close(_average(tmp_path / "equal", 4)["w"], torch.full((4,), 0.2))
    _fedavg(tmp_path / "capped", ScriptedSites(steps, huge), BoundaryPolicy(weighting="reported", max_examples=5))
    torch.testing.assert_close(_average(tmp_path / "capped", 4)["w"], torch.full((4,), 0.2))
    _fedavg(tmp_path / "declared", ScriptedSites(steps, huge),
            BoundaryPolicy(weighting="declared", declared_sizes={"a": 2, "b": 1, "c": 1}))
    torch.testing.assert_close(_average(tmp_path / "declared", 4)["w"], torch.full((4,), (0.2 + 0.2 + 0.3) / 4))
    for bad in (-7, 0, 2.5, float("nan"), float("inf"), True, "5", None):
        with pytest.raises(PayloadError, match="finite integer > 0"):
            check_count(bad, "site c")
    assert normalized_weights([1e308, 1e308, 1.0], 3)[:2] == [0.5, 0.5]  # no overflow to an all-zero model


def test_update_norm_bound_and_robust_aggregation_by_hand():
    reference = {"w": torch.zeros(2), "n": torch.tensor(0)}
    states = [{"w": torch.tensor([3.0, 4.0]), "n": torch.tensor(5)},  # norm 5
              {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(7)},  # norm 1
              {"w": torch.tensor([600.0, 800.0]), "n": torch.tensor(10**9)}]  # norm 1000
    merged, report = robust_average(states, reference, names=["a", "b", "c"], norm_bound=2.0)
    assert report.bound == pytest.approx(10.0) and report.clipped == {"c": pytest.approx(0.01)}
    torch.testing.assert_close(
        merged["w"], (torch.tensor([3.0, 4.0]) + torch.tensor([0.0, 1.0]) + torch.tensor([6.0, 8.0])) / 3
    )
    assert int(merged["n"]) == 7  # integer buffers: the lower median, never the first (or a hostile) site's
    merged, _ = robust_average(states, reference, method="median")
    torch.testing.assert_close(merged["w"], torch.tensor([3.0, 4.0]))
    five = [{"w": torch.tensor([float(v)])} for v in (1, 2, 3, 4, 100)]
    merged, report = robust_average(five, {"w": torch.zeros(1)}, method="trimmed_mean", trim_fraction=0.2)
    assert report.trimmed == 1 and float(merged["w"]) == pytest.approx(3.0)
    plain = weighted_average(states, [1, 2, 3])
    merged, _ = robust_average(states, reference, [1, 2, 3])  # nothing on: FedAvg, to float precision
    torch.testing.assert_close(merged["w"], plain["w"])
    assert update_norm(states[0], reference) == pytest.approx(5.0)


def test_an_update_against_the_consensus_is_left_out():
    reference = {"w": torch.zeros(3)}
    honest = [{"w": torch.tensor([1.0, 1.0, 0.1])}, {"w": torch.tensor([1.2, 0.9, 0.0])}]
    hostile = {"w": torch.tensor([-1.0, -1.0, 0.0])}
    merged, report = robust_average([*honest, hostile], reference, names=["a", "b", "c"], min_cosine=0.2)
    assert set(report.left_out) == {"c"} and report.left_out["c"] < 0 and report.cosines["a"] > 0.9
    torch.testing.assert_close(merged["w"], torch.tensor([1.1, 0.95, 0.05]))


def _posterior(mean, std, **meta):
    return Posterior(
        {"w": torch.tensor(mean)}, {"w": torch.tensor(std)}, {"bn": torch.tensor([float(meta.pop("bn", 0.0))])}, meta
    )


def test_a_posterior_shifted_far_from_its_prior_is_measured_and_left_out_of_dwc(tmp_path):
    prior = _posterior([0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], num_examples=1)
    honest = _posterior([0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5], num_examples=4)
    hostile = _posterior([10.0, 10.0, 10.0, 10.0], [0.5, 0.5, 0.5, 0.5], num_examples=4)
    shift = posterior_shift(prior, hostile, k=5.0)
    assert (
        shift.fraction == 1.0
        and shift.max_shift == pytest.approx(10.0)
        and shift.max_precision_ratio == pytest.approx(4.0)
    )
    assert posterior_shift(prior, honest, k=5.0).fraction == 0.0
    # the attack: consolidated with the honest site, the mean lands where no site's data put it
    attacked = consolidate_dwc(prior, [honest, hostile])
    assert float(attacked.mean["w"][0]) == pytest.approx((0.1 * 4 + 10 * 4) / (4 + 4 - 1))
    # the defence on the server: the screened posterior never reaches the consolidation (see test_hostile_sites)
    # and deterministic values are weighted by the server's weights, not the sites' own num_examples claims
    heavy = _posterior([0.1] * 4, [0.5] * 4, num_examples=10**9, bn=100.0)
    merged = consolidate_dwc(prior, [honest, heavy], site_weights=[1, 1])
    assert float(merged.deterministic["bn"]) == pytest.approx(50.0)
    with pytest.raises(
        ValueError, match="claims a precision above 10000"
    ):  # the default bound: std 100x below the prior's
        consolidate_dwc(prior, [honest, _posterior([0.1] * 4, [0.001] * 4, num_examples=4)])


def test_scores_are_refused_unless_finite_in_range_and_one_per_declared_case(tmp_path):
    for bad in ([float("nan")], [float("inf")], [1e9], [-0.1], [10**400], "0.5", [True], None):
        with pytest.raises(PayloadError):
            check_scores(bad, None, "site c")
    assert check_scores([], None, "site c") == []  # a site without test cases
    with pytest.raises(PayloadError, match="0 scores sent, but the site has 2"):
        check_scores([], 2, "site c")
    with pytest.raises(PayloadError, match="3 scores sent, but the site has 2 test cases"):
        check_scores([0.1, 0.2, 0.3], 2, "site c")
    assert check_scores([0, 1, 0.5], 3, "site c") == [0.0, 1.0, 0.5]

    class Lying(ScriptedSites):
        def __call__(self, task, site, params, meta):
            answer = super().__call__(task, site, params, meta)
            if task == "evaluate" and site == "c" and meta["stage"]["number"] == 8:
                return {}, {}, {"scores": [0.9] * 50}  # more cases than before: a larger weight in the summary
            return answer
    # the first answer of a run fixes a site's count (or the job declares it)
    stages, executor, state = _fedavg(tmp_path / "first", Lying({"a": 0.1, "b": 0.2, "c": 0.3}), rounds=2)
    assert state.records[8].scores["c"] == [] and state.records[4].scores["c"] == [0.5, 0.7]
    assert any(e.get("scores") == "refused" and e["site"] == "c" for e in state.records[8].details["boundary"])
    stages, executor, state = _fedavg(tmp_path / "declared", Lying({"a": 0.1, "b": 0.2, "c": 0.3}),
                                      BoundaryPolicy(declared_test_sizes={"c": 3}))
    assert state.records[4].scores["c"] == [] and state.records[4].scores["a"] == [0.5, 0.7]


def test_the_policy_is_json_and_refuses_unknown_or_invalid_settings():
    policy = BoundaryPolicy.from_dict({"aggregation": "median", "declared_sizes": {"a": 3}})
    assert BoundaryPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    with pytest.raises(ValueError, match="unknown settings"):
        BoundaryPolicy.from_dict({"trust_everyone": True})
    with pytest.raises(ValueError):
        BoundaryPolicy(aggregation="mode")
    with pytest.raises(ValueError, match="declared_sizes"):
        BoundaryPolicy(weighting="declared")
    with pytest.raises(PayloadError):
        BoundaryPolicy(declared_sizes={"a": -1})


def test_a_shifted_posterior_in_a_shared_exchange_directory_is_refused_by_name(tmp_path):
    """The overlays' and the command line's consolidation read posteriors other parties wrote."""
    import subprocess
    import sys

    prior = _posterior([0.0] * 4, [1.0] * 4, num_examples=1)
    honest = _posterior([0.1] * 4, [0.5] * 4, num_examples=4, site="site_a")
    hostile = _posterior([10.0] * 4, [0.5] * 4, num_examples=4, site="site_m")
    for name, post in (("prior", prior), ("a", honest), ("m", hostile)):
        post.save(tmp_path / f"{name}.safetensors")
    files = [str(tmp_path / f"{n}.safetensors") for n in ("prior", "a", "m")]
    with pytest.raises(ValueError, match=r"site posterior 1 \('site_m'\): 100.0% of its means moved more than 5 prior"):
        consolidate_dwc(files[0], files[1:], max_mean_shift=5.0)
    done = subprocess.run([sys.executable, "-m", "monai_continual.cli", "consolidate", "--prior", files[0], "--out",
                           str(tmp_path / "out.safetensors"), *files[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "site_m" in done.stderr and not (tmp_path / "out.safetensors").exists()
    from monai_continual.handlers import ConsolidationHandler

    handler = ConsolidationHandler(torch.nn.Linear(1, 1), files[0], files[1:])
    with pytest.raises(ValueError, match="site_m"):
        handler()


def test_a_malformed_answer_is_refused_and_the_run_goes_on(tmp_path):
    def malformed(site, number, answer):
        if site == "b":
            answer[0]["published|weights/w"] = np.array(["a", "b", "c", "d"])  # not a numeric tensor
        if site == "c":
            answer[0]["start|weights/w"] = np.zeros(4, np.float32)  # a second model beside the published one
            answer[1]["num_examples"] = 10**400  # beyond any float
    stages, executor, state = _fedavg(tmp_path, ScriptedSites({"a": 0.1, "b": 0.2, "c": 0.3}, malformed))
    assert "not a numeric tensor" in state.records[2].details["boundary"][0]["reason"]
    assert "not one 'published' model" in state.records[3].details["boundary"][0]["reason"]
    assert state.records[4].details["inputs_used"] == [1]
    assert any(e["update"] == "not bounded" for e in state.records[4].details["boundary"])  # one site: said so


def test_robust_average_keeps_every_site_when_there_is_no_consensus():
    reference = {"w": torch.zeros(3)}
    orthogonal = [{"w": torch.tensor([1.0, 0.0, 0.0])}, {"w": torch.tensor([0.0, 1.0, 0.0])},
                  {"w": torch.tensor([0.0, 0.0, 1.0])}]
    merged, report = robust_average(orthogonal, reference, min_cosine=0.2, norm_bound=2.0)
    assert report.left_out == {} and torch.allclose(merged["w"], torch.full((3,), 1 / 3))


def test_a_placeholder_for_a_sites_secrets_is_refused(monkeypatch):
    from nvflare.fuel.utils.secret_utils import resolve_secret_refs

    monkeypatch.setenv("HOSPITAL_TOKEN", "s3cret")
    value = "cpu-${secret:HOSPITAL_TOKEN}"
    # without the check: NVFlare puts the site's secret into the argument the site's script receives (and a value
    # that ends up in an error message or a published record carries it back to the server)
    assert resolve_secret_refs(f"device={value}") == "device=cpu-s3cret"
    for override in ({"device": value}, {"pixdim": [1, "x${secret:file:/etc/hostname}"]}):
        with pytest.raises(OverrideError, match=r"holds '\$\{'.*secrets"):
            check_overrides(override, MONAI_SITE_KEYS)


def test_an_exported_job_names_no_path_of_the_machine_that_wrote_it(tmp_path, monkeypatch):
    from monai_continual.federated.site_paths import DATALIST_ENV, WORKDIR_ENV, site_path
    from runner_utils import tiny_sites

    datalist = tiny_sites(tmp_path / "data")
    FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "out", export=str(tmp_path / "job")).run()
    job = tmp_path / "job" / "monai_continual_cyclic_weight_transfer"
    sites = [p for p in job.glob("app_*/**/*") if p.is_file() and p.parts[-3] != "app_server"]
    assert sites and not [p for p in sites if str(tmp_path) in p.read_text(errors="replace")
                          or str(CONFIG.parent) in p.read_text(errors="replace")]
    assert str(datalist) not in (job / "app_server" / "config" / "config_fed_server.json").read_text()
    # a job run on one machine passes the paths
    local = FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "out")
    assert dict(local._flat_overrides())["datalist"] == str(Path(datalist).resolve())
    environ = {DATALIST_ENV: "/data/hospital_b/datalist.json"}
    assert site_path(None, DATALIST_ENV, "datalist", environ) == "/data/hospital_b/datalist.json"
    assert site_path("/given.json", DATALIST_ENV, "datalist", {}) == "/given.json"  # a job on one machine
    # the site's own setting wins over a path a job passes: a job must not choose the files a site reads
    assert site_path("/job/other.json", DATALIST_ENV, "datalist", environ) == "/data/hospital_b/datalist.json"
    with pytest.raises(ValueError, match="set MONAI_CONTINUAL_WORKDIR in this site's environment"):
        site_path(None, WORKDIR_ENV, "working directory", {})


def test_a_network_argument_that_fetches_weights_or_files_is_refused():
    # HoVerNet(pretrained_url=...) would download any URL at the site; DenseNet121(pretrained=True) too
    for definition in ({"_target_": "HoVerNet", "pretrained_url": "http://attacker.example/w.pth"},
                       {"_target_": "DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "pretrained": True}):
        with pytest.raises(OverrideError, match="download or read weights or files"):
            check_network_def(definition)
    meshnet = {"_target_": "MeshNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4, "weight_norm": False}
    assert check_network_def(meshnet)["weight_norm"] is False


def test_a_planning_document_answers_only_its_own_task():
    """A fingerprint or plans hash skips the payload's file-path check (its receiver checks it against its schema), so
    it is taken only as the answer to its own planning task."""
    from nvflare.app_common.abstract.fl_model import FLModel

    from monai_continual.federated.controller import StrategyController
    from monai_continual.federated.payload import PayloadError, check_payload

    smuggled = {"published": "ab" * 32, "fingerprint": {"cases": ["alpha/alpha_000_0000.nii.gz"]}}
    check_payload(smuggled, {}, {})  # without the task check, a case name rides along with a stage's answer
    controller = StrategyController.__new__(StrategyController)
    controller.payload_log, controller.task_timeout = None, 0
    reply = FLModel(params={}, meta=dict(smuggled))
    controller.send_model_and_wait = lambda **kwargs: [reply]
    with pytest.raises(PayloadError, match=r"a reply to the train task may not carry \['fingerprint'\]"):
        controller._send("train", "site_a", {}, {"task": "train"})
    reply.meta = {"fingerprint": {"spacings": [[1.0, 1.0, 1.0]]}}
    assert controller._send("fingerprint", "site_a", {}, {"task": "fingerprint"})[1] == reply.meta
    reply.meta = {"plans_sha256": "cd" * 32}  # a plans hash does not answer a stage
    with pytest.raises(RuntimeError, match="site 'site_a' failed the train task"):
        controller._send("train", "site_a", {}, {"task": "train"})
