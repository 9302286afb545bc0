"""nnU-Net v2 integration on tiny nnU-Net datasets made from the embedded multi-site data: real planning,
preprocessing, nnU-Net's training loop and data loading, prediction to NIfTI, and the strategies across sites."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from forked import run_forked  # noqa: E402
from monai_continual.consolidation import Posterior, consolidate_dwc  # noqa: E402
from monai_continual.nnunet import (  # noqa: E402
    NnUNetDatasetError,
    check_datasets_compatible,
    export_nnunet_datasets,
    ext_trainer_folder,
    plan_and_preprocess_sites,
)
from monai_continual.nnunet import cli as nnunet_cli  # noqa: E402
from monai_continual.nnunet.sites import run_sites  # noqa: E402
from monai_continual.strategies.layout import RunLayout
from runner_utils import tiny_sites  # noqa: E402

ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "2"}
SHORT = ["--num-epochs", "1", "--iterations-per-epoch", "2", "--val-iterations-per-epoch", "1", "-device", "cpu"]


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """Three sites as nnU-Net datasets, planned once on the first and preprocessed with the shared plans."""
    root = tmp_path_factory.mktemp("nnunet")
    saved = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", *ENV)}
    paths = {
        "nnUNet_raw": root / "raw",
        "nnUNet_preprocessed": root / "preprocessed",
        "nnUNet_results": root / "results",
    }
    os.environ.update({k: str(v) for k, v in paths.items()}, **ENV)
    datalist = tiny_sites(root / "data")
    names = export_nnunet_datasets(datalist, paths["nnUNet_raw"], first_id=901)
    plans = plan_and_preprocess_sites(list(names.values()))
    held_out = export_nnunet_datasets(datalist, paths["nnUNet_raw"], first_id=904, sites=["omega"])[
        "omega"
    ]  # test cases only
    yield {"root": root, "names": names, "plans": plans, "held_out": held_out, "datalist": datalist, **paths}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


#: the shortest schedule of run_sites: one epoch of one training and one validation iteration, no mirroring
TINY_SCHEDULE = dict(
    epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1, mirroring=False, device="cpu", progress=False
)


@pytest.fixture(scope="module")
def site_runs(nnunet):
    """``run(strategy, **options)``: run_sites over the three sites on :data:`TINY_SCHEDULE`, each strategy and options
    run once per module; the tests that check the same run (the schedule against the MONAI runner's, VCL's and DWC's
    stages) read its results."""
    names = list(nnunet["names"].values())
    done: dict[str, object] = {}

    def run(strategy: str, **options):
        key = json.dumps([strategy, options], sort_keys=True)
        if key not in done:
            directory = nnunet["root"] / "runs" / "shared" / f"{strategy}_{len(done)}"
            done[key] = run_sites(names, strategy, directory, **options, **TINY_SCHEDULE)
        return done[key]

    return run


def _cli(nnunet, *args, check=True):
    env = dict(os.environ, **ENV, PYTHONPATH=str(Path(__file__).parent))
    done = subprocess.run(
        [sys.executable, "-m", "monai_continual.nnunet", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _checkpoint(folder: Path) -> dict:
    # a checkpoint this test just wrote with nnU-Net (pickled by nnU-Net; not a file from elsewhere)
    return torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def test_plans_are_shared_and_every_site_is_preprocessed(nnunet):
    documents = [json.loads(p.read_text()) for p in nnunet["plans"].values()]
    assert [d["dataset_name"] for d in documents] == list(nnunet["names"].values())
    strip = [{k: v for k, v in d.items() if k not in ("dataset_name", "image_reader_writer")} for d in documents]
    assert strip[0] == strip[1] == strip[2]
    for name in nnunet["names"].values():
        folder = nnunet["nnUNet_preprocessed"] / name / "nnUNetPlans_3d_fullres"
        raw = nnunet["nnUNet_raw"] / name
        assert len(list(folder.glob("*.b2nd"))) == 2 * len(list((raw / "imagesTr").glob("*.nii.gz")))  # image + seg
        assert json.loads((raw / "dataset.json").read_text())["labels"] == {"background": 0, "CSF": 1, "GM": 2, "WM": 3}


def test_bayesian_trainer_trains_predicts_and_keeps_priors(nnunet):
    name = nnunet["names"]["alpha"]
    _cli(nnunet, "train", name, "3d_fullres", "all", "-tr", "nnUNetTrainerBayesian", *SHORT, "--skip-validation")
    model = nnunet["nnUNet_results"] / name / "nnUNetTrainerBayesian__nnUNetPlans__3d_fullres"
    weights = _checkpoint(model / "fold_all")["network_weights"]
    prior_std = {k: v for k, v in weights.items() if k.endswith(".prior_std")}
    # the He prior N(0, 2 / fan_in), in the checkpoint (fan_in: the input channels times the kernel's voxels)
    assert len(prior_std) > 10
    assert all(torch.allclose(v, torch.full_like(v, (2.0 / v[0].numel()) ** 0.5)) for v in prior_std.values())
    assert all(torch.all(weights[k.replace("prior_std", "prior_mean")] == 0) for k in prior_std)
    posterior = Posterior.load(model / "fold_all" / "posterior.safetensors")
    assert posterior.num_examples == len(list((nnunet["nnUNet_raw"] / name / "imagesTr").glob("*.nii.gz")))
    assert posterior.site == name

    images = nnunet["nnUNet_raw"] / name / "imagesTs"
    out = nnunet["root"] / "predictions_bayes"
    _cli(nnunet, "predict", "-i", str(images), "-o", str(out), "-m", str(model), "--mc-samples", "3", "-device", "cpu")
    for image in sorted(images.glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        reference = nib.load(image)
        seg = nib.load(out / f"{case}.nii.gz")
        assert seg.shape == reference.shape and np.allclose(seg.affine, reference.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
        maps = {
            m: np.asarray(nib.load(out / f"{case}_{m}.nii.gz").dataobj)
            for m in ("variance", "entropy", "mutual_information")
        }
        assert all(m.shape == reference.shape for m in maps.values())
        assert np.all(maps["mutual_information"] <= maps["entropy"] + 1e-4) and np.all(maps["variance"] >= 0)
        assert maps["entropy"].max() > 0 and maps["entropy"].max() <= np.log(4) + 1e-4  # 4 classes


def test_vcl_prior_is_the_previous_posterior_file(nnunet):
    alpha, beta = nnunet["names"]["alpha"], nnunet["names"]["beta"]
    first = nnunet["nnUNet_results"] / alpha / "nnUNetTrainerVCL_short__nnUNetPlans__3d_fullres" / "fold_all"
    _cli(nnunet, "train", alpha, "3d_fullres", "all", "-tr", "nnUNetTrainerVCL_short", *SHORT, "--skip-validation")
    prior_file = first / "posterior.safetensors"
    _cli(nnunet, "train", beta, "3d_fullres", "all", "-tr", "nnUNetTrainerVCL_short", *SHORT, "--skip-validation",
         "--prior", str(prior_file))
    prior = Posterior.load(prior_file)
    weights = _checkpoint(
        nnunet["nnUNet_results"] / beta / "nnUNetTrainerVCL_short__nnUNetPlans__3d_fullres" / "fold_all"
    )["network_weights"]
    checked = 0
    for param, mean in prior.mean.items():
        module, kind = param.rsplit(".", 1)
        prefix = "" if kind == "weight" else "bias_"
        assert torch.equal(weights[f"{module}.{prefix}prior_mean"], mean)
        assert torch.equal(weights[f"{module}.{prefix}prior_std"], prior.std[param])
        checked += 1
    assert checked == len(prior.mean) > 10
    # the second site's posterior std stays within its prior's (bound_std)
    second = Posterior.load(
        prior_file.parents[3]
        / beta
        / "nnUNetTrainerVCL_short__nnUNetPlans__3d_fullres"
        / "fold_all"
        / "posterior.safetensors"
    )
    assert all(torch.all(second.std[p] <= prior.std[p] * (1 + 1e-6)) for p in prior.std)
    with pytest.raises(AssertionError, match="takes no prior"):
        _cli(nnunet, "train", beta, "3d_fullres", "all", "-tr", "nnUNetTrainer", *SHORT, "--prior", str(prior_file))


def test_replay_trainer_mixes_earlier_sites_cases_into_the_loader(nnunet):
    from monai_continual.nnunet.launcher import build_trainer
    from monai_continual.nnunet.replay_trainer import replay_sources_for

    alpha, beta = nnunet["names"]["alpha"], nnunet["names"]["beta"]
    trainer = build_trainer(beta, "3d_fullres", "all", "nnUNetTrainerReplay", device="cpu", num_epochs=1)
    # a schedule shorter than nnU-Net's save_every (50) still writes checkpoint_latest.pth, every epoch here
    assert trainer.save_every == 1
    assert build_trainer(beta, "3d_fullres", "all", "nnUNetTrainerReplay_short", device="cpu").save_every == 1
    folder = nnunet["nnUNet_preprocessed"] / alpha / "nnUNetPlans_3d_fullres"
    trainer.replay_sources = replay_sources_for([folder], capacity_per_site=2, seed=0)
    trainer.initialize()
    mixed, validation = trainer.get_tr_and_val_datasets()
    own = [i for i in mixed.identifiers if "/" not in i]
    replayed = [i for i in mixed.identifiers if i.startswith(f"{alpha}/")]
    assert len(replayed) == 2 == trainer.num_replayed and own and all(i.startswith("beta_") for i in own)
    data, seg, _, properties = mixed.load_case(replayed[0])
    assert data.shape[0] == 1 and seg.shape[1:] == data.shape[1:]
    assert all("/" not in i for i in validation.identifiers)  # validation stays on the site's own cases
    # a real (short) training through the launcher, with nnU-Net's loader drawing from the mix
    done = _cli(nnunet, "train", beta, "3d_fullres", "all", "-tr", "nnUNetTrainerReplay_short", *SHORT,
                "--skip-validation", "--replay", f"{alpha}:2")
    assert f"+ 2 replayed from ['{alpha}']" in done.stdout


def test_cyclic_transfer_over_sites_fills_the_matrix_moves_weights_and_resumes(nnunet):
    names = list(nnunet["names"].values())
    run = nnunet["root"] / "runs" / "cwt"
    args = ["sites", "cyclic_weight_transfer", *names, "--eval", nnunet["held_out"], "-o", str(run), "--rounds", "2",
            "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations-per-epoch", "1", "--disable-tta",
            "-device", "cpu"]
    env = dict(os.environ, **ENV, PYTHONPATH=str(Path(__file__).parent))
    process = subprocess.Popen([sys.executable, "-m", "monai_continual.nnunet", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        state = run / "state.json"
        if state.is_file() and len(json.loads(state.read_text())["stages"]) >= 3:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # killed somewhere in stage 2 or 3
    process.wait()
    before = json.loads((run / "state.json").read_text())["stages"]
    assert 3 <= len(before) < 7  # the initial weights and at least two stages
    _cli(nnunet, *args)
    state = json.loads((run / "state.json").read_text())
    stages = state["stages"]
    assert stages[: len(before)] == before  # finished stages were kept, not redone
    assert [s["sites"] for s in stages[1:]] == [[n] for n in names * 2]
    for previous, current in zip(stages, stages[1:]):
        assert current["loaded"] == {"start": previous["published"]}  # each visit starts from the previous one's
    manifest = json.loads((run / "store" / "manifest.json").read_text())["entries"]
    assert sorted(e["sha256"] for e in manifest) == sorted(s["published"] for s in stages)
    matrix = json.loads((run / "R.json").read_text())
    # every stage is scored on every site, the never-trained held-out site included (preprocessed with the shared plans)
    assert len(matrix["stages"]) == 6 and all(
        set(s["scores"]) == {*names, nnunet["held_out"]} for s in matrix["stages"]
    )
    assert all(nnunet["held_out"] not in s["trained_on"] for s in matrix["stages"])
    assert all(0 <= v <= 1 for s in matrix["stages"] for v in s["scores"].values())
    assert (run / "R.png").is_file()
    with pytest.raises(ValueError, match="other settings"):
        run_sites(
            names, "cyclic_weight_transfer", run, rounds=3, epochs=1, eval_datasets=[nnunet["held_out"]], device="cpu"
        )
    with pytest.raises(ValueError, match="not Bayesian; got nnUNetTrainerBayesian"):
        run_sites(
            names, "fine_tuning", nnunet["root"] / "runs" / "wrong", trainer="nnUNetTrainerBayesian", device="cpu"
        )
    with pytest.raises(ValueError, match="nnUNetTrainerReplay or a subclass"):
        run_sites(names, "replay", nnunet["root"] / "runs" / "wrong", trainer="nnUNetTrainer", device="cpu")
    assert not (nnunet["root"] / "runs" / "wrong").exists()


def test_vcl_and_dwc_across_sites(nnunet, site_runs):
    names = list(nnunet["names"].values())
    vcl = site_runs("vcl")  # the run test_one_schedule_drives_both_backends checks against the schedule
    assert vcl.matrix.labels == [f"map:{names[0]}", f"1:{names[0]}", f"2:{names[1]}", f"3:{names[2]}"]
    assert vcl.stages[2]["loaded"] == {"start": vcl.stages[1]["published"]}  # means from the MAP network
    for number in (3, 4):  # each site's prior is the previous site's posterior
        previous = vcl.stages[number - 1]["published"]
        assert vcl.stages[number]["loaded"] == {"start": previous, "prior": previous}
    for number in (2, 3, 4):  # every std set from the data at the start, never above the prior's
        std = vcl.stages[number]["details"]["std"]
        assert std["before"]["median"] != std["after"]["median"]
        assert std["after"]["ratio_p95"] <= 1 + 1e-6 and std["trained"]["ratio_p95"] <= 1 + 1e-6
        data_term, kl_over_n = vcl.stages[number]["details"]["elbo"][0]
        assert data_term > 0 and kl_over_n >= 0
    assert vcl.stages[2]["details"]["std"]["before"]["median"] == pytest.approx(1e-3)  # the conversion's placeholder
    dwc = site_runs("dwc", rounds=1)  # fine-tuning on the first site is DWC's default
    files = sorted((dwc.directory / "posteriors").glob("stage*.safetensors"))
    assert len(files) == 5
    expected = consolidate_dwc(files[0], files[1:3])
    produced = Posterior.load(files[3])
    assert all(
        torch.equal(produced.mean[n], expected.mean[n]) and torch.equal(produced.std[n], expected.std[n])
        for n in expected.mean
    )
    q0 = Posterior.load(files[0])
    assert all(dwc.stages[i]["loaded"]["prior"] == dwc.stages[2]["published"] for i in (3, 4))  # both from q0
    for site_file in files[1:3]:
        site = Posterior.load(site_file)
        assert all(torch.all(site.std[n] <= q0.std[n] * (1 + 1e-6)) for n in site.std)
    assert dwc.matrix.labels == [f"map:{names[0]}", f"q0:{names[0]}", f"r1:{names[1]}", f"r1:{names[2]}", "dwc r1",
                                 f"dwc+ft:{names[0]}"]
    # the fine-tuning stage starts from the consolidated posterior as prior, with the data weighted as one example
    assert dwc.stages[6]["loaded"]["prior"] == dwc.stages[5]["published"] and dwc.stages[6]["sites"] == [names[0]]
    stage_dir = RunLayout(dwc.directory).stage_dir(6, names[0])
    log = next(stage_dir.rglob("training_log_*.txt")).read_text()
    patch = json.loads(next(stage_dir.rglob("plans.json")).read_text())
    voxels = int(np.prod(patch["configurations"]["3d_fullres"]["patch_size"]))
    assert f"N = {voxels})" in log  # one example's voxels


def test_sites_with_other_labels_or_channels_are_refused_before_training(nnunet, tmp_path):
    raw = nnunet["nnUNet_raw"]
    alpha, beta = nnunet["names"]["alpha"], nnunet["names"]["beta"]
    for key, value, message in (("labels", {"background": 0, "lesion": 1}, "label set"),
                                ("channel_names", {"0": "T1", "1": "FLAIR"}, "input channels")):
        broken = raw / f"Dataset9{50 + len(message)}_broken"
        broken.mkdir()
        document = json.loads((raw / beta / "dataset.json").read_text())
        document[key] = value
        (broken / "dataset.json").write_text(json.dumps(document))
        with pytest.raises(NnUNetDatasetError, match=f"dataset {broken.name}: {message}"):
            check_datasets_compatible(raw, [alpha, broken.name])
        with pytest.raises(NnUNetDatasetError, match=broken.name):
            run_sites([alpha, broken.name], "fine_tuning", tmp_path / key, device="cpu")
        with pytest.raises(NnUNetDatasetError, match=broken.name):
            plan_and_preprocess_sites([alpha, broken.name])
        assert not (tmp_path / key).exists() and not (nnunet["nnUNet_preprocessed"] / broken.name).exists()
        for path in sorted(broken.rglob("*"), reverse=True):
            path.unlink()
        broken.rmdir()


def test_nnunet_lookup_finds_our_trainers(nnunet):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    # what nnU-Net does with nnUNet_extTrainer once its own package has no such trainer
    folder = str(ext_trainer_folder())
    found = recursive_find_python_class(folder, "nnUNetTrainerBayesian", None, base_folder=folder,
                                        cleanup_imports_from_base_folder=True)
    from monai_continual.nnunet import nnUNetTrainerBayesian

    assert found is nnUNetTrainerBayesian
    done = _cli(nnunet, "trainer-path")
    assert done.stdout.strip() == folder


def test_nnunetv2_train_finds_ours_through_ext_trainer(nnunet):
    try:
        import timm  # noqa: F401
    except ImportError:
        pytest.skip("nnU-Net's own trainer lookup imports its primus trainers, which need timm (not installed here, "
                    "it pulls torchvision); the launcher and the nnUNet_extTrainer folder are tested above")
    name = nnunet["names"]["gamma"]
    env = dict(os.environ, **ENV, nnUNet_extTrainer=str(ext_trainer_folder()))
    done = subprocess.run(["nnUNetv2_train", name, "3d_fullres", "all", "-tr", "nnUNetTrainerBayesian_short",
                           "-device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        nnunet["nnUNet_results"]
        / name
        / "nnUNetTrainerBayesian_short__nnUNetPlans__3d_fullres"
        / "fold_all"
        / "posterior.safetensors"
    ).is_file()


def test_one_schedule_drives_both_backends(nnunet, site_runs, tmp_path):
    """The MONAI runner and the nnU-Net sites follow the same core schedule: sites, stage numbers, and which
    published model (by content hash) each stage loaded."""
    from runner_utils import tiny_runner

    names = list(nnunet["names"].values())
    plain = {"alpha": names[0], "beta": names[1], "gamma": names[2]}
    options = TINY_SCHEDULE
    runner = tiny_runner(nnunet["root"] / "data" / "datalist.json", tmp_path / "monai")
    cases = (("cyclic_weight_transfer", {"rounds": 2}, {"cycles": 2}),
             ("federated_averaging", {"rounds": 1, "options": {"proximal_mu": 0.1}}, {"rounds": 1, "proximal_mu": 0.1}),
             ("fine_tuning", {}, {}), ("single_weight_transfer", {"options": {"patience": 1}}, {"patience": 1}),
             ("vcl", {}, {}), ("dwc", {"rounds": 1}, {"rounds": 1}), ("ewc", {}, {}))
    for strategy, kwargs, core_options in cases:
        nn_result = site_runs(strategy, **kwargs)
        monai_result = runner.run(strategy, **core_options)
        schedule = runner.schedule(strategy, **core_options)
        monai_state = json.loads((monai_result.directory / "state.json").read_text())["stages"]
        for records, rename in ((nn_result.stages, plain), (monai_state, {s: s for s in plain})):
            by_number = {r["number"]: r for r in records}
            assert sorted(by_number) == list(range(len(schedule) + 1))
            for stage in schedule:
                record = by_number[stage.number]
                assert (
                    record["sites"] == [rename[s] for s in stage.sites]
                    and record["label"].split(":")[0] == stage.label.split(":")[0]
                )
                if stage.start is not None:
                    assert record["loaded"]["start"] == by_number[stage.start]["published"]
                for position, number in enumerate(stage.inputs):
                    assert record["loaded"]["inputs"][position] == by_number[number]["published"]
                assert (record["scores"] is not None) == stage.evaluate
                if stage.evaluate:  # per-volume scores on both backends
                    assert all(isinstance(v, list) and v for v in record["scores"].values())
                if stage.prior is not None:
                    assert record["loaded"]["prior"] == by_number[stage.prior]["published"]
                if stage.fisher is not None:  # the running Fisher its start published with the weights
                    assert record["loaded"]["fisher"] == by_number[stage.fisher]["details"]["fisher"]
    # bad options are refused before any work, with the valid values listed, as in the MONAI runner
    with pytest.raises(ValueError, match="epochs_per_visit must be a number >= 1"):
        run_sites(names, "cyclic_weight_transfer", tmp_path / "bad", options={"epochs_per_visit": 0}, **options)
    with pytest.raises(ValueError, match=r"must list distinct sites.*unknown: \['nowhere'\]"):
        run_sites(names, "fine_tuning", tmp_path / "bad", order=["nowhere"], **options)
    with pytest.raises(TypeError, match=r"unexpected options \['cycles'\]"):
        run_sites(names, "vcl", tmp_path / "bad", options={"cycles": 2}, **options)
    with pytest.raises(ValueError, match="federated_magic.*Available options"):
        run_sites(names, "federated_magic", tmp_path / "bad", **options)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("strategy", ["cyclic_weight_transfer", "dwc"])
def test_nnunet_runs_crashed_at_step_boundaries_resume_exactly(nnunet, tmp_path, strategy):
    """The nnU-Net backend keeps the engine's invariant: crashes after training, after publishing, during
    evaluation, before the state save and inside a consolidation end with the uninterrupted run's records."""
    from monai_continual.strategies import CRASH_ENV

    names = list(nnunet["names"].values())
    datasets = names[:2] if strategy == "cyclic_weight_transfer" else names
    crashes = (["mid_training:1", "after_publish:2", "during_evaluation:3", "before_state_save:4"]
               if strategy == "cyclic_weight_transfer" else
               ["after_publish:2", "mid_training:3", "mid_consolidation:5", "during_evaluation:6"])
    args = ["sites", strategy, *datasets, "--rounds", "2" if strategy == "cyclic_weight_transfer" else "1",
            "--epochs", "1", "--iterations-per-epoch", "1", "--val-iterations-per-epoch", "1", "--disable-tta",
            "-device", "cpu"]
    env = dict(os.environ, **ENV, PYTHONPATH=str(Path(__file__).parent))
    env.pop(CRASH_ENV, None)

    def run(directory: Path, crash: str | None) -> subprocess.CompletedProcess:
        # `python -m monai_continual.nnunet` in a separate process each time, forked from one that imported torch and
        # MONAI once (nnU-Net is imported in the process, after its folders are set): a fault point ends it for real
        extra = {CRASH_ENV: crash} if crash else {}
        return run_forked(nnunet_cli.main, [*args, "-o", str(directory)], env={**env, **extra}, timeout=600)

    def records(directory: Path) -> list:
        state = json.loads((directory / "state.json").read_text())
        # the example count too: a stage published before the crash keeps it on resume (FedAvg weights by it)
        return [(r["number"], r["published"], r["loaded"], r["scores"], r["num_examples"]) for r in state["stages"]]

    reference = run(tmp_path / "reference", None)
    assert reference.returncode == 0, reference.stderr[-3000:]
    for crash in crashes:
        crashed = run(tmp_path / "crashed", crash)
        assert crashed.returncode == 86, f"{crash}: {crashed.stderr[-3000:]}"
    final = run(tmp_path / "crashed", None)
    assert final.returncode == 0, final.stderr[-3000:]
    assert records(tmp_path / "crashed") == records(tmp_path / "reference")
    published = [p for _, p, _, _, _ in records(tmp_path / "reference") if p]
    assert len(set(published)) == len(published)


