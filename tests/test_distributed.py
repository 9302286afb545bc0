"""The MONAI runner under ``torchrun`` with two processes on the CPU (gloo, loopback): DistributedDataParallel stages.

Both processes run fine-tuning, single weight transfer and DWC into one output directory (``distributed_worker.py``).
Checked: the runs finish in both; only rank 0 writes; every stage starts and ends with the same weights in both
processes, and rank 0 published them; each process draws its own share of every epoch, together the whole epoch; the
result is rank 0's in both; an ELBO step's averaged gradient is the single-process mean over both processes'
batches (the KL, computed on the unwrapped network, included); and a loss turning NaN in one process stops both.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_continual.data import SiteProfile, make_sites
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.strategies import CRASH_ENV
from monai_continual.utils import distributed

HERE = Path(__file__).resolve().parent
#: an odd and an even number of training items (5 and 4), a held-out site
SITES = [
    SiteProfile("alpha", 8, "t1", noise=0.02),
    SiteProfile("beta", 7, "t2", noise=0.03, scale=50.0),
    SiteProfile("omega", 2, "t1", noise=0.04, held_out=True),
]
TIMEOUT = 240


def test_one_process_sampler_and_helpers_are_unchanged():
    sampler = EpochSampler(7, seed=3)
    expected = [torch.randperm(7, generator=torch.Generator().manual_seed(3 * 100_003 + e)).tolist() for e in (0, 1)]
    assert [list(sampler), list(sampler)] == expected and len(sampler) == 7
    assert not distributed.is_distributed() and distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.on_main_rank(lambda: 5) == 5 and distributed.mean_over_ranks([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.on_every_rank(False) is False and distributed.rank_device("cuda") == torch.device("cuda")
    assert distributed.init_distributed() is False  # no torchrun here
    distributed.barrier()
    distributed.finalize_distributed()  # no process group: nothing to leave


@pytest.mark.parametrize("n, world", [(5, 2), (4, 2), (1, 2), (7, 3), (2, 4)])
def test_sampler_shares_cover_the_epoch_in_equal_parts(n, world):
    shares = [list(EpochSampler(n, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
    whole = list(EpochSampler(n, seed=1, epoch=2))
    assert all(len(s) == len(EpochSampler(n, rank=r, world_size=world)) == -(-n // world)
               for r, s in enumerate(shares))
    interleaved = [i for column in zip(*shares) for i in column]
    assert interleaved[:n] == whole and set(interleaved[n:]) <= set(whole)  # padded with the permutation's start
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(n, rank=world, world_size=world)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(arguments: list[str], log: Path, cwd: Path | None = None, crash_at: str = "") -> str:
    """Run ``torchrun --nproc_per_node 2 ARGUMENTS`` on the loopback interface (gloo) within :data:`TIMEOUT`; every
    process is stopped at the end, whatever happened. Returns the output of both processes, asserting success (or,
    with ``crash_at``, the fault point ``STEP:STAGE`` at which both exit, that they did)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **({CRASH_ENV: crash_at} if crash_at else {}),
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--max_restarts", "0", *arguments]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if process.poll() is None:  # torchrun and its workers are one process group: stop them all
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = log.read_text()
    expected = "exitcode  : 86" in text if crash_at else code == 0
    outcome = "timed out" if code is None else f"exited {code}"
    assert code is not None and expected, f"torchrun {outcome}:\n{text[-6000:]}"
    return text


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    sites = make_sites(root / "sites", sites=SITES, seed=1, shape=(16, 20, 16), figure=False, progress=False)
    output, records = root / "out", root / "records"
    # fine-tuning stopped after the first epoch of its second stage: the worker resumes it
    worker = [str(HERE / "distributed_worker.py"), str(sites), str(output), str(records)]
    torchrun([*worker, "crash"], root / "crash.txt", crash_at="mid_training:2")
    assert list((output / "resumed").rglob("checkpoint*")), "rank 0 wrote no epoch checkpoint to resume from"
    text = torchrun(worker, root / "log.txt")
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    return output, ranks, text


RUNS = {"fine_tuning": 2, "single_weight_transfer": 2, "dwc": 5}  # stages
#: the trained stages: DWC's MAP network, q0, the other site's posterior, (consolidation,) fine-tuning
TRAINED = [f"{name}/{n}" for name, stages in RUNS.items() for n in range(1, stages + 1) if (name, n) != ("dwc", 4)]


@pytest.mark.slow
def test_both_processes_finish_with_rank_zeros_result(distributed_run):
    _, (main, other), _ = distributed_run
    assert main["results"] == other["results"]
    for name, stages in RUNS.items():
        matrix = main["results"][name]["matrix"]
        assert len(matrix) == stages and all(0 <= v <= 1 for row in matrix for v in row)
    swt, dwc = main["results"]["single_weight_transfer"]["transfers"], main["results"]["dwc"]["transfers"]
    assert [(t["epochs_run"], t["plateau"]) for t in swt] == [(2, True), (2, True)]  # stopped alike everywhere
    assert dwc[1]["std"]["after"] != dwc[1]["std"]["before"]  # q0's stds calibrated (by rank 0)
    assert dwc[3]["inputs_used"] == [3]


