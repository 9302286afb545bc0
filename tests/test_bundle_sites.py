"""A hospital's own model-zoo bundle as a federated site: our controller, NVFlare's own FedAvg, MONAI's ClientAlgo.

The bundle is the spleen-style training config of ``test_overlays`` (no key of this package in it); every site runs
it on its own tiny Task09-like data in NVFlare's simulator. DWC over the bundle's network made Bayesian (the
consolidated posterior is Eq. 17 of the sites' posteriors) runs in the simulator in tutorial 06, which asserts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("nvflare")

from monai.fl.utils.constants import ExtraItems, WeightType  # noqa: E402
from monai.fl.utils.exchange_object import ExchangeObject  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

import monai_continual.federated.bundle_client as client_module  # noqa: E402
from monai_continual.consolidation import DirectoryWeightStore, Posterior  # noqa: E402
from monai_continual.engines.bundle_site import BundleSite  # noqa: E402
from monai_continual.federated import FederatedRun  # noqa: E402
from monai_continual.federated.bundle_algo import (  # noqa: E402
    ContinualBundleAlgo,
    StageExtra,
    posterior_weights,
    weights_posterior,
)
from monai_continual.federated.bundle_client import bundle_overrides  # noqa: E402
from test_federated import _run_bundle  # noqa: E402
from test_overlays import MODEL_ZOO_TRAIN, OVERLAYS, _run, _spleen_site  # noqa: E402

POLL = 0.2
CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs"
UNET = {k: v for k, v in MODEL_ZOO_TRAIN["network_def"].items() if k != "_target_"}


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    """The bundle (its configs only) and three hospitals' data: two train, the third is held out."""
    root = tmp_path_factory.mktemp("bundle_sites")
    bundle = root / "spleen_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps(MODEL_ZOO_TRAIN, indent=4))
    data = {name: _spleen_site(root / name / "Task09_Spleen", 3, seed, bright)
            for seed, (name, bright) in enumerate([("hospital_1", 120.0), ("hospital_2", 60.0), ("hospital_3", 90.0)])}
    # each hospital's own overrides: its data, and its own directory for what the bundle writes (models/)
    sites = {name: {"dataset_dir": str(path), "bundle_root": str(root / name)} for name, path in data.items()}
    return root, bundle, sites


def _bundle_run(hospitals, out: Path, strategy: str, options: dict, held_out: bool = True, **kwargs):
    _, bundle, sites = hospitals
    training = {k: v for k, v in sites.items() if k != "hospital_3"}
    run = FederatedRun.bundle(bundle, training, strategy, out, {"hospital_3": sites["hospital_3"]} if held_out else {},
                              options, epochs=1, task_request_interval=POLL, payload_log=str(out / "payloads.jsonl"),
                              **kwargs)
    return run, run.run()


def _stages(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "state.json").read_text())["stages"]