def test_a_stage_killed_mid_training_resumes_from_its_checkpoint_to_the_same_hashes(nnunet, tmp_path):
    """A SIGKILL after a stage's first epoch checkpoint, then a fault-point exit in the next stage: each rerun
    continues the stage from ``checkpoint_latest.pth`` (nnU-Net's file, bound to the stage's input hashes) and the
    run ends with the uninterrupted run's published hashes."""
    from forked import ForkedWorker
    from monai_continual.nnunet.stage_training import LATEST_CHECKPOINT, StageCheckpoint
    from monai_continual.strategies import CRASH_ENV

    names = list(nnunet["names"].values())[:2]
    args = ["sites", "fine_tuning", *names, "--epochs", "3", "--iterations-per-epoch", "1",
            "--val-iterations-per-epoch", "1", "--disable-tta", "-device", "cpu"]
    env = {k: v for k, v in dict(os.environ, **ENV, PYTHONPATH=str(Path(__file__).parent)).items() if k != CRASH_ENV}

    def records(directory: Path) -> list:
        state = json.loads((directory / "state.json").read_text())
        return [(r["number"], r["published"], r["loaded"], r["scores"]) for r in state["stages"]]

    reference = run_forked(nnunet_cli.main, [*args, "-o", str(tmp_path / "reference")], env=env, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "killed"
    stages = RunLayout(run).root / "stages"
    worker = ForkedWorker(nnunet_cli.main, [*args, "-o", str(run)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and worker.poll() is None and not list(stages.rglob(LATEST_CHECKPOINT)):
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)  # in stage 1's training, after its first checkpoint
    assert worker.wait(60) == -signal.SIGKILL
    [latest] = stages.rglob(LATEST_CHECKPOINT)
    stage_dir = RunLayout(run).stage_dir(1, names[0])
    assert stage_dir in latest.parents and not (run / "receipts").exists()
    reference_state = json.loads((tmp_path / "reference" / "state.json").read_text())["stages"]
    identity = {"inputs": {"start": reference_state[0]["published"]}, "trainer": "nnUNetTrainer", "epochs": 3,
                "patience": None}
    assert StageCheckpoint(identity).find(stage_dir)["current_epoch"] in (1, 2)
    assert StageCheckpoint({**identity, "inputs": {"start": "0" * 64}}).find(stage_dir) is None  # other inputs
    truncated = tmp_path / "truncated" / LATEST_CHECKPOINT  # what a plain torch.save killed mid-write leaves
    truncated.parent.mkdir()
    truncated.write_bytes(latest.read_bytes()[:1000])
    assert StageCheckpoint(identity).find(truncated.parent) is None

    crashed = run_forked(nnunet_cli.main, [*args, "-o", str(run)], env={**env, CRASH_ENV: "mid_training:2"},
                         timeout=300)
    assert crashed.returncode == 86, crashed.stderr[-3000:]  # stage 2 exited after its first epoch's checkpoint
    final = run_forked(nnunet_cli.main, [*args, "-o", str(run)], env=env, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert records(run) == records(tmp_path / "reference")
    for number, site in ((1, names[0]), (2, names[1])):  # both stages continued, neither started again
        folder = RunLayout(run).stage_dir(number, site)
        logs = "".join(p.read_text() for p in folder.rglob("training_log_*.txt"))  # one per process
        assert "resumed at epoch" in logs and not list(folder.rglob(LATEST_CHECKPOINT))


def test_region_dice_by_hand_and_bad_exports_are_refused(tmp_path):
    from monai_continual.nnunet.evaluation import region_dice

    reference = np.array([0, 1, 2, 3, 3, 0]).reshape(1, 1, 6)
    prediction = np.array([0, 1, 1, 3, 2, 2]).reshape(1, 1, 6)
    # BraTS-style regions: whole (1, 2, 3): 2*4 / (5 + 4); core (2, 3): 2*2 / (3 + 3); enhancing (3): 2*1 / (1 + 2)
    assert region_dice(prediction, reference, [(1, 2, 3), (2, 3), 3]) == pytest.approx((8 / 9 + 2 / 3 + 2 / 3) / 3)
    assert region_dice(np.zeros_like(reference), np.zeros_like(reference), [(1, 2), 2]) == 1.0  # nothing to find
    image = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), image)
    cases = [{"image": [str(image), str(image)], "label": str(image)}, {"image": str(image), "label": str(image)}]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"},
                                    "sites": {"x": {"training": cases}}}))
    with pytest.raises(ValueError, match=r"same image channels, found 1 channel\(s\) in site x, training case 1"):
        export_nnunet_datasets(datalist, tmp_path / "raw")
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"}, "regions": {"ab": [1, 5]},
                                    "regions_class_order": [1], "sites": {"x": {"training": cases[:1]}}}))
    with pytest.raises(ValueError, match=r"region 'ab' must list foreground label values of \[1, 2\]"):
        export_nnunet_datasets(datalist, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_two_sites_with_two_channels_and_regions_train_and_score_by_region(nnunet, tmp_path):
    """Two modalities per case (exported as ``_0000``/``_0001``), BraTS-style overlapping regions (one sigmoid output
    per region, scored per region), and a site without test labels scored on its validation fold: through
    ``sites cyclic_weight_transfer`` and ``fine_tuning``."""
    from monai_continual.nnunet.environment import results_folder
    from monai_continual.nnunet.evaluation import SPLITS_FILE, region_dice, validation_cases
    from monai_continual.nnunet.launcher import build_trainer

    source = json.loads((nnunet["root"] / "data" / "datalist.json").read_text())
    base = nnunet["root"] / "data"
    sites = {}
    for site in ("alpha", "beta"):
        entry = {split: [] for split in ("training", "validation", "test")}
        for split in entry:
            for case in source["sites"][site][split]:
                t1 = nib.load(base / case["image"])
                t2 = base / case["image"].replace("_img", "_t2")
                data = np.asarray(t1.dataobj, dtype=np.float32)
                nib.save(nib.Nifti1Image(data.max() - data, t1.affine), t2)  # an inverted contrast
                # alpha keeps no test labels: its test cases train, and its validation fold scores it
                entry["training" if site == "alpha" else split].append(
                    {"image": [case["image"], str(t2.relative_to(base))], "label": case["label"]})
        sites[site] = entry
    datalist = base / "regions_datalist.json"
    datalist.write_text(json.dumps({
        "labels": source["labels"], "channel_names": ["T1", "T2"], "sites": sites,
        "regions": {"brain": [1, 2, 3], "tissue": [2, 3], "WM": [3]}, "regions_class_order": [1, 2, 3]}))
    done = run_forked(nnunet_cli.main, ["export-sites", str(datalist), "--first-id", "911"], env={**os.environ, **ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    alpha, beta = "Dataset911_alpha", "Dataset912_beta"
    raw = nnunet["nnUNet_raw"]
    assert sorted(p.name for p in (raw / alpha / "imagesTr").iterdir())[:2] == ["alpha_000_0000.nii.gz",
                                                                                 "alpha_000_0001.nii.gz"]
    document = json.loads((raw / beta / "dataset.json").read_text())
    assert document["channel_names"] == {"0": "T1", "1": "T2"} and document["regions_class_order"] == [1, 2, 3]
    assert document["labels"] == {"background": 0, "brain": [1, 2, 3], "tissue": [2, 3], "WM": 3}
    assert not (raw / alpha / "labelsTs").exists()
    plan_and_preprocess_sites([alpha, beta])
    # alpha's 5 cases: the evaluator makes nnU-Net's 5-fold split before any training, and nnU-Net's trainer, making
    # it itself, agrees; beta's 2 cases are too few for 5 folds: one split of them, as a user would write it
    splits_file = nnunet["nnUNet_preprocessed"] / alpha / SPLITS_FILE
    validation = validation_cases(alpha, 0, "3d_fullres", "nnUNetPlans")
    made, _ = splits_file.read_text(), splits_file.unlink()
    with results_folder(tmp_path / "split_check"):  # the trainer's log folder
        assert build_trainer(alpha, "3d_fullres", 0, device="cpu").do_split()[1] == validation
    assert json.loads(splits_file.read_text()) == json.loads(made) and len(validation) == 1
    (nnunet["nnUNet_preprocessed"] / beta / SPLITS_FILE).write_text(
        json.dumps([{"train": ["beta_000"], "val": ["beta_001"]}]))
    args = ["--epochs", "1", "--iterations-per-epoch", "1", "--val-iterations-per-epoch", "1", "--disable-tta",
            "-f", "0", "-device", "cpu"]
    env = {**os.environ, **ENV, "PYTHONPATH": str(Path(__file__).parent)}
    cyclic = run_forked(nnunet_cli.main, ["sites", "cyclic_weight_transfer", alpha, beta, "--rounds", "1", *args,
                                          "-o", str(tmp_path / "cwt")], env=env, timeout=300)
    assert cyclic.returncode == 0, cyclic.stderr[-3000:]
    with pytest.raises(FileNotFoundError, match=f"dataset {alpha}: needs test cases .* or a fold"):
        run_sites([alpha, beta], "fine_tuning", tmp_path / "all", **TINY_SCHEDULE)  # fold "all": no validation cases
    assert not (tmp_path / "all").exists()
    finetuned = run_sites([alpha, beta], "fine_tuning", tmp_path / "ft", fold=0, **TINY_SCHEDULE)
    for run in (tmp_path / "cwt", finetuned.directory):
        matrix = json.loads((run / "R.json").read_text())
        state = json.loads((run / "state.json").read_text())
        assert len(matrix["stages"]) == 2
        last = state["stages"][-1]
        # alpha: the 1 case of its validation fold (imagesTr/labelsTr); beta: its 2 test cases
        assert {site: len(scores) for site, scores in last["scores"].items()} == {alpha: 1, beta: 2}
        predictions = RunLayout(run).predictions_dir(last["number"])
        for site, labels in ((alpha, raw / alpha / "labelsTr"), (beta, raw / beta / "labelsTs")):
            files = sorted((predictions / site).glob("*.nii.gz"))
            assert [f.name for f in files] == ([f"{validation[0]}.nii.gz"] if site == alpha
                                               else ["beta_000.nii.gz", "beta_001.nii.gz"])
            expected = [region_dice(np.asarray(nib.load(f).dataobj), np.asarray(nib.load(labels / f.name).dataobj),
                                    [(1, 2, 3), (2, 3), 3]) for f in files]
            assert last["scores"][site] == pytest.approx(expected)
            assert set(np.unique(np.concatenate([np.asarray(nib.load(f).dataobj).ravel() for f in files]))) <= {
                0, 1, 2, 3}
    from monai_continual.consolidation import DirectoryWeightStore

    store = DirectoryWeightStore(RunLayout(finetuned.directory).store)
    published = store.load(store.entry(2))
    first = next(v for k, v in published.items() if k.endswith("weight") and v.ndim == 5)
    heads = [v for k, v in published.items() if "seg_layers" in k and k.endswith("weight")]
    assert first.shape[1] == 2 and all(h.shape[0] == 3 for h in heads)  # two input channels, three region outputs


@pytest.mark.skipif(not __import__("importlib").util.find_spec("nvflare"), reason="needs nvflare")
def test_nnunet_sites_as_nvflare_clients_plan_from_fingerprints_and_equal_the_in_process_run(nnunet, tmp_path,
                                                                                              monkeypatch):
    """One short cyclic weight transfer over two tiny nnU-Net datasets in NVFlare's simulator, planned from the
    sites' fingerprints: each hospital's folders are given to its own client only (this process and the server see
    none), the plans every site preprocessed with are the server's, which are nnU-Net's plans of the fingerprints
    computed here directly; each site trains with nnU-Net's own trainer on its own dataset, and the stages publish
    the same models as run_sites in one process over the same preprocessed data."""
    from monai_continual.federated import FederatedRun
    from monai_continual.federated.nnunet_planning import PLANNING_DIR
    from monai_continual.nnunet.fingerprints import save_fingerprint, site_fingerprint
    from monai_continual.nnunet.planning import plan_from_fingerprints, shared_plans

    hospitals = tmp_path / "hospitals"
    folders = {}
    for i, site in enumerate(list(nnunet["names"])[:2]):
        raw = hospitals / site / "raw"
        name = export_nnunet_datasets(nnunet["datalist"], raw, first_id=911 + i, sites=[site])[site]
        folders[name] = {k: hospitals / site / k for k in ("raw", "preprocessed", "results")}
    names = list(folders)
    for key in ("raw", "preprocessed", "results"):  # no site's folders where this process or the server looks
        monkeypatch.setenv(f"nnUNet_{key}", str(tmp_path / "elsewhere" / key))
    # CPU results depend on torch's thread count: both sides train with one thread
    settings = {"iterations_per_epoch": 1, "val_iterations_per_epoch": 1, "device": "cpu", "mirroring": False,
                "threads": 1}
    run = FederatedRun.nnunet(names, "cyclic_weight_transfer", tmp_path / "federated", options={"cycles": 1},
                              settings=settings, payload_log=str(tmp_path / "payloads.jsonl"),
                              task_request_interval=0.2, planning="fingerprints", site_folders=folders)
    started = time.perf_counter()
    summary = run.run()
    print(f"federated nnU-Net run, 2 sites planned from fingerprints: {time.perf_counter() - started:.1f} s")
    assert set(summary["strategies"]["cyclic_weight_transfer"]["sites"]) == set(names)

    # the plans each site used are the server's, which are nnU-Net's plans of the sites' fingerprints
    server_plans = json.loads((run.run_dir / PLANNING_DIR / "plans.json").read_text())
    fingerprints = []
    for name, own in folders.items():
        adopted = json.loads((own["preprocessed"] / name / "nnUNetPlans.json").read_text())
        assert adopted["dataset_name"] == name and shared_plans(adopted) == shared_plans(server_plans)
        images = list((own["raw"] / name / "imagesTr").glob("*.nii.gz"))
        assert len(list((own["preprocessed"] / name / "nnUNetPlans_3d_fullres").glob("*.b2nd"))) == 2 * len(images)
        monkeypatch.setenv("nnUNet_raw", str(own["raw"]))
        fingerprints.append(save_fingerprint(site_fingerprint(name), tmp_path / f"{name}.json"))
        assert json.loads(fingerprints[-1].read_text()) == json.loads(
            (run.run_dir / PLANNING_DIR / f"{name}.json").read_text())
    assert plan_from_fingerprints(fingerprints) == server_plans

    # nothing of a hospital's folders reached the server, and each client was told of its own folders only
    server_side = [run.run_dir, run.output_dir / "simulator" / "server", tmp_path / "payloads.jsonl"]
    for path in [p for top in server_side for p in ([top] if top.is_file() else top.rglob("*")) if p.is_file()]:
        assert str(hospitals) not in path.read_text(errors="replace"), path
    for name, own in folders.items():
        (config,) = (run.output_dir / "simulator" / name).rglob("config_fed_client.json")
        text = config.read_text()
        assert [str(f["raw"]) in text for f in folders.values()] == [f is own for f in folders.values()]

    # the same stages in one process over the sites' preprocessed datasets
    pooled = tmp_path / "in_process"
    for key in ("raw", "preprocessed"):
        (pooled / key).mkdir(parents=True)
        for name, own in folders.items():
            (pooled / key / name).symlink_to(own[key] / name)
        monkeypatch.setenv(f"nnUNet_{key}", str(pooled / key))
    monkeypatch.setenv("nnUNet_results", str(pooled / "results"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = run_sites(names, "cyclic_weight_transfer", pooled / "run", rounds=1, epochs=1,
                              iterations_per_epoch=1, val_iterations_per_epoch=1, mirroring=False, device="cpu",
                              progress=False)
    finally:
        torch.set_num_threads(threads)
    federated = json.loads((run.run_dir / "state.json").read_text())["stages"]
    assert [(r["number"], r["published"], r["loaded"]) for r in federated] == \
        [(r["number"], r["published"], r["loaded"]) for r in reference.stages]
    received = [
        json.loads(line) for line in (tmp_path / "payloads.jsonl").read_text().splitlines() if '"received"' in line
    ]
    assert {r["task"] for r in received} == {"fingerprint", "plans", "initialize", "train", "evaluate"}
    assert all("/" not in json.dumps(r["meta"]) for r in received)
