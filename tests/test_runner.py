"""The site-aware runner: weights really move, schedules are kept, DWC is Eq. 17, bad input is caught early."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from monai_continual import cli
from monai_continual.consolidation import DirectoryWeightStore, Posterior, consolidate_dwc
from monai_continual.data import DatalistError, load_multisite_datalist
from monai_continual.engines import STRATEGIES
from monai_continual.metrics import ContinualMatrix, backward_transfer, forgetting, forward_transfer
from monai_continual.utils.tensor_files import TensorFileError
from runner_utils import tiny_runner, tiny_sites

TRAIN_SITES = ["alpha", "beta", "gamma"]
ALL_SITES = TRAIN_SITES + ["omega"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return tiny_sites(tmp_path_factory.mktemp("tiny"))


def _chain_is_unbroken(transfers):
    """Stage i started from exactly the weights stage i-1 published (stage 0 is the shared initial weights)."""
    published = [t["published"] for t in transfers]
    for previous, current in zip(published, transfers[1:]):
        assert current["loaded"]["start"] == previous


def test_weight_transfer_strategies_move_weights(sites, tmp_path):
    runner = tiny_runner(sites, tmp_path)
    for strategy in ("single_weight_transfer", "fine_tuning"):
        result = runner.run(strategy)
        store = DirectoryWeightStore(result.directory / "store")
        entries = sorted(store.entries(), key=lambda e: e.stage)
        assert [e.site for e in entries] == ["init"] + TRAIN_SITES
        assert result.transfers[0]["loaded"]["start"] == entries[0].sha256  # the first site starts from the shared init
        _chain_is_unbroken(result.transfers)
        assert [t["published"] for t in result.transfers] == [e.sha256 for e in entries[1:]]
        assert result.matrix.num_stages == 3 and result.matrix.sites == ALL_SITES
        assert set(result.scores) == set(ALL_SITES) and all(len(v) == 2 for v in result.scores.values())


def test_cyclic_transfer_schedule_skip_and_order(sites, tmp_path):
    runner = tiny_runner(sites, tmp_path)
    result = runner.run(
        "cyclic_weight_transfer", cycles=3, epochs_per_visit=1, order=["gamma", "alpha", "beta"], skip=["beta"]
    )
    assert [t["site"] for t in result.transfers] == ["gamma", "alpha"] * 3  # beta skipped, order kept
    assert len(DirectoryWeightStore(result.directory / "store").entries()) == 1 + 6
    _chain_is_unbroken(result.transfers)
    assert "beta" not in result.matrix.trained_sites()
    assert not (result.directory / "sites" / "beta").exists()
    by_iterations = tiny_runner(sites, tmp_path / "iterations").run(
        "cyclic_weight_transfer", cycles=2, iterations_per_visit=1
    )
    assert len(by_iterations.transfers) == 6


def test_cyclic_transfer_scoring_the_last_cycle_only_trains_the_same_models_and_gives_the_same_bwt(sites, tmp_path,
                                                                                                     capsys):
    every = tiny_runner(sites, tmp_path / "every").run("cyclic_weight_transfer", cycles=3, epochs_per_visit=1)
    last = tiny_runner(sites, tmp_path / "last").run("cyclic_weight_transfer", cycles=3, epochs_per_visit=1,
                                                     evaluate="last_cycle")
    # scoring is not part of training: every visit publishes the same model
    assert [t["published"] for t in last.transfers] == [t["published"] for t in every.transfers]
    assert every.matrix.num_stages == 9 and last.matrix.num_stages == 3
    assert last.matrix.labels == every.matrix.labels[-3:]
    assert last.matrix.as_array().tolist() == every.matrix.as_array()[-3:].tolist()
    assert last.scores == every.scores
    assert backward_transfer(last.matrix) == backward_transfer(every.matrix)
    # forward transfer and forgetting need the first visits: undefined without them, also after a JSON round trip
    assert every.matrix.complete and not last.matrix.complete
    saved = ContinualMatrix.load_json(last.directory / "R.json")
    baseline = {s: 0.5 for s in TRAIN_SITES}
    assert not saved.complete and math.isnan(forward_transfer(saved, baseline)) and math.isnan(forgetting(saved))
    assert not math.isnan(forward_transfer(every.matrix, baseline)) and not math.isnan(forgetting(every.matrix))
    for path in (last.directory / "R.json", last.directory / "R.csv"):  # the CSV's JSON twin says it is incomplete
        assert cli.main(["report", str(path), "--plot", str(tmp_path / "R.png")]) == 0
        assert "forgetting: +nan" in capsys.readouterr().out
    with pytest.raises(ValueError, match="every_visit"):
        tiny_runner(sites, tmp_path / "bad").run("cyclic_weight_transfer", evaluate="first_cycle")


def test_replay_stages_see_the_buffer(sites, tmp_path):
    result = tiny_runner(sites, tmp_path).run("replay", capacity_per_site=2)
    data = load_multisite_datalist(sites)
    sizes = [len(data.site(s).training) for s in TRAIN_SITES]
    kept = [min(2, n) for n in sizes]  # K = 2 of every earlier site, all of a smaller site
    assert kept[1] == 1  # beta has a single training case
    assert [t["replay_items"] for t in result.transfers] == [0, kept[0], kept[0] + kept[1]]
    assert [t["dataset_size"] for t in result.transfers] == [sizes[0], sizes[1] + kept[0], sizes[2] + kept[0] + kept[1]]
    manifest = json.loads((result.directory / "replay" / "stage0003" / "replay_manifest.json").read_text())
    assert {k: len(v) for k, v in manifest["kept"].items()} == dict(zip(TRAIN_SITES, kept))


def test_vcl_stages_carry_the_previous_posterior_as_prior(sites, tmp_path):
    result = tiny_runner(sites, tmp_path).run("vcl")
    store = DirectoryWeightStore(result.directory / "store")
    posteriors = [Posterior.load(result.directory / "posteriors" / f"stage{n:04d}.safetensors") for n in (2, 3, 4)]
    assert [t["published"] for t in result.transfers[1:]] == [p.sha256() for p in posteriors]
    # stage 1 is the MAP network of the first site; stage 2 starts from it with the He prior N(0, 2 / fan_in); every
    # later stage's prior (and start) is exactly the posterior the previous stage published
    assert result.transfers[0]["loaded"] == {"start": store.entry(0).sha256}
    assert result.transfers[1]["loaded"] == {"start": store.entry(1).sha256}
    for previous, current in zip(result.transfers[1:], result.transfers[2:]):
        assert current["loaded"] == {"start": previous["published"], "prior": previous["published"]}
    assert not torch.equal(posteriors[1].mean["layers.0.weight"], posteriors[2].mean["layers.0.weight"])
    assert result.bayesian


def test_dwc_output_is_eq_17_of_the_site_posteriors(sites, tmp_path):
    # each site keeps its optimizers across visits: alpha trains a MAP and then a Bayesian network with its own
    result = tiny_runner(sites, tmp_path, optimizer_state="site").run("dwc")
    names = {p.name for p in (result.directory / "sites" / "alpha").glob("optimizer_*")}
    # MAP stage 1, q0 stage 2, fine-tuning stage 6 (which continued stage 2's Bayesian optimizer)
    assert names == {
        "optimizer_map_stage0001.safetensors",
        "optimizer_bayes_stage0002.safetensors",
        "optimizer_bayes_stage0006.safetensors",
    }
    shared = result.directory / "posteriors"
    prior = Posterior.load(shared / "stage0002.safetensors")
    site_files = [shared / f"stage{n:04d}.safetensors" for n in (3, 4)]
    expected = consolidate_dwc(prior, site_files)
    produced = Posterior.load(shared / "stage0005.safetensors")
    for name in expected.mean:
        assert torch.equal(produced.mean[name], expected.mean[name]) and torch.equal(
            produced.std[name], expected.std[name]
        )
    for path in site_files:  # sites trained from q0 with std bounded by q0's
        site = Posterior.load(path)
        assert site.num_examples == len(load_multisite_datalist(sites).site(site.site).training)
        assert all(torch.all(site.std[n] <= prior.std[n] * (1 + 1e-6)) for n in site.std)
    assert set(result.extra) == {"dwc", "dwc_finetuned"} and result.extra["dwc_finetuned"] == result.scores
    labels = result.matrix.labels
    assert labels[0].startswith("map:alpha") and labels[-2] == "dwc r1" and labels[-1].startswith("dwc+ft")


def test_baselines(sites, tmp_path):
    runner = tiny_runner(sites, tmp_path)
    single = runner.run("single_site")
    assert single.matrix.trained_sites() == TRAIN_SITES and set(single.scores) == set(TRAIN_SITES)
    assert set(single.extra) == {f"single_site[{s}]" for s in TRAIN_SITES}
    ensemble = runner.run("ensemble")
    assert set(ensemble.scores) == set(ALL_SITES)
    pooled = runner.run("centrally_hosted")
    data = load_multisite_datalist(sites)
    assert pooled.transfers[0]["dataset_size"] == sum(len(data.site(s).training) for s in TRAIN_SITES)
    assert set(STRATEGIES) >= {"single_site", "ensemble", "centrally_hosted"}


def test_bad_input_is_caught_and_earlier_results_stay(sites, tmp_path):
    document = json.loads(sites.read_text())
    document["sites"]["beta"]["training"] = []
    document["sites"]["beta"]["held_out"] = False
    broken = sites.parent / "no_training.json"
    broken.write_text(json.dumps(document))
    with pytest.raises(DatalistError, match="site 'beta'.*no training cases"):
        tiny_runner(broken, tmp_path)
    document = json.loads(sites.read_text())
    document["sites"]["gamma"]["test"] = []
    (sites.parent / "no_test.json").write_text(json.dumps(document))
    with pytest.raises(DatalistError, match=r"\['gamma'\].*no test cases"):
        tiny_runner(sites.parent / "no_test.json", tmp_path)

    runner = tiny_runner(sites, tmp_path)
    first = runner.run("fine_tuning", order=["alpha", "beta", "gamma"])
    before = (first.directory / "R.json").read_text()
    store = DirectoryWeightStore(first.directory / "store")
    # a corrupt weight file in the store: a stage starting from it refuses it by name, the finished results stay
    latest = store.entry(3)
    path = first.directory / "store" / latest.file
    path.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)
    extended = tiny_runner(sites, tmp_path / "other")
    stages = extended.schedule("fine_tuning", order=["alpha", "beta", "gamma"])
    executor = extended.executor(first.directory, stages)
    with pytest.raises(TensorFileError, match=latest.file):
        executor._start(dataclasses.replace(stages[0], number=4, start=3), executor.settings.plain_network())
    assert (first.directory / "R.json").read_text() == before
    # a network of another architecture cannot take the published weights
    wider = tiny_runner(sites, tmp_path / "wider", network=torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1)))
    good = wider.executor(first.directory, stages)
    with pytest.raises(ValueError, match="published by site 'alpha' \\(stage 1\\) do not fit"):
        good._start(dataclasses.replace(stages[1], number=4, start=1), good.settings.plain_network())
    # settings changed under an existing run directory: refused, not mixed
    changed = tiny_runner(sites, tmp_path, batch_size=1)
    with pytest.raises(ValueError, match="other settings"):
        changed.run("fine_tuning", order=["alpha", "beta", "gamma"])
    with pytest.raises(ValueError, match="federated_magic.*Available options"):
        runner.run("federated_magic")
    with pytest.raises(
        TypeError, match=r"unexpected options \['cycles'\]; its options are \['epochs', 'skip', 'order'\]"
    ):
        runner.run("fine_tuning", cycles=3)
    with pytest.raises(ValueError, match="epochs_per_visit must be a number >= 1, got 0"):
        runner.run("cyclic_weight_transfer", epochs_per_visit=0)
    with pytest.raises(ValueError, match=r"\['alpha', 'nowhere'\] must list distinct sites.*unknown: \['nowhere'\]"):
        runner.run("cyclic_weight_transfer", order=["alpha", "nowhere"])


def test_federated_averaging_is_the_weighted_mean_of_the_site_models(sites, tmp_path):
    result = tiny_runner(sites, tmp_path).run("federated_averaging", rounds=1, local_epochs=1)
    store = DirectoryWeightStore(result.directory / "store")
    data = load_multisite_datalist(sites)
    sizes = [len(data.site(s).training) for s in TRAIN_SITES]
    states = [store.load(store.entry(n)) for n in (1, 2, 3)]
    averaged = store.load(store.entry(4))
    for key, value in averaged.items():  # by hand: sum_s n_s * w_s / sum_s n_s
        if value.is_floating_point():
            expected = sum(n * st[key].double() for n, st in zip(sizes, states)) / sum(sizes)
            torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    # every site started from the shared initial weights; only the average is an R-matrix row
    assert {t["loaded"]["start"] for t in result.transfers[:3]} == {store.entry(0).sha256}
    assert result.matrix.num_stages == 1 and result.matrix.labels == ["avg r1"]
    assert result.transfers[3]["loaded"]["inputs"] == [t["published"] for t in result.transfers[:3]]