@pytest.fixture(scope="module")
def cwt_run(hospitals, tmp_path_factory):
    """Cyclic weight transfer over the hospitals' bundles, launched as a coordinator does: ``python -m monai.bundle
    run`` of ``federated_bundle.json``."""
    _, bundle, sites = hospitals
    out = tmp_path_factory.mktemp("bundle_cwt")
    training = {k: v for k, v in sites.items() if k != "hospital_3"}
    done = _run_bundle(["--config_file", str(CONFIGS / "federated_bundle.json"), "--bundle_root", str(out),
                        "--site_bundle", str(bundle), "--sites", json.dumps(training),
                        "--held_out_sites", json.dumps({"hospital_3": sites["hospital_3"]}),
                        "--strategy", "cyclic_weight_transfer", "--strategy_options", json.dumps({"cycles": 1}),
                        "--epochs", "1", "--task_request_interval", str(POLL)], timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    output = out / "outputs" / "federated_bundle"
    run_dir = output / "cyclic_weight_transfer"
    return run_dir, json.loads((run_dir / "summary.json").read_text()), output


@pytest.mark.slow
def test_cyclic_weight_transfer_over_hospital_bundles_with_our_controller(hospitals, cwt_run):
    run_dir, summary, out = cwt_run
    stages = _stages(run_dir)
    assert [s["sites"] for s in stages] == [[], ["hospital_1"], ["hospital_2"]]
    # site k starts from exactly what site k-1 published (content hashes)
    for previous, stage in zip(stages, stages[1:]):
        assert stage["loaded"]["start"] == previous["published"]
    # the published weights are the bundle's UNet's, not this package's MeshNet's
    store = DirectoryWeightStore(run_dir / "store")
    published = store.load(store.entry(2))
    assert set(published) == set(UNet(**UNET).state_dict()) and not any("meshnet" in k.lower() for k in published)
    # every site scored every row on its own data, the held-out hospital included
    assert set(summary["strategies"]["cyclic_weight_transfer"]["sites"]) == {"hospital_1", "hospital_2"}
    assert set(summary["strategies"]["cyclic_weight_transfer"]["held_out"]) == {"hospital_3"}
    assert all(set(s["scores"]) == {"hospital_1", "hospital_2", "hospital_3"} for s in stages[1:])
    # each site's own records hold only its own scores, of the models it received and published
    for site in ("hospital_1", "hospital_2"):
        records = [json.loads(p.read_text()) for p in (out / "sites" / site).rglob("scores/*.json")]
        assert records and all(r["site"] == site for r in records)
        assert {r["when"] for r in records} == ({"published"} if site == "hospital_1" else {"received", "published"})
    received = next(json.loads(p.read_text()) for p in (out / "sites" / "hospital_2").rglob("scores/stage0001_*.json"))
    assert received["model_sha256"] == stages[1]["published"] and received["trained_on"] == "hospital_1"


@pytest.mark.slow
def test_the_overlays_and_the_federated_client_train_the_same_weights(hospitals, cwt_run, tmp_path):
    """Site by site through the shared-directory overlay (``python -m monai.bundle run``) and through the federated
    client: the same bundle, seeds and data give the same weights stage by stage."""
    root, bundle, sites = hospitals
    run_dir = cwt_run[0]
    exchange = tmp_path / "exchange"
    for site in ("hospital_1", "hospital_2"):
        _run([bundle / "configs" / "train.json", OVERLAYS / "weight_transfer.json"], Path(sites[site]["bundle_root"]),
             "--dataset_dir", sites[site]["dataset_dir"], "--site", site, "--exchange_dir", str(exchange),
             "--train#trainer#max_epochs", "1")
    shared, federated = DirectoryWeightStore(exchange / "weights"), DirectoryWeightStore(run_dir / "store")
    for visit in (0, 1):  # the overlay numbers the visits from 0, the schedule from 1 (0: the initial weights)
        ours, theirs = shared.load(shared.entry(visit)), federated.load(federated.entry(visit + 1))
        assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours), f"visit {visit}"