@pytest.mark.slow
def test_only_rank_zero_writes(distributed_run):
    output, (main, other), _ = distributed_run
    assert main["writes"], "the audit hook saw no write of rank 0"
    assert other["writes"] == []
    for name, stages in RUNS.items():
        run = output / name
        assert [p.name for p in run.rglob("state.json")] == ["state.json"]
        assert not list(run.rglob("*.tmp")) and not list(run.rglob("checkpoint*"))
        state = json.loads((run / "state.json").read_text())
        assert [s["number"] for s in state["stages"]] == list(range(stages + 1))
        manifest = json.loads((run / "store" / "manifest.json").read_text())
        assert sorted(e["stage"] for e in manifest["entries"]) == list(range(stages + 1 if name != "dwc" else 2))
    assert sorted(p.name for p in (output / "dwc" / "posteriors").iterdir()) == [
        f"stage000{n}.safetensors" for n in (2, 3, 4, 5)]


@pytest.mark.slow
def test_every_stage_starts_and_ends_alike_in_both_processes(distributed_run):
    _, (main, other), _ = distributed_run
    assert sorted(main["started"]) == sorted(main["trained"]) == sorted(TRAINED)
    assert main["started"] == other["started"] and main["trained"] == other["trained"]
    assert all(main["started"][k] != main["trained"][k] for k in TRAINED)
    for name in ("fine_tuning", "single_weight_transfer"):
        for n in (1, 2):
            assert main["published"][f"{name}/{n}"] == main["trained"][f"{name}/{n}"]
        assert main["started"][f"{name}/2"] == main["trained"][f"{name}/1"]


@pytest.mark.slow
def test_each_process_draws_its_own_share_of_every_epoch(distributed_run):
    _, (main, other), _ = distributed_run
    assert len(main["sampled"]) == len(other["sampled"]) == 2 * len(TRAINED)  # 2 epochs a stage
    sizes = set()
    for a, b in zip(main["sampled"], other["sampled"]):
        assert (a["seed"], a["epoch"], a["n"]) == (b["seed"], b["epoch"], b["n"])
        n, share = a["n"], math.ceil(a["n"] / 2)
        assert len(a["indices"]) == len(b["indices"]) == share  # as many batches in both
        interleaved = [i for pair in zip(a["indices"], b["indices"]) for i in pair]
        assert sorted(interleaved[:n]) == list(range(n))  # disjoint shares of one permutation: the whole epoch
        sizes.add(n)
    assert sizes == {4, 5}


@pytest.mark.slow
def test_elbo_gradient_is_the_mean_over_processes(distributed_run):
    _, (main, other), _ = distributed_run
    assert main["elbo_gradient_gap"] < 1e-5 and other["elbo_gradient_gap"] < 1e-5


@pytest.mark.slow
def test_a_loss_diverging_in_one_process_stops_both(distributed_run):
    output, (main, other), _ = distributed_run
    assert "(1:alpha): the loss became non-finite in another process at epoch 1, iteration 1" in main["diverged"]
    assert "(1:alpha): the loss became nan at epoch 1, iteration 1" in other["diverged"]
    state = json.loads((output / "diverged" / "state.json").read_text())
    assert [s["number"] for s in state["stages"]] == [0]  # nothing of stage 1 published


@pytest.mark.slow
def test_the_bundle_main_job_under_torchrun(tmp_path):
    """The README's command: ``torchrun -m monai.bundle run --config_file experiment.json --distributed true``."""
    config = HERE.parent / "bundles" / "multisite_segmentation" / "configs" / "experiment.json"
    text = torchrun(["-m", "monai.bundle", "run", "--config_file", str(config), "--bundle_root", str(tmp_path),
                     "--distributed", "true", "--dataset_shape", "[16,20,16]", "--strategies", "['fine_tuning']",
                     "--epochs", "1", "--orders", "1", "--size_orders", "false"], tmp_path / "log.txt", cwd=tmp_path)
    out = tmp_path / "outputs" / "experiment"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["strategies"]) == ["fine_tuning"] and text.count("weighted") == 1  # one table: rank 0's
    state = json.loads((out / "runs" / "fine_tuning" / "state.json").read_text())
    assert [s["number"] for s in state["stages"]] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_stage_stopped_in_its_middle_resumes_exactly(distributed_run):
    _, (main, other), _ = distributed_run
    assert main["resumed"] == other["resumed"] == main["results"]["fine_tuning"]["transfers"]



def test_a_torchrun_process_without_its_process_group_is_refused(tmp_path, monkeypatch):
    from monai_continual.engines import ContinualRunner
    from monai_continual.networks import MeshNet
    from runner_utils import tiny_sites, transform

    datalist = tiny_sites(tmp_path / "data")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each of its processes
    with pytest.raises(RuntimeError, match="one of 2 processes.*--distributed true"):
        ContinualRunner(datalist, tmp_path / "runs", MeshNet(3, 1, 4, channels=4), transform(), transform(), 4)
    assert not (tmp_path / "runs").exists()
