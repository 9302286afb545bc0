"""Sites as NVFlare clients: every strategy in the simulator, equality with the in-process runner, what crosses the
network, refusals, and POC mode with separate processes (server killed and the job resubmitted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare")

from monai_continual.consolidation import DirectoryWeightStore, Posterior, consolidate_dwc  # noqa: E402
from monai_continual.data import SiteProfile, load_multisite_datalist, make_sites  # noqa: E402
from monai_continual.federated import FederatedRun  # noqa: E402
from monai_continual.federated.config import parse_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
SITES = [SiteProfile("alpha", 4, "t1", noise=0.02), SiteProfile("beta", 5, "t2", noise=0.03, scale=50.0),
         SiteProfile("omega", 2, "t1", noise=0.04, held_out=True)]
OVERRIDES = {"channels": 4, "dilations": [1, 2, 1], "epochs": 1, "mc_samples": 2, "device": "cpu", "threads": 1,
             "learning_rate": 0.03, "bayes_learning_rate": 0.01}
#: seconds a site waits before asking for its next task (NVFlare's default, 2 s, is most of a short stage's time)
POLL = 0.2


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_sites(
        tmp_path_factory.mktemp("fed_sites"), sites=SITES, seed=2, shape=(16, 20, 16), figure=False, progress=False
    )


def _federated(datalist, out, strategy, options=None, **kwargs):
    # the in-process runner weights sites by their own counts; the federated default (equal weights) would differ
    kwargs.setdefault("boundary", {"weighting": "reported"})
    kwargs.setdefault("task_request_interval", POLL)
    run = FederatedRun(CONFIG, strategy, datalist, out, options=options, overrides=OVERRIDES,
                       payload_log=str(out / "payloads.jsonl"), **kwargs)
    return run, run.run()


def _in_process(datalist, out, strategy, options=None):
    runner = parse_config(CONFIG, {**OVERRIDES, "datalist": str(datalist), "output_dir": str(out)}).get_parsed_content(
        "runner"
    )
    return runner.run(strategy, **(options or {}))


def _records(run_dir: Path) -> list:
    return [
        (r["number"], r["sites"], r["published"], r["loaded"])
        for r in json.loads((run_dir / "state.json").read_text())["stages"]
    ]


def _check_payloads(log: Path) -> None:
    """Only parameters and per-volume scores leave a site; no file names, no case names; no metrics go to a site."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["direction"] for r in lines} == {"sent", "received"}
    for record in lines:
        text = json.dumps(record["meta"])
        assert "/" not in text and ".nii" not in text and "sub0" not in text, record
        if record["direction"] == "sent":
            assert record["metrics"] == {}  # a site never receives metrics, its own or another's
            assert set(record["meta"]) == (
                {"task", "run"} if record["task"] == "initialize" else {"task", "run", "roles", "stage", "kinds"}
            )
        elif record["task"] in ("train", "initialize"):
            assert set(record["meta"]) <= {"published", "num_examples", "details", "metadata"}
            assert (
                record["params"] and all(p.startswith("published|") for p in record["params"]) and not record["metrics"]
            )
        else:
            assert record["params"] == [] and set(record["metrics"]) == {"scores"}
            assert all(isinstance(v, float) for v in record["metrics"]["scores"])


@pytest.mark.slow
# cyclic weight transfer: tutorials/04 asserts the same (hashes stage by stage, R matrix, payloads), run by
# test_tutorials
@pytest.mark.parametrize("strategy,options", [("dwc", {})])
def test_federated_runs_equal_the_in_process_runs(datalist, tmp_path, strategy, options):
    run, summary = _federated(datalist, tmp_path / "federated", strategy, options)
    reference = _in_process(datalist, tmp_path / "in_process", strategy, options)
    # the same models, stage by stage, by content hash, and the same R matrix (to float precision: identical)
    assert _records(run.run_dir) == _records(reference.directory)
    federated_r = json.loads((run.run_dir / "R.json").read_text())
    assert np.array_equal(np.array([[s["scores"][k] for k in sorted(s["scores"])] for s in federated_r["stages"]]),
                          np.array([[s["scores"][k] for k in sorted(s["scores"])]
                                    for s in json.loads((reference.directory / "R.json").read_text())["stages"]]))
    assert set(summary["strategies"]) == {strategy}
    for name in ("summary.md", "R.png", f"heatmaps/{strategy}.png"):
        assert (run.run_dir / name).is_file()
    if strategy == "dwc":  # the server's consolidation is Eq. 17 of exactly the posteriors the sites sent
        posteriors = run.run_dir / "posteriors"
        expected = consolidate_dwc(posteriors / "stage0002.safetensors", [posteriors / "stage0003.safetensors"])
        produced = Posterior.load(posteriors / "stage0004.safetensors")
        assert all(
            torch.equal(produced.mean[n], expected.mean[n]) and torch.equal(produced.std[n], expected.std[n])
            for n in expected.mean
        )
    _check_payloads(tmp_path / "federated" / "payloads.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("strategy,options,rows", [
    ("single_weight_transfer", {"patience": 1, "epochs": 2}, 2),
    ("vcl", {}, 3),  # the MAP network of the first site, then one posterior per site
])
def test_strategies_fill_r_matrices_in_the_simulator(datalist, tmp_path, strategy, options, rows):
    run, summary = _federated(datalist, tmp_path, strategy, options)
    matrix = json.loads((run.run_dir / "R.json").read_text())
    assert len(matrix["stages"]) == rows
    assert all(
        set(s["scores"]) == {"alpha", "beta", "omega"} and all(0 <= v <= 1 for v in s["scores"].values())
        for s in matrix["stages"]
    )
    _check_payloads(tmp_path / "payloads.jsonl")


