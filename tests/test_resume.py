"""Kill a run with SIGKILL at different points, run it again: the final R matrix equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import resume_worker
from forked import ForkedWorker
from runner_utils import tiny_sites

CASES = {
    "cyclic_weight_transfer": {"cycles": 2, "epochs_per_visit": 2},
    "vcl": {},
    "ewc": {"ewc_lambda": 1.0, "gamma": 0.5},
}


def _start(sites: Path, output: Path, strategy: str) -> ForkedWorker:
    # a separate process (forked from one that imported the package once), killed for real with SIGKILL
    return ForkedWorker(resume_worker.main, [str(sites), str(output), strategy, json.dumps(CASES[strategy])])


def _completed(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _kill_when(process: ForkedWorker, condition, timeout: float = 240) -> bool:
    start = time.time()
    while time.time() - start < timeout:
        if process.poll() is not None:
            return False
        if condition():
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    raise TimeoutError("the run neither finished nor reached the kill point")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return tiny_sites(tmp_path_factory.mktemp("tiny_resume"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CASES))
def test_killed_runs_resume_to_the_same_r_matrix(sites, tmp_path, strategy):
    reference = _start(sites, tmp_path / "reference", strategy)
    assert reference.wait(timeout=300) == 0, reference.output[-2000:]
    expected = json.loads((tmp_path / "reference" / strategy / "R.json").read_text())

    run_dir = tmp_path / "killed" / strategy
    kill_points = [
        ("mid-stage, after an epoch checkpoint", lambda: any(run_dir.glob("sites/*/checkpoint_stage*.pt"))),
        ("after two finished stages", lambda: _completed(run_dir) >= 2),
    ]
    killed = 0
    for _, condition in kill_points:
        process = _start(sites, tmp_path / "killed", strategy)
        killed += _kill_when(process, condition)
    final = _start(sites, tmp_path / "killed", strategy)
    assert final.wait(timeout=300) == 0, final.output[-2000:]
    assert killed >= 1  # the run really was interrupted
    assert json.loads((run_dir / "R.json").read_text()) == expected
    assert not list(run_dir.rglob(".*.tmp"))  # no half-written file left behind
