"""Experiment tracking: what a run logs to TensorBoard and MLflow, read back from the event files and the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_continual.experiment.tracking import RunTracker
from runner_utils import tiny_runner, tiny_sites


@pytest.fixture(scope="module")
def vcl_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    result = tiny_runner(tiny_sites(root / "data"), root / "runs", epochs=2).run("vcl")
    records = [r for r in json.loads((result.directory / "state.json").read_text())["stages"] if r["number"] > 0]
    return result, records


def _expected(records):
    dice = {
        (f"dice/{site}", r["number"]): float(np.mean(v)) for r in records for site, v in (r["scores"] or {}).items()
    }
    elbo = [term for r in records for term in r["details"].get("elbo", [])]
    return dice, elbo


def test_tensorboard_event_files_hold_the_run(vcl_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, records = vcl_run
    RunTracker("tensorboard", tmp_path).log_run("vcl", records, result.matrix, {"bwt": -0.1, "fwt": float("nan")})
    events = EventAccumulator(str(tmp_path / "vcl"), size_guidance={"scalars": 0, "images": 0}).Reload()
    dice, elbo = _expected(records)
    for (tag, step), value in dice.items():
        assert {e.step: e.value for e in events.Scalars(tag)}[step] == pytest.approx(value, rel=1e-6)
    assert [e.value for e in events.Scalars("elbo/kl_over_n")] == pytest.approx([kl for _, kl in elbo], rel=1e-6)
    assert len(events.Scalars("loss/train")) == sum(len(r["details"]["loss"]) for r in records)
    assert events.Scalars("summary/bwt")[0].value == pytest.approx(-0.1)
    assert "summary/fwt" not in events.Tags()["scalars"]  # NaN is not logged
    assert events.Tags()["images"] == ["R matrix"]


def test_mlflow_store_holds_the_run(vcl_run, tmp_path):
    from mlflow.tracking import MlflowClient

    result, records = vcl_run
    tracker = RunTracker("mlflow", tmp_path, experiment_name="tracking_test")
    tracker.log_run("vcl", records, result.matrix, {"weighted_dice": 0.5})
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("tracking_test").experiment_id])[0]
    dice, elbo = _expected(records)
    for (tag, step), value in dice.items():
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert history[step] == pytest.approx(value, rel=1e-6)
    data_terms = sorted(client.get_metric_history(run.info.run_id, "elbo/data_term"), key=lambda m: m.step)
    assert [m.value for m in data_terms] == pytest.approx([d for d, _ in elbo], rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"R.json", "R.png"} <= artifacts


def test_unknown_tracking_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tracking must be one of"):
        RunTracker("wandb", tmp_path)


class _Stop(Exception):
    pass


def test_stages_are_logged_live_so_a_stopped_run_is_complete_up_to_its_last_stage(tmp_path):
    """The tracker used to replay the state after the run: a run stopped half-way had logged nothing."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = tiny_runner(tiny_sites(tmp_path / "data"), tmp_path / "runs", epochs=2)
    tracker = RunTracker("tensorboard", tmp_path / "tb")
    log = tracker.stage_logger("vcl")

    def stopped_at_stage_2(state, record):
        if record.number == 2:  # killed after stage 2 was saved, before it was logged
            raise _Stop
        log(state, record)

    with pytest.raises(_Stop):
        runner.run("vcl", on_stage=stopped_at_stage_2)
    events = EventAccumulator(str(tmp_path / "tb" / "vcl"), size_guidance={"scalars": 0}).Reload()
    assert len(events.Scalars("loss/train")) == 2  # stage 1's two epochs, logged as soon as it was saved
    assert {e.step for e in events.Scalars("dice/alpha")} == {1}
    result = runner.run("vcl", on_stage=tracker.stage_logger("vcl"))  # resumed: stage 2 and the rest, once each
    records = [r for r in json.loads((result.directory / "state.json").read_text())["stages"] if r["number"] > 0]
    events = EventAccumulator(str(tmp_path / "tb" / "vcl"), size_guidance={"scalars": 0}).Reload()
    dice, elbo = _expected(records)
    for (tag, step), value in dice.items():
        assert [e.value for e in events.Scalars(tag) if e.step == step] == pytest.approx([value], rel=1e-6)
    assert [e.step for e in events.Scalars("loss/train")] == list(range(1, 1 + 2 * len(records)))
    assert [e.value for e in events.Scalars("elbo/kl_over_n")] == pytest.approx([kl for _, kl in elbo], rel=1e-6)