def test_strategies_that_move_data_are_refused(datalist, tmp_path):
    with pytest.raises(ValueError, match="patient data leaves a site.*allow_data_to_leave_sites=True"):
        FederatedRun(CONFIG, "replay", datalist, tmp_path)
    assert bool("false")  # what `--allow_data_to_leave_sites false` on a command line would be without as_flag
    with pytest.raises(ValueError, match="patient data leaves a site"):
        FederatedRun(CONFIG, "replay", datalist, tmp_path, allow_data_to_leave_sites="false")
    with pytest.raises(ValueError, match="allow_data_to_leave_sites must be true or false, got 'flase'"):
        FederatedRun(CONFIG, "replay", datalist, tmp_path, allow_data_to_leave_sites="flase")
    with pytest.raises(ValueError, match="centrally_hosted pools every site's data"):
        FederatedRun(CONFIG, "centrally_hosted", datalist, tmp_path)
    with pytest.raises(TypeError, match=r"unexpected options \['rounds'\]"):
        FederatedRun(CONFIG, "vcl", datalist, tmp_path, options={"rounds": 2})
    with pytest.raises(ValueError, match="engine must be one of"):
        FederatedRun(CONFIG, "vcl", datalist, tmp_path, engine="cloud")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _finished_stages(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "state.json").read_text())["stages"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_poc_server_killed_mid_run_and_the_job_resubmitted_ends_with_the_uninterrupted_result(datalist, tmp_path):
    """Separate processes with mutual TLS on loopback (nvflare poc), SIGKILL of the server after two stages (then of
    the sites), the services restarted and the same job submitted again: it continues from the server's run state."""
    from monai_continual.federated.poc import PocDeployment

    options = {"cycles": 2}
    run = FederatedRun(CONFIG, "cyclic_weight_transfer", datalist, tmp_path / "poc_run", options=options,
                       overrides=OVERRIDES, engine="poc", task_request_interval=POLL)
    with PocDeployment(tmp_path / "workspace", run.eval_sites, logs_dir=tmp_path / "logs") as poc:
        assert poc.pids("server") and all(poc.pids(site) for site in run.eval_sites)  # one process tree per party
        poc.submit(run.job())
        _wait_for(lambda: _finished_stages(run.run_dir) >= 3, 240, "two finished stages")
        for pid in poc.pids("server"):
            os.kill(pid, signal.SIGKILL)
        interrupted = _finished_stages(run.run_dir)
        poc.stop(graceful=False)  # nothing can be asked to shut down through a dead server: the sites are killed too
        assert not poc.pids()  # everything the deployment started is gone
        poc.start()
        status = poc.submit_and_wait(run.job(), timeout=300)
    assert not (tmp_path / "workspace").exists()
    assert interrupted < 5 and "FINISHED" in str(status)
    reference = _in_process(datalist, tmp_path / "in_process", "cyclic_weight_transfer", options)
    assert _records(run.run_dir) == _records(reference.directory)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,options",
                         [("cyclic_weight_transfer", {"cycles": 2}), ("federated_averaging", {"rounds": 2})])