@pytest.mark.slow
def test_the_client_under_nvflare_own_fedavg_recipe(hospitals, tmp_path):
    """A plain MONAI FL job of NVFlare's (its PyTorch FedAvg recipe, not our controller): two rounds finish."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe import SimEnv, set_per_site_config

    import monai_continual.federated.bundle_client as client

    _, bundle, sites = hospitals
    training = {k: v for k, v in sites.items() if k != "hospital_3"}
    recipe = FedAvgRecipe(name="bundle_fedavg", min_clients=2, num_rounds=2, train_script=client.__file__,
                          model={"class_path": "monai.networks.nets.UNet", "args": UNET}, key_metric="val_mean_dice")
    args = {site: " ".join([f"--bundle-root {bundle} --workdir {tmp_path / 'sites'} --send-weight-diff",
                            *[f"--set {k}={json.dumps(v)}" for k, v in overrides.items()]])
            for site, overrides in training.items()}
    set_per_site_config(recipe, {site: {"train_args": a} for site, a in args.items()})
    recipe.execute(SimEnv(clients=list(training), workspace_root=str(tmp_path / "workspace")))
    for site in training:  # each site trained once per round, from the global model it received
        store = DirectoryWeightStore(tmp_path / "sites" / site / "client_algo" / "store")
        rounds = sorted(e.stage for e in store.entries() if e.site == site)
        assert rounds == [5, 8], rounds  # round r's received model is stage 3r, its training 3r + 2
        assert store.entry(6).site == "server"
    log = next((tmp_path / "workspace").rglob("server/**/log.txt")).read_text()
    assert "Round 1 started" in log and "Finished FedAvg" in log


@pytest.mark.slow
def test_a_site_whose_bundle_network_differs_is_refused_by_name(hospitals, tmp_path):
    root, bundle, sites = hospitals
    other = dict(sites["hospital_2"], **{"network_def#channels": [4, 16]})
    run = FederatedRun.bundle(bundle, {"hospital_1": sites["hospital_1"], "hospital_2": other},
                              "cyclic_weight_transfer", tmp_path, options={"cycles": 1}, task_request_interval=POLL)
    with pytest.raises(RuntimeError, match="hospital_2.*does not fit this site's bundle network"):
        run.run()
    assert "hospital_2" in (run.run_dir / "error.txt").read_text()
    stored = list((tmp_path / "sites" / "hospital_2").rglob("store/*.safetensors"))
    assert stored == []  # the mismatching model was refused before anything of it was stored


def test_client_algo_weight_differences_and_the_posterior_key_convention(hospitals, tmp_path):
    root, bundle, sites = hospitals
    algo = ContinualBundleAlgo(bundle, tmp_path, send_weight_diff=True, overrides=sites["hospital_1"])
    algo.initialize({ExtraItems.CLIENT_NAME: "hospital_1"})
    start = {k: v + 0.01 for k, v in UNet(**UNET).state_dict().items()}
    algo.train(ExchangeObject(weights=start, weight_type=WeightType.WEIGHTS))
    update = algo.get_weights()
    full = algo.get_weights({"weight_type": WeightType.WEIGHTS})
    assert update.weight_type == WeightType.WEIGHT_DIFF and full.weight_type == WeightType.WEIGHTS
    assert all(torch.allclose(update.weights[k], full.weights[k] - start[k]) for k in start)
    assert update.statistics["num_examples"] == 2  # the bundle trains on all but its last case
    # the same stage from the same start trains the same weights (the bundle's own determinism)
    again = ContinualBundleAlgo(bundle, tmp_path / "again", overrides=sites["hospital_1"])
    again.initialize({ExtraItems.CLIENT_NAME: "hospital_1"})
    again.train(ExchangeObject(weights=start))
    assert all(torch.equal(again.get_weights().weights[k], full.weights[k]) for k in start)
    # a Bayesian stage from those weights returns a posterior under the documented keys
    again.train(ExchangeObject(weights=full.weights), {StageExtra.NETWORK: "bayes", StageExtra.BOUND_STD: True})
    posterior = again.get_weights()
    groups = {k.partition("/")[0] for k in posterior.weights}
    assert groups == {"mean", "std", "deterministic"} and posterior.weight_type == WeightType.WEIGHTS
    restored = weights_posterior(posterior.weights)
    assert posterior_weights(restored).keys() == posterior.weights.keys()
    assert all(float(v.min()) > 0 for k, v in posterior.weights.items() if k.startswith("std/"))
    scores = again.evaluate(ExchangeObject(weights=full.weights)).metrics
    assert 0 <= scores["val_mean_dice"] <= 1 and scores["scores"] == [pytest.approx(scores["val_mean_dice"])]


def test_received_models_are_checked_before_anything_is_stored(hospitals, tmp_path):
    root, bundle, sites = hospitals
    algo = ContinualBundleAlgo(bundle, tmp_path, overrides=sites["hospital_1"])
    algo.initialize({ExtraItems.CLIENT_NAME: "hospital_1"})
    wrong = UNet(**dict(UNET, channels=[4, 16])).state_dict()
    with pytest.raises(ValueError, match="hospital_1.*does not fit this site's bundle network"):
        algo.train(ExchangeObject(weights=wrong))
    bad = {k: v.clone() for k, v in UNet(**UNET).state_dict().items()}
    next(iter(bad.values())).fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        algo.train(ExchangeObject(weights=bad))
    from monai_continual.bayes import bayesianize

    other = Posterior.from_model(bayesianize(UNet(**dict(UNET, channels=[4, 16]))), site="elsewhere")
    with pytest.raises(ValueError, match="hospital_1.*does not fit this site's bundle network made Bayesian"):
        algo.train(ExchangeObject(weights=posterior_weights(other)), {StageExtra.NETWORK: "bayes"})
    assert not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize("item", ['dataset_dir="$__import__(\'os\').system(\'id\')"', "network_def=\"@other\"",
                                  'network_def#_target_="torch.nn.Identity"', 'train#trainer#_mode_="debug"',
                                  "train#trainer#amp={\"_target_\":\"x\"}", "../x=1", "key=not json"])
def test_site_overrides_are_data_never_expressions(item):
    with pytest.raises(ValueError):
        bundle_overrides([item])
    assert bundle_overrides(['dataset_dir="/data/spleen"', "train#trainer#amp=true", "network_def#channels=[4,16]"]) \
        == {"dataset_dir": "/data/spleen", "train#trainer#amp": True, "network_def#channels": [4, 16]}


def test_a_bundle_without_the_model_zoo_keys_is_refused_naming_the_key(tmp_path):
    (tmp_path / "configs").mkdir()
    config = {k: v for k, v in MODEL_ZOO_TRAIN.items() if k != "validate"}
    (tmp_path / "configs" / "train.json").write_text(json.dumps(config))
    with pytest.raises(KeyError, match="validate#evaluator"):
        BundleSite(str(tmp_path), "hospital_1").workflow()
    with pytest.raises(FileNotFoundError, match="hospital_1.*evaluate.json"):
        BundleSite(str(tmp_path), "hospital_1", evaluate_config="configs/evaluate.json")


def test_an_exported_bundle_job_names_no_path_and_passes_no_override(hospitals, tmp_path):
    """Each hospital points at its own copy of the bundle and its own data: the job carries none of it."""
    root, bundle, sites = hospitals
    FederatedRun.bundle(bundle, sites, "cyclic_weight_transfer", tmp_path / "out", export=str(tmp_path / "job")).run()
    job = tmp_path / "job" / "monai_continual_cyclic_weight_transfer"
    files = [p for p in job.rglob("*") if p.is_file()]
    sites_files = [p for p in files if "app_server" not in p.parts]
    assert sites_files and not [p for p in sites_files if str(tmp_path) in p.read_text(errors="replace")]
    # the server keeps only its own run directory: no hospital's bundle or data
    assert not [p for p in files if str(root) in p.read_text(errors="replace")]
    clients = [p.read_text() for p in job.glob("app_*/config/config_fed_client.json")]
    assert clients and all("--bundle-root" not in c and "--set" not in c for c in clients)
    # the site script is named by its copy in the job, not by where this machine keeps the package
    package = str(Path(client_module.__file__).resolve().parents[2])
    assert not [c for c in clients if package in c]
    assert all(json.loads(c)["executors"][0]["executor"]["args"]["task_script_path"] == "bundle_client.py"
               for c in clients)
    assert all(list((p / "custom").rglob("bundle_client.py")) for p in job.glob("app_hospital_*"))
    # on one machine each site gets its own bundle root and overrides, never another site's
    local = FederatedRun.bundle(bundle, sites, "cyclic_weight_transfer", tmp_path / "out")
    assert local.site_args["hospital_2"].count("--set") == 2
    assert sites["hospital_1"]["dataset_dir"] not in " ".join(local.site_args["hospital_2"])


@pytest.mark.slow
def test_cyclic_weight_transfer_over_bundles_in_poc_mode(hospitals, tmp_path):
    """Separate processes with mutual TLS on loopback (nvflare poc): the same run as in the simulator, and nothing
    left running afterwards."""
    from monai_continual.federated.poc import PocDeployment

    _, bundle, sites = hospitals
    training = {k: v for k, v in sites.items() if k != "hospital_3"}
    run = FederatedRun.bundle(bundle, training, "cyclic_weight_transfer", tmp_path / "poc_run", options={"cycles": 1},
                              engine="poc", task_request_interval=POLL)
    with PocDeployment(tmp_path / "workspace", run.eval_sites, logs_dir=tmp_path / "logs") as poc:
        assert poc.pids("server") and all(poc.pids(site) for site in run.eval_sites)
        status = poc.submit_and_wait(run.job(), timeout=300)
    assert "FINISHED" in str(status) and not (tmp_path / "workspace").exists()
    assert not poc.pids()
    stages = _stages(run.run_dir)
    assert [s["sites"] for s in stages] == [[], ["hospital_1"], ["hospital_2"]]
    assert all(b["loaded"]["start"] == a["published"] for a, b in zip(stages, stages[1:]))


def _loopback(hospitals, out: Path, strategy: str, options: dict) -> list[dict]:
    """The server's run with every bundle site in this process (no NVFlare): the same workers as the simulator's."""
    from monai_continual.engines.bundle_executor import BundleStageExecutor
    from monai_continual.federated.payload import REPLY_KEYS, check_payload
    from monai_continual.federated.server_run import run_on_server
    from monai_continual.federated.site_worker import SiteWorker

    _, bundle, sites = hospitals
    training = [s for s in sites if s != "hospital_3"]
    workers = {}
    for site in training:
        spec = BundleSite(str(bundle), site, overrides=sites[site])
        workers[site] = SiteWorker(lambda stages, run_dir, spec=spec: BundleStageExecutor(spec, run_dir, stages),
                                   site, out / "sites" / site)

    def send(task, site, params, meta):
        check_payload(meta, params, None)
        params, meta, metrics = workers[site].handle(task, meta, params)
        return params, {k: v for k, v in meta.items() if k in REPLY_KEYS}, metrics

    run_on_server(strategy, options, training, training, out / strategy, send, log=None)
    return _stages(out / strategy)


def test_ewc_and_fedprox_wrap_the_bundle_loss(hospitals, tmp_path):
    """EWC with lambda 0 is fine-tuning (same published weights) and publishes running Fishers; FedProx's mu > 0
    keeps the sites' models closer to the global one than FedAvg's."""
    tuned = _loopback(hospitals, tmp_path / "ft", "fine_tuning", {})
    ewc = _loopback(hospitals, tmp_path / "ewc", "ewc", {"ewc_lambda": 0.0})
    assert [s["published"] for s in tuned] == [s["published"] for s in ewc]
    assert all("fisher" in s["details"] for s in ewc[1:])
    penalized = _loopback(hospitals, tmp_path / "ewc_on", "ewc", {"ewc_lambda": 100.0})
    assert penalized[1]["published"] == ewc[1]["published"]  # the first site has no earlier Fisher
    assert penalized[2]["published"] != ewc[2]["published"]  # the second trains under the penalty
    distances = {}
    for name, mu in (("fedavg", 0.0), ("fedprox", 10.0)):
        stages = _loopback(hospitals, tmp_path / name, "federated_averaging", {"rounds": 1, "proximal_mu": mu})
        store = DirectoryWeightStore(tmp_path / name / "federated_averaging" / "store")
        start = store.load(store.entry(0))
        sites = [s["number"] for s in stages if s["action"] == "train"]
        distances[name] = sum(float(((store.load(store.entry(n))[k] - start[k]) ** 2).sum())
                              for n in sites for k in start if start[k].is_floating_point())
    assert distances["fedprox"] < distances["fedavg"], distances


@pytest.mark.slow
def test_exclude_vars_keeps_variables_at_the_sites_and_difference_filters_are_refused(hospitals, tmp_path):
    """NVIDIA FLARE's ExcludeVars on the sites' training results: the excluded layer never leaves a site, the server
    takes it from each stage's start (here: the initial weights throughout), every other layer trains."""
    from monai_continual.federated.result_filters import check_result_filters

    _, bundle, sites = hospitals
    training = {k: v for k, v in sites.items() if k != "hospital_3"}
    keep = [{"name": "ExcludeVars", "args": {"exclude_vars": r"model\.2\."}}]
    run = FederatedRun.bundle(bundle, training, "cyclic_weight_transfer", tmp_path, options={"cycles": 1},
                              task_request_interval=POLL, result_filters=keep, payload_log=str(tmp_path / "log"))
    run.run()
    store = DirectoryWeightStore(run.run_dir / "store")
    initial, last = store.load(store.entry(0)), store.load(store.entry(2))
    excluded = [k for k in initial if k.startswith("model.2.")]
    assert excluded and all(torch.equal(last[k], initial[k]) for k in excluded)
    assert any(not torch.equal(last[k], initial[k]) for k in initial if k not in excluded)
    received = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    trained = [r for r in received if r["direction"] == "received" and r["task"] == "train"]
    assert trained and not any("model.2." in name for r in trained for name in r["params"])
    # the privacy filters that assume weight differences are refused on full weights, by name
    for name in ("PercentilePrivacy", "SVTPrivacy"):
        with pytest.raises(ValueError, match=f"{name} treats what it filters as weight differences"):
            FederatedRun.bundle(bundle, training, "cyclic_weight_transfer", tmp_path / "x",
                                result_filters=[{"name": name, "args": {}}])
        assert check_result_filters([{"name": name, "args": {}}], weight_diff=True)
    with pytest.raises(ValueError, match="result filter 0"):
        check_result_filters([{"name": "nvflare.app_common.filters.ExcludeVars"}], weight_diff=False)
    for pattern in ("", "^model", ["model.2.bias"]):  # would exclude nothing of the names as sent
        with pytest.raises(ValueError, match="non-empty regular expression"):
            check_result_filters([{"name": "ExcludeVars", "args": {"exclude_vars": pattern}}], weight_diff=False)
    with pytest.raises(ValueError, match="cannot be used with ewc"):
        check_result_filters(keep, weight_diff=False, strategy="ewc")
