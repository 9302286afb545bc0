"""Federated nnU-Net planning against nnU-Net's own planner on the pooled data: two tiny sites fingerprinted apart,
merged, planned; the same cases pooled into one dataset and planned by nnU-Net directly; and the checks of the
fingerprint and plans files that travel between sites."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from monai_continual.data import SiteProfile, make_sites  # noqa: E402
from monai_continual.nnunet import cli, export_nnunet_datasets  # noqa: E402
from monai_continual.nnunet.fingerprints import (  # noqa: E402
    QUANTILE_LEVELS,
    FingerprintError,
    load_fingerprint,
    merge_fingerprints,
)
from monai_continual.nnunet.planning import PLANNED_DATASET_KEY, check_shared_plans, shared_plans  # noqa: E402

ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "2"}
PROG = "python -m monai_continual.nnunet"
SAMPLES_PER_CASE = 2000
#: the plans' parts that merging approximates (the foreground median and 0.5/99.5 percentiles are in it)
APPROXIMATE = ("foreground_intensity_properties_per_channel",)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Two sites of other grids, spacings and contrasts, fingerprinted and planned from their fingerprints;
    and their cases pooled into one dataset, fingerprinted and planned by nnU-Net directly."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    root = tmp_path_factory.mktemp("federated_planning")
    paths = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed",
             "nnUNet_results": root / "results"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**ENV, **{k: str(v) for k, v in paths.items()}}.items():
            patch.setenv(key, value)
        sites = {}
        for first_id, profile, seed, shape in ((961, SiteProfile("alpha", 4, "t1", noise=0.02), 1, (16, 20, 16)),
                                               (962, SiteProfile("beta", 4, "t2", noise=0.03, scale=1.5), 2,
                                                (18, 16, 14))):
            datalist = make_sites(root / profile.name, sites=[profile], seed=seed, shape=shape, figure=False,
                                  progress=False)
            sites.update(export_nnunet_datasets(datalist, paths["nnUNet_raw"], first_id=first_id))
        pooled = paths["nnUNet_raw"] / "Dataset963_pooled"
        cases = 0
        for name in sites.values():
            for folder in ("imagesTr", "labelsTr"):
                shutil.copytree(paths["nnUNet_raw"] / name / folder, pooled / folder, dirs_exist_ok=True)
            cases += json.loads((paths["nnUNet_raw"] / name / "dataset.json").read_text())["numTraining"]
        document = json.loads((paths["nnUNet_raw"] / sites["alpha"] / "dataset.json").read_text())
        (pooled / "dataset.json").write_text(json.dumps({**document, "numTraining": cases, "name": pooled.name}))

        fingerprints = [root / f"{site}.json" for site in sites]
        for name, file in zip(sites.values(), fingerprints):
            assert cli.main(["fingerprint", name, "-o", str(file), "--samples-per-case", str(SAMPLES_PER_CASE)]) == 0
        plans_path = root / "plans.json"
        assert cli.main(["plan-from-fingerprints", *map(str, fingerprints), "-o", str(plans_path)]) == 0

        # nnU-Net on the pooled data; its sampling budget set so that every case draws what it drew at its site
        extractor = DatasetFingerprintExtractor(963, num_processes=1)
        extractor.num_foreground_voxels_for_intensitystats = SAMPLES_PER_CASE * cases
        extractor.show_progress_bar = False
        pooled_fingerprint = extractor.run()
        patch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's planner sets torch's threads to it
        pooled_plans = ExperimentPlanner(963).plan_experiment()
        yield {
            "root": root, "sites": sites, "fingerprints": fingerprints, "plans": json.loads(plans_path.read_text()),
            "plans_path": plans_path, "pooled_fingerprint": json.loads(json.dumps(pooled_fingerprint)),
            "pooled_plans": json.loads(json.dumps(pooled_plans)), "cases": cases, **paths,
        }


def test_fingerprints_hold_aggregates_only(federation):
    for file in federation["fingerprints"]:
        text = file.read_text()
        for private in ("alpha_0", "beta_0", "Dataset96", str(federation["root"]), "imagesTr", ".nii.gz\""):
            assert private not in text.replace('"file_ending": ".nii.gz"', ""), (file.name, private)
        assert set(json.loads(text)["dataset"]) == {"channel_names", "labels", "file_ending"}


def test_merged_fingerprint_is_the_pooled_one_in_its_exact_parts(federation):
    merged = merge_fingerprints([load_fingerprint(f) for f in federation["fingerprints"]])
    pooled = federation["pooled_fingerprint"]
    assert merged["spacings"] == pooled["spacings"]  # concatenated in the pooled dataset's case order
    assert merged["shapes_after_crop"] == pooled["shapes_after_crop"]
    assert merged["median_relative_size_after_cropping"] == pooled["median_relative_size_after_cropping"]
    ours, theirs = (f["foreground_intensity_properties_per_channel"]["0"] for f in (merged, pooled))
    assert (ours["min"], ours["max"]) == (theirs["min"], theirs["max"])
    # nnU-Net accumulates its float32 samples in float32: the same values to float32 precision
    assert ours["mean"] == pytest.approx(theirs["mean"], rel=1e-6)
    assert ours["std"] == pytest.approx(theirs["std"], rel=1e-6)
    spread = theirs["max"] - theirs["min"]
    errors = {k: abs(ours[k] - theirs[k]) / spread for k in ("median", "percentile_00_5", "percentile_99_5")}
    print(f"merged vs pooled, as fractions of the intensity range: {json.dumps(errors)}; pooled {theirs}; "
          f"merged {ours}")
    assert max(errors.values()) < 0.01


def test_merged_plans_equal_nnunets_plans_of_the_pooled_data(federation):
    plans, pooled = federation["plans"], federation["pooled_plans"]
    assert set(plans["configurations"]) == set(pooled["configurations"])
    for name, configuration in pooled["configurations"].items():
        ours = plans["configurations"][name]
        for key in ("patch_size", "spacing", "median_image_size_in_voxels", "batch_size", "architecture",
                    "normalization_schemes", "use_mask_for_norm"):
            assert ours[key] == configuration[key], (name, key)
    exact = {k: v for k, v in shared_plans(plans).items() if k not in (*APPROXIMATE, PLANNED_DATASET_KEY)}
    assert exact == {k: v for k, v in shared_plans(pooled).items() if k not in APPROXIMATE}
    assert plans[PLANNED_DATASET_KEY]["numTraining"] == federation["cases"]
    # neither site's alone: the pooled median spacing and shape lie between the sites' own
    pooled_median = [np.median(federation["pooled_fingerprint"][k], 0) for k in ("spacings", "shapes_after_crop")]
    for file in federation["fingerprints"]:
        site = load_fingerprint(file)
        for key, median in zip(("spacings", "shapes_after_crop"), pooled_median):
            assert not np.allclose(np.median(site[key], 0), median), (file.name, key)


def _site_env(monkeypatch, federation, preprocessed=None) -> None:
    for key, value in {**ENV, "nnUNet_raw": federation["nnUNet_raw"],
                       "nnUNet_preprocessed": preprocessed or federation["nnUNet_preprocessed"]}.items():
        monkeypatch.setenv(key, str(value))


def test_each_site_preprocesses_its_own_dataset_with_the_plans(federation, monkeypatch):
    _site_env(monkeypatch, federation)
    sites = list(federation["sites"].values())
    for name in sites:
        assert cli.main(["preprocess", "--plans-file", str(federation["plans_path"]), name, "-c", "3d_fullres"]) == 0
        written = json.loads((federation["nnUNet_preprocessed"] / name / "nnUNetPlans.json").read_text())
        assert written["dataset_name"] == name
        assert shared_plans(written) == shared_plans(federation["plans"])
        raw_cases = list((federation["nnUNet_raw"] / name / "imagesTr").glob("*.nii.gz"))
        data = federation["nnUNet_preprocessed"] / name / "nnUNetPlans_3d_fullres"
        assert len(list(data.glob("*.b2nd"))) == 2 * len(raw_cases)  # image + segmentation per case
    check_shared_plans(sites)  # the sites' weights fit one another


def _fingerprint_error(tmp_path, document, name="bad.json") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(FingerprintError) as caught:
        load_fingerprint(path)
    assert str(caught.value).startswith(f"fingerprint file {path}: ")
    return str(caught.value)


def test_fingerprint_files_are_checked_when_read(federation, tmp_path, capsys):
    good = json.loads(federation["fingerprints"][0].read_text())

    def changed(**keys):
        return {**good, **keys}

    assert "not valid JSON" in _fingerprint_error(tmp_path, "{")
    assert "NaN" in _fingerprint_error(tmp_path, json.dumps(good).replace('"mean": ', '"mean": NaN, "x": ', 1))
    assert "case_names" in _fingerprint_error(tmp_path, changed(case_names=["alpha_000"]))
    assert "spacings[0]" in _fingerprint_error(tmp_path, changed(spacings=[[-1.0, 1.0, 1.0]] + good["spacings"][1:]))
    assert "one entry per case" in _fingerprint_error(tmp_path, changed(spacings=good["spacings"][:1]))
    moments = {"0": {**good["foreground_intensity_moments_per_channel"]["0"], "count": True}}
    assert "moments" in _fingerprint_error(tmp_path, changed(foreground_intensity_moments_per_channel=moments))
    quantiles = {"0": good["foreground_intensity_quantiles_per_channel"]["0"][::-1]}
    error = _fingerprint_error(tmp_path, changed(foreground_intensity_quantiles_per_channel=quantiles))
    assert "non-decreasing" in error
    assert "channel_names" in _fingerprint_error(tmp_path, changed(dataset={**good["dataset"],
                                                                            "channel_names": {"0": "/data/x"}}))
    assert "median" in _fingerprint_error(tmp_path, changed(median_relative_size_after_cropping=0.5))
    # fingerprints that cannot be merged: other labels, other sampling
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed(dataset={**good["dataset"], "labels": {"background": 0, "tumour": 1}})))
    with pytest.raises(FingerprintError, match=f"fingerprint file {other}: dataset .* differs"):
        merge_fingerprints([load_fingerprint(federation["fingerprints"][0]), load_fingerprint(other)],
                           [f"fingerprint file {f}" for f in (federation["fingerprints"][0], other)])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["plan-from-fingerprints", str(federation["fingerprints"][0]), str(other), "-o",
                  str(tmp_path / "plans.json")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and str(other) in error
    assert error.startswith(f"{PROG} plan-from-fingerprints: error: fingerprint file {other}: ")
    assert not (tmp_path / "plans.json").exists()


def _network_argument(plans: dict, key: str, value: str) -> dict:
    configuration = plans["configurations"]["3d_fullres"]
    architecture = {**configuration["architecture"],
                    "arch_kwargs": {**configuration["architecture"]["arch_kwargs"], key: value}}
    return {**plans, "configurations": {**plans["configurations"],
                                        "3d_fullres": {**configuration, "architecture": architecture}}}


def test_without_the_checks_plans_could_run_code_and_write_anywhere():
    """What the refused plans below would do: nnU-Net resolves layer names with ``pydoc.locate``, which reaches
    ``os.system`` through a ``torch.nn`` prefix, and joins ``data_identifier`` to its folder, where an absolute or
    ``..`` path leaves it (nnU-Net removes that folder before preprocessing into it)."""
    import pydoc

    assert pydoc.locate("torch.nn.modules.module.torch.os.system") is os.system
    assert os.path.join("/data/preprocessed", "Dataset501_a", "/srv/hospital") == "/srv/hospital"


def _configuration(plans: dict, architecture: dict | None = None, **changes) -> dict:
    configuration = plans["configurations"]["3d_fullres"]
    changed = {**configuration, **changes,
               "architecture": {**configuration["architecture"], **(architecture or {})}}
    return {**plans, "configurations": {**plans["configurations"], "3d_fullres": changed}}


@pytest.mark.parametrize("change, expected, options", [
    (lambda plans: "{not json", "not valid JSON", []),
    (lambda plans: {k: v for k, v in plans.items() if k != "configurations"}, "not nnU-Net plans", []),
    (lambda plans: {**plans, PLANNED_DATASET_KEY: {**plans[PLANNED_DATASET_KEY],
                                                   "labels": {"background": 0, "tumour": 1}}},
     "planned for labels", []),
    (lambda plans: {**plans, "foreground_intensity_properties_per_channel": {
        **plans["foreground_intensity_properties_per_channel"], "1": plans[
            "foreground_intensity_properties_per_channel"]["0"]}}, "channel count", []),
    (lambda plans: plans, "has no configuration ['3d_lowres']", ["-c", "3d_lowres"]),
    (lambda plans: _network_argument(plans, "nonlin", "builtins.exec"),
     "nonlin='builtins.exec' is not a class of torch.nn.*", []),
    # a prefix is not enough: nnU-Net's lookup walks attributes through imported modules to os.system
    (lambda plans: _network_argument(plans, "nonlin", "torch.nn.modules.module.torch.os.system"),
     "nonlin='torch.nn.modules.module.torch.os.system' is not a class of torch.nn.* (it names <built-in function "
     "system>)", []),
    (lambda plans: _configuration(plans, architecture={"network_class_name": "dynamic_network_architectures."
                                                       "architectures.unet.torch.os.system"}),
     "the network class='dynamic_network_architectures.architectures.unet.torch.os.system' is not a class", []),
    (lambda plans: _network_argument(plans, "nonlin_kwargs", {"command": "id"}),
     "the network argument nonlin_kwargs.command must hold numbers", []),
    (lambda plans: _configuration(plans, data_identifier="../../elsewhere"),
     "data_identifier '../../elsewhere' is not a folder name", []),
    (lambda plans: _configuration(plans, resampling_fn_data="os.system"),
     "'os.system' is not the plain name of one of nnU-Net's", []),
    (lambda plans: _configuration(plans, batch_size=10 ** 9), "whole numbers in 1..4096", []),
    (lambda plans: {**plans, "label_manager": "os.system"}, "label_manager is not the plain name", []),
])
def test_plans_files_that_do_not_fit_are_refused_in_one_line(federation, tmp_path, capsys, monkeypatch, change,
                                                               expected, options):
    _site_env(monkeypatch, federation, tmp_path / "preprocessed")
    changed = change(federation["plans"])
    path = tmp_path / "plans.json"
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    site = federation["sites"]["alpha"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["preprocess", "--plans-file", str(path), site, *options])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith(f"{PROG} preprocess: error: plans file {path}: ") and expected in error, error
    assert not (tmp_path / "preprocessed").exists()


def test_moments_and_quantiles_merge_like_pooled_samples():
    from monai_continual.nnunet.fingerprints import _merge_moments, _merge_quantiles

    rng = np.random.default_rng(0)
    parts = [rng.normal(0.5, 0.1, 4000), rng.normal(30.0, 5.0, 6000), rng.gamma(2.0, 3.0, 2000)]
    summaries = [{"count": p.size, "mean": p.mean(), "sum_squared_deviations": ((p - p.mean()) ** 2).sum()}
                 for p in parts]
    pooled = np.concatenate(parts)
    merged = _merge_moments(summaries)
    assert merged["count"] == pooled.size
    assert merged["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    assert merged["sum_squared_deviations"] / merged["count"] == pytest.approx(pooled.var(), rel=1e-12)
    quantiles = [np.percentile(p, QUANTILE_LEVELS).tolist() for p in parts]
    assert _merge_quantiles(quantiles[:1], [4000]) == quantiles[0]  # one site: its own percentiles, exactly
    ours = dict(zip(QUANTILE_LEVELS, _merge_quantiles(quantiles, [p.size for p in parts])))
    for level in (0.5, 50.0, 99.5):
        assert ours[level] == pytest.approx(np.percentile(pooled, level), abs=0.02 * np.ptp(pooled)), level
    assert (ours[0.0], ours[100.0]) == (pooled.min(), pooled.max())


def test_plan_commands_are_in_the_help_without_nnunet():
    parser = cli.build_parser()
    text = parser.format_help()
    for command in ("fingerprint", "plan-from-fingerprints", "preprocess"):
        assert command in text
    args = parser.parse_args(["preprocess", "--plans-file", "plans.json", "501"])
    assert (args.dataset, args.configurations, args.num_processes) == ("501", ["3d_fullres"], 1)


def test_planning_over_sites_refuses_what_does_not_fit_on_both_sides(federation, tmp_path, monkeypatch):
    """The server's planning phase and a site's answers, in one process (the simulator run is in test_nnunet.py):
    a fingerprint with more than aggregates is refused on arrival; a site refuses plans that name other code, another
    identifier, or differ from the plans its dataset already holds under that identifier, telling the server why
    without its paths; a site already preprocessed with the same plans answers their hash without redoing it."""
    from monai_continual.federated.nnunet_planning import PLANS_TASK, PlanningSite, plan_over_sites
    from monai_continual.federated.payload import REPLY_KEYS, PayloadError, check_payload
    from monai_continual.nnunet.fingerprints import nnunet_fingerprint
    from monai_continual.nnunet.planning import plans_sha256
    from monai_continual.nnunet.settings import NnUNetSiteSettings

    _site_env(monkeypatch, federation, tmp_path / "preprocessed")
    name = federation["sites"]["alpha"]
    site = PlanningSite(None, name, NnUNetSiteSettings(), tmp_path / "site")

    def send(task, to, params, meta):
        check_payload(meta, params, None)
        _, reply, _ = site.handle(task, meta, params)
        check_payload(reply, {}, None)
        return {}, {k: v for k, v in reply.items() if k in REPLY_KEYS}, {}

    received = []

    def hostile(task, to, params, meta):  # a site that adds its case names to its fingerprint
        _, reply, _ = send(task, to, params, meta)
        received.append(reply["fingerprint"])
        return {}, {**reply, "fingerprint": {**reply["fingerprint"], "case_names": ["alpha_000"]}}, {}

    server = tmp_path / "server"
    with pytest.raises(PayloadError, match=f"site '{name}': its fingerprint: unexpected keys \\['case_names'\\]"):
        plan_over_sites(hostile, [name], server, {}, samples_per_case=SAMPLES_PER_CASE, log=None)
    assert "case_names" in (server / "error.txt").read_text() and not (server / "planning" / "plans.json").exists()
    assert received == [json.loads(federation["fingerprints"][0].read_text())]  # what the fingerprint command writes

    plans = federation["plans"]
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    other_code = {**plans, "configurations": {**plans["configurations"], "3d_fullres": {
        **plans["configurations"]["3d_fullres"], "architecture": {**architecture, "network_class_name": "os.system"}}}}
    folder = tmp_path / "preprocessed" / name
    for sent, reason in ((other_code, "the network class='os.system' is not a class of dynamic_network_architectures"),
                         ({**plans, "plans_name": "nnUNetPlansOther"}, "this run's plans are 'nnUNetPlans'")):
        _, reply, _ = site.handle(PLANS_TASK, {"task": PLANS_TASK, "plans": sent}, {})
        assert reason in reply["error"] and "/" not in reply["error"] and str(tmp_path) not in reply["error"]
        assert not (folder / "nnUNetPlans.json").exists()
        assert not list((tmp_path / "site").rglob("received_plans.json"))  # refused in memory: nothing stored
    # plans under the same identifier made elsewhere (another run, a local plan) are kept, not replaced
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps({**plans, "dataset_name": name, "label_manager": "x"}))
    kept = (folder / "nnUNetPlans.json").read_text()
    _, reply, _ = site.handle(PLANS_TASK, {"task": PLANS_TASK, "plans": plans}, {})
    assert reply["error"] == (f"site '{name}': dataset {name} was planned with other plans named 'nnUNetPlans'; "
                              "plan under another identifier, or remove those plans to replace them.")
    assert (folder / "nnUNetPlans.json").read_text() == kept
    # the same plans, already preprocessed (nnU-Net's output stands in): the site only answers their hash
    (folder / "nnUNetPlans.json").unlink()
    (folder / "nnUNetPlans.preprocessed.json").write_text(json.dumps(
        {"plans": shared_plans(plans), "configurations": ["3d_fullres"]}))
    (folder / "dataset_fingerprint.json").write_text(json.dumps(nnunet_fingerprint(received[0])))
    _, reply, _ = site.handle(PLANS_TASK, {"task": PLANS_TASK, "plans": plans}, {})
    assert reply == {"plans_sha256": plans_sha256(plans)}
    assert not (folder / "nnUNetPlans_3d_fullres").exists()
    assert list((tmp_path / "site").rglob("received_plans.json"))  # plans that pass the checks are kept
    # a held-out site (test cases only) takes the plans to be scored with, under its own name; nothing to preprocess
    datalist = make_sites(tmp_path / "omega", sites=[SiteProfile("omega", 2, "t1", held_out=True)], seed=3,
                          shape=(16, 20, 16), figure=False, progress=False)
    omega = export_nnunet_datasets(datalist, federation["nnUNet_raw"], first_id=964, sites=["omega"])["omega"]
    _, reply, _ = PlanningSite(None, omega, NnUNetSiteSettings(), tmp_path / "omega_site").handle(
        PLANS_TASK, {"task": PLANS_TASK, "plans": plans}, {})
    assert reply == {"plans_sha256": plans_sha256(plans)}
    held = json.loads((tmp_path / "preprocessed" / omega / "nnUNetPlans.json").read_text())
    assert (held["dataset_name"], held["image_reader_writer"]) == (omega, "SimpleITKIO")
    assert sorted(p.name for p in (tmp_path / "preprocessed" / omega).iterdir()) == ["nnUNetPlans.json"]