def test_a_client_killed_mid_run(datalist, tmp_path, strategy, options):
    """Weight transfer skips the dead site's later visits and records them; FedAvg goes on with min_clients."""
    # sites weighted by their reported training-set sizes, so that the average can be checked against them
    run = FederatedRun(CONFIG, strategy, datalist, tmp_path, options=options, overrides=OVERRIDES, min_clients=1,
                       task_timeout=20, task_request_interval=POLL, boundary={"weighting": "reported"},
                       payload_log=str(tmp_path / "payloads.jsonl"))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run.run()), daemon=True)
    thread.start()
    _wait_for(lambda: _finished_stages(run.run_dir) >= 3, 240, "two finished stages")
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"simulator_worker" in (p / "cmdline").read_bytes()
               and str(tmp_path / "simulator" / "beta").encode() in (p / "cmdline").read_bytes()]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive() and "summary" in result
    summary = result["summary"]
    state = json.loads((run.run_dir / "state.json").read_text())["stages"]
    if strategy == "cyclic_weight_transfer":
        skipped = [r["number"] for r in state if r["details"].get("skipped")]
        assert skipped and summary["skipped_stages"] == skipped
        assert all("beta" in r["sites"] for r in state if r["number"] in skipped)
        store = DirectoryWeightStore(run.run_dir / "store")
        for number in skipped:  # a skipped visit passes the weights it started from on unchanged
            start = number - 1
            same = store.load(store.entry(number)), store.load(store.entry(start))
            assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    else:
        averages = [r for r in state if r["action"] == "average"]
        assert len(averages) == 2 and any(len(r["details"]["inputs_used"]) == 1 for r in averages)
        # round 1, before the kill: the server's average is the size-weighted mean of what both sites sent
        assert averages[0]["number"] == 3 and averages[0]["details"]["inputs_used"] == [1, 2]
        data = load_multisite_datalist(datalist)
        n_a, n_b = (len(data.site(s).training) for s in ("alpha", "beta"))
        store = DirectoryWeightStore(run.run_dir / "store")
        a, b, avg = (store.load(store.entry(n)) for n in (1, 2, 3))
        assert n_a != n_b  # an equal-weight average would fail the check below
        for key, value in avg.items():
            expected = (n_a * a[key].double() + n_b * b[key].double()) / (n_a + n_b)
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    _check_payloads(tmp_path / "payloads.jsonl")


@pytest.mark.slow
def test_the_bundle_config_runs_and_exports_with_monai_bundle(datalist, tmp_path):
    # outputs under a temporary bundle_root, the config from the repository
    common = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--bundle_root", str(tmp_path),
              "--datalist", str(datalist), "--channels", "4", "--dilations", "[1,2,1]", "--epochs", "1",
              "--mc_samples", "2", "--threads", "1", "--device", "cpu", "--strategy", "federated_averaging",
              "--strategy_options", "{'rounds': 1}", "--federated#config_file", str(CONFIG),
              "--task_request_interval", str(POLL)]
    export = subprocess.run([*common, "--export", str(tmp_path / "job")], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    meta = json.loads((tmp_path / "job" / "monai_continual_federated_averaging" / "meta.json").read_text())
    assert set(meta["deploy_map"]) == {"app_server", "app_alpha", "app_beta", "app_omega"}
    # our package is installed at every party: the job ships only the sites' entry script
    shipped = {p.relative_to(p.parents[3]).as_posix() for p in (tmp_path / "job").rglob("custom/**/*") if p.is_file()}
    assert shipped == {"custom/monai_continual/federated/client.py"}
    done = subprocess.run(common, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "outputs" / "federated" / "federated_averaging"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]["federated_averaging"]["sites"]) == {"alpha", "beta"}
    assert (
        "federated_averaging" in done.stdout
        and (out / "summary.md").is_file()
        and (out / "heatmaps" / "federated_averaging.png").is_file()
    )


def _run_bundle(args: list, timeout: float) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run ARGS`` in a session of its own: whatever of it is left at the end is killed."""
    process = subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        try:  # the simulator's workers are in the launcher's process group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_the_launching_command_network_is_the_one_the_sites_train(datalist, tmp_path):
    from safetensors import safe_open

    unet = ("{'_target_': 'UNet', '_mode_': 'callable', 'spatial_dims': 3, 'in_channels': 1, "
            "'out_channels': '@num_classes', 'channels': [4, 8], 'strides': [2], 'num_res_units': 0}")
    done = _run_bundle(["--config_file", str(CONFIG), "--bundle_root", str(tmp_path), "--datalist", str(datalist),
                        "--epochs", "1", "--mc_samples", "2", "--threads", "1", "--device", "cpu",
                        "--strategy", "cyclic_weight_transfer", "--strategy_options", "{'epochs_per_visit': 1}",
                        "--federated#config_file", str(CONFIG), "--task_request_interval", str(POLL),
                        "--network_def", unet, "--patch_size", "[8,8,8]", "--samples_per_volume", "2"],
                       timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "federated" / "cyclic_weight_transfer"
    published = sorted(run_dir.rglob("*.safetensors"))
    assert len(published) >= 3  # the initial model and a stage per training site
    for path in published:
        with safe_open(str(path), "pt") as weights:
            keys = list(weights.keys())
        assert keys and all(k.startswith("model.") for k in keys), (path, keys)  # UNet's, not MeshNet's
    assert "UNet" in json.dumps(json.loads((run_dir / "state.json").read_text())["config"]["settings"])
    # the patch and window settings went to every site with the network (the sites apply the job's settings)
    settings = json.loads((run_dir / "state.json").read_text())["config"]["settings"]
    assert settings["patch_size"] == [8, 8, 8] and settings["samples_per_volume"] == 2
