"""The main job's plan: every strategy's runs in order, other site orders of the order-dependent ones, VCL in
site-size order, and the FedProx row as federated averaging with the proximal term."""

from __future__ import annotations

import pytest
import torch

from monai_continual.experiment import MultiSiteExperiment
from monai_continual.experiment.plan import PlanSettings, plan_runs
from monai_continual.report import RunVariant
from monai_continual.strategies.names import FEDPROX, Strategy

SITES = ["a", "b", "c"]
SIZES = {"a": 8, "b": 3, "c": 5}


def test_runs_in_order_with_other_site_orders_and_size_orders():
    plan = plan_runs(PlanSettings((Strategy.VCL, Strategy.FINE_TUNING), orders=2), SITES, SIZES)
    assert [r.key for r in plan] == ["fine_tuning", "fine_tuning@order2", "vcl", "vcl@order2", "vcl@increasing",
                                     "vcl@decreasing"]
    by_key = {r.key: r for r in plan}
    assert by_key["vcl"].order == ("a", "b", "c") and sorted(by_key["vcl@order2"].order) == SITES
    assert by_key["vcl@increasing"].order == ("b", "c", "a") and by_key["vcl@decreasing"].order == ("a", "c", "b")
    assert by_key["fine_tuning"].directory is None and by_key["fine_tuning@order2"].directory == "fine_tuning@order2"


def test_the_fedprox_row_is_federated_averaging_with_the_proximal_term():
    options = {Strategy.FEDERATED_AVERAGING: {"rounds": 4, "local_epochs": 3}}
    settings = PlanSettings((Strategy.FEDERATED_AVERAGING,), options, fedprox={"proximal_mu": 0.01})
    main, fedprox = plan_runs(settings, SITES, SIZES)
    assert (main.key, main.variant, dict(main.options)) == ("federated_averaging", RunVariant.MAIN,
                                                            options[Strategy.FEDERATED_AVERAGING])
    assert (fedprox.key, fedprox.strategy, fedprox.variant, fedprox.directory) == (
        FEDPROX, Strategy.FEDERATED_AVERAGING, RunVariant.FEDPROX, FEDPROX)
    assert dict(fedprox.options) == {"rounds": 4, "local_epochs": 3, "proximal_mu": 0.01}
    assert [r.key for r in plan_runs(PlanSettings((Strategy.FEDERATED_AVERAGING,), options), SITES, SIZES)] == [
        "federated_averaging"]
    with pytest.raises(ValueError, match="proximal_mu > 0"):
        PlanSettings((Strategy.FEDERATED_AVERAGING,), options, fedprox={"proximal_mu": 0.0})
    with pytest.raises(ValueError, match="proximal_mu"):
        PlanSettings((Strategy.FEDERATED_AVERAGING,), options, fedprox={"proximal_mu": -1.0})


def test_the_experiment_takes_fedprox_as_a_row_name(tmp_path):
    network = torch.nn.Conv3d(1, 4, 1)
    experiment = MultiSiteExperiment(tmp_path, network, None, None, 4, strategies=["federated_averaging", "fedprox"],
                                     strategy_options={"fedprox": {"proximal_mu": 0.1}},
                                     runner_options={"epochs": 6})
    assert experiment.strategies == [Strategy.FEDERATED_AVERAGING]
    # the options given for one row leave the others at the recommended ones for the run's 6 epochs
    assert experiment.plan_settings.fedprox_options() == {"rounds": 2, "local_epochs": 3, "proximal_mu": 0.1}
    assert experiment.plan_settings.options(Strategy.CYCLIC_WEIGHT_TRANSFER) == {"epochs_per_visit": 3, "cycles": 2,
                                                                                "evaluate": "last_cycle"}
    own = MultiSiteExperiment(tmp_path, network, None, None, 4,
                              strategy_options={"cyclic_weight_transfer": {"epochs_per_visit": 1, "cycles": 6}})
    assert own.plan_settings.options(Strategy.CYCLIC_WEIGHT_TRANSFER) == {"epochs_per_visit": 1, "cycles": 6}
    default = MultiSiteExperiment(tmp_path, network, None, None, 4, strategies=["fedprox"])
    assert default.plan_settings.fedprox == {"proximal_mu": 0.01} and default.strategies == []
    with pytest.raises(ValueError, match="unknown strategies.*fedprox"):
        MultiSiteExperiment(tmp_path, network, None, None, 4, strategies=["fedprox", "fedavg"])
