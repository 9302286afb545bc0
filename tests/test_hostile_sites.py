"""One hostile site among three: each attack measurably degrades the model without the server's bounds, and with
them the final model scores within 0.05 Dice of the run without the hostile site, the site named in summary.json.

The per-attack runs use the in-process transport of ``loopback.py`` (the server's run and real site workers with
the MONAI executor, only the messages in memory); the NVFlare simulator run at the end shows that the simulator
computes exactly the same run, stage by stage, with the hostile client of ``hostile_client.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvflare")

from loopback import loopback_run  # noqa: E402
from monai_continual.data import SiteProfile, make_sites  # noqa: E402
from monai_continual.federated import FederatedRun  # noqa: E402
from monai_continual.federated.boundary import BoundaryPolicy  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs" / "federated.json"
HOSTILE_CLIENT = Path(__file__).with_name("hostile_client.py")
# three T1 sites (an honest beta barely moves the others' Dice), beta the one that lies
SITES = [SiteProfile("alpha", 4, "t1", noise=0.02), SiteProfile("beta", 4, "t1", noise=0.03),
         SiteProfile("gamma", 4, "t1", noise=0.03), SiteProfile("omega", 2, "t1", noise=0.04, held_out=True)]
HONEST = ("alpha", "gamma")
OVERRIDES = {"channels": 12, "dilations": [1, 2, 1], "epochs": 15, "mc_samples": 2, "device": "cpu", "threads": 1,
             "learning_rate": 0.01, "bayes_learning_rate": 0.01}
RUNS = {"federated_averaging": {"rounds": 6, "local_epochs": 3}, "dwc": {}}
ATTACKS = [("count", "federated_averaging"), ("scale", "federated_averaging"), ("random", "federated_averaging"),
           ("shift", "dwc")]


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_sites(tmp_path_factory.mktemp("hostile_sites"), sites=SITES, seed=2, shape=(16, 20, 16), figure=False,
                      progress=False)


@pytest.fixture(scope="module")
def baselines(datalist, tmp_path_factory):
    """Each strategy's run without the hostile site's stages: the honest sites only."""
    out = tmp_path_factory.mktemp("baselines")
    return {s: loopback_run(CONFIG, datalist, out / s, s, o, OVERRIDES, sites=HONEST) for s, o in RUNS.items()}


def honest_dice(summary: dict) -> float:
    """The final model's mean Dice over the honest sites' test volumes."""
    (scores,) = summary["per_volume_dice"].values()
    return float(np.mean([v for site in HONEST for v in scores[site]]))


def named(summary: dict, site: str) -> bool:
    return any(event["site"] == site for events in summary["boundary"].values() for event in events)


@pytest.mark.slow
@pytest.mark.parametrize("attack,strategy", ATTACKS)
def test_one_hostile_site_degrades_the_model_without_the_bounds_and_not_with_them(datalist, baselines, tmp_path,
                                                                                  attack, strategy):
    base = honest_dice(baselines[strategy])
    off = loopback_run(CONFIG, datalist, tmp_path / "off", strategy, RUNS[strategy], OVERRIDES, attack=f"beta:{attack}",
                       boundary=BoundaryPolicy.off().to_dict())
    on = loopback_run(CONFIG, datalist, tmp_path / "on", strategy, RUNS[strategy], OVERRIDES, attack=f"beta:{attack}")
    print(f"{attack}: without the hostile site {base:.3f}, bounds off {honest_dice(off):.3f}, on {honest_dice(on):.3f}")
    assert honest_dice(off) < base - 0.1  # the attack works when nothing bounds it
    assert abs(honest_dice(on) - base) <= 0.05
    assert named(on, "beta") and not named(on, "alpha") and not named(on, "gamma")


@pytest.mark.slow
def test_nan_scores_are_refused_and_leave_the_model_alone(datalist, baselines, tmp_path):
    strategy = "federated_averaging"
    on = loopback_run(CONFIG, datalist, tmp_path, strategy, RUNS[strategy], OVERRIDES, attack="beta:nan_scores")
    assert abs(honest_dice(on) - honest_dice(baselines[strategy])) <= 0.05
    assert on["per_volume_dice"][strategy]["beta"] == [] and named(on, "beta")
    assert all(e["scores"] == "refused" for events in on["boundary"].values() for e in events)


@pytest.mark.slow
def test_a_site_refuses_a_received_model_worse_than_the_last_it_accepted(datalist, tmp_path):
    """Cyclic weight transfer past a site that publishes random weights: without the check the next site trains
    from them; with it the next site trains from the last model it accepted and the refusal is listed."""
    options = {"cycles": 3, "epochs_per_visit": 3}
    overrides = dict(OVERRIDES, epochs=3)
    off = loopback_run(CONFIG, datalist, tmp_path / "off", "cyclic_weight_transfer", options, overrides,
                       attack="beta:random")
    on = loopback_run(CONFIG, datalist, tmp_path / "on", "cyclic_weight_transfer", options, overrides,
                      attack="beta:random", accept_margin=0.05)
    states = {k: {r["number"]: r
                  for r in json.loads((tmp_path / k / "cyclic_weight_transfer" / "state.json").read_text())["stages"]}
              for k in ("off", "on")}
    assert states["off"][6]["loaded"]["start"] == states["off"][5]["published"]  # gamma took beta's random weights
    refused = [e for events in on["boundary"].values() for e in events if e.get("start") == "refused by the site"]
    assert refused and all(e["site"] in HONEST for e in refused)
    refusing = [n for n, r in states["on"].items() if r["details"].get("refused_start")]
    assert refusing and all(states["on"][n - 1]["sites"] == ["beta"] for n in refusing)  # only beta's models
    assert honest_dice(on) > honest_dice(off) + 0.05


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_simulator_runs_the_same_bounded_run_with_a_hostile_client(datalist, tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_CONTINUAL_TEST_ATTACK", "beta:count,random,nan_scores")
    options, overrides = {"rounds": 2, "local_epochs": 1}, dict(OVERRIDES, channels=4)
    run = FederatedRun(CONFIG, "federated_averaging", datalist, tmp_path / "simulator", options=options,
                       overrides=overrides, min_clients=2, task_request_interval=0.2)
    run.script = HOSTILE_CLIENT
    summary = run.run()
    twin = loopback_run(CONFIG, datalist, tmp_path / "loopback", "federated_averaging", options, overrides,
                        attack="beta:count,random,nan_scores", min_clients=2)

    def records(path):
        return [(r["number"], r["published"], r["loaded"], r["scores"]) for r in json.loads(path.read_text())["stages"]]
    assert records(run.run_dir / "state.json") == records(tmp_path / "loopback" / "federated_averaging" / "state.json")
    assert summary["boundary"] == twin["boundary"] and named(summary, "beta")
    events = [e for events in summary["boundary"].values() for e in events]
    assert {"count", "update", "scores"} <= {k for e in events for k in e}
