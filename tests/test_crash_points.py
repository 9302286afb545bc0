"""A process that dies at any step boundary of any stage resumes to exactly the uninterrupted run (MONAI backend).

The fault points (``MONAI_CONTINUAL_CRASH_AT=STEP:STAGE``) exit the process with ``os._exit`` at: the end of a
training epoch, after a stage's side outputs (optimizer state, replay memory, running Fisher) but before its model is
published, right after a stage published its model, between two sites' evaluations, before the run state is
saved, and inside a consolidation. Each strategy's run is crashed at several of them in turn, then finished; the
final state must equal a reference run's: the same R matrix and the same hash of every published model.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import resume_worker
from forked import run_forked
from monai_continual.strategies import CRASH_ENV
from runner_utils import tiny_sites

LR = "0.03"  # large enough that every stage changes the R matrix
CASES = {
    "cyclic_weight_transfer": ({"cycles": 2, "epochs": 2, "epochs_per_visit": 2},
                               ["mid_training:2", "after_publish:3", "during_evaluation:4", "before_state_save:5"]),
    "replay": ({"capacity_per_site": 1, "epochs": 2}, ["after_publish:1", "mid_training:2", "before_state_save:3"]),
    "ewc": ({"ewc_lambda": 1.0, "gamma": 0.5, "epochs": 2},
            ["before_publish:1", "mid_training:2", "after_publish:2", "before_publish:3", "during_evaluation:3"]),
    "vcl": ({"epochs": 2}, ["mid_training:2", "after_publish:3", "during_evaluation:4"]),
    "dwc": ({"epochs": 2}, ["after_publish:2", "mid_training:3", "mid_consolidation:5", "before_state_save:5",
                            "after_publish:6"]),
    # FedProx: federated averaging with the proximal term in every local step
    "federated_averaging": ({"rounds": 2, "local_epochs": 2, "proximal_mu": 0.1},
                            ["after_publish:2", "mid_consolidation:4", "during_evaluation:4", "mid_training:6"]),
}


def _run(sites: Path, output: Path, strategy: str, crash: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash:
        env[CRASH_ENV] = crash
    options = json.dumps(CASES[strategy][0])
    # a separate process each time (forked from one that imported the package once): a fault point ends it for real
    return run_forked(resume_worker.main, [str(sites), str(output), strategy, options, LR], env=env, timeout=300)


def _final(run_dir: Path) -> tuple[dict, list]:
    state = json.loads((run_dir / "state.json").read_text())
    # what each stage loaded and published, and what it recorded: per-epoch losses, ELBO terms, std statistics
    published = [(r["number"], r["published"], r["loaded"], {k: v for k, v in r["details"].items() if k != "seconds"})
                 for r in state["stages"]]
    return json.loads((run_dir / "R.json").read_text()), published


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return tiny_sites(tmp_path_factory.mktemp("tiny_crash"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(CASES))
def test_a_crash_at_every_step_boundary_resumes_exactly(sites, tmp_path, strategy):
    reference = _run(sites, tmp_path / "reference", strategy, None)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected_matrix, expected_published = _final(tmp_path / "reference" / strategy)
    models = [p for _, p, _, _ in expected_published if p is not None]
    assert len(set(models)) == len(models)  # every stage published a new model: a wrong input would show

    for crash in CASES[strategy][1]:
        crashed = _run(sites, tmp_path / "crashed", strategy, crash)
        assert crashed.returncode == 86, f"{crash}: expected the fault point to fire; {crashed.stderr[-2000:]}"
    final = _run(sites, tmp_path / "crashed", strategy, None)
    assert final.returncode == 0, final.stderr[-2000:]
    matrix, published = _final(tmp_path / "crashed" / strategy)
    assert matrix == expected_matrix
    assert published == expected_published
    assert not list((tmp_path / "crashed").rglob(".*.tmp"))
    assert not list((tmp_path / "crashed").rglob("checkpoint_stage*.pt"))
