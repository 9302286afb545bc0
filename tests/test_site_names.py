"""Site names never walk out of the run directory: every place where a site name becomes part of a path refuses
anything but NVFlare's rule for client names, ``^[A-Za-z0-9_-]+$``, naming the site at fault."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from monai_continual.data import (
    DatalistError,
    MultiSiteDatalist,
    ReplayBuffer,
    SiteData,
    SiteProfile,
    load_multisite_datalist,
    make_sites,
)
from monai_continual.federated.payload import stage_from_meta, stage_to_meta
from monai_continual.handlers import BayesianSiteHandler, ReplayBufferHandler, SiteScoreRecorder, WeightTransferHandler
from monai_continual.strategies import Stage
from monai_continual.utils import SITE_NAME_PATTERN, check_site_name

ATTACKS = ["../../pwned", "a/b", "..", "", "site a", "site\x00a", "site_a\n", "/abs", "a\\b", "ünïcode"]
VALID = ["site_a", "Site-B2", "0", "Dataset501_site_a"]


def _refused(name: str) -> str:
    """The message must name the site (as ``repr`` shows it) and the allowed pattern."""
    return re.escape(repr(name)) + r".*" + re.escape(SITE_NAME_PATTERN)


def _deep(tmp_path: Path) -> Path:
    """A run directory deep enough below ``tmp_path`` that an escape by ``../..`` still lands inside ``tmp_path``."""
    run = tmp_path / "x1" / "x2" / "x3" / "run"
    run.mkdir(parents=True)
    return run


# ------------------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass(name):
    assert check_site_name(name) == name


@pytest.mark.parametrize("name", ATTACKS)
def test_check_site_name_refuses(name):
    with pytest.raises(ValueError, match=_refused(name)):
        check_site_name(name)


@pytest.mark.parametrize("name", [None, 3, b"site_a", ["site_a"]])
def test_check_site_name_refuses_non_strings(name):
    with pytest.raises(ValueError, match="not a valid site name"):
        check_site_name(name)


def test_check_site_name_says_where_the_name_came_from():
    with pytest.raises(ValueError, match=r"^hospital list site '\.\./x' \(from /etc/sites\.json\) is not a valid"):
        check_site_name("../x", "hospital list site", source="/etc/sites.json")


# ------------------------------------------------------------------------------------------------------ datalists


def _datalist(path: Path, sites: list[str]) -> Path:
    document = {
        "labels": {"0": "background", "1": "fg"},
        "sites": {s: {"training": [{"image": f"{i}_img.nii.gz", "label": f"{i}_seg.nii.gz"}],
                      "test": [{"image": f"{i}_timg.nii.gz", "label": f"{i}_tseg.nii.gz"}]}
                  for i, s in enumerate(sites)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("name", ATTACKS)
def test_datalist_with_a_bad_site_is_refused_naming_file_and_site(tmp_path, name):
    path = _datalist(tmp_path / "data" / "datalist.json", ["site_a", name])
    with pytest.raises(DatalistError, match=re.escape(str(path)) + r".*" + _refused(name)):
        load_multisite_datalist(path, check_files=False)
    # also when only the valid sites are selected: the file itself is malformed
    with pytest.raises(DatalistError, match=_refused(name)):
        load_multisite_datalist(path, check_files=False, sites=["site_a"])


def test_datalist_with_valid_names_loads(tmp_path):
    path = _datalist(tmp_path / "datalist.json", VALID)
    data = load_multisite_datalist(path, check_files=False)
    assert data.site_names == VALID


@pytest.mark.parametrize("name", ["../../pwned", "a/b", ".."])
def test_datalist_built_in_memory_is_refused(name):
    with pytest.raises(DatalistError, match=_refused(name)):
        MultiSiteDatalist({name: SiteData(name)}, {0: "background"}, source="mine.json")
    assert MultiSiteDatalist({"Site-B2": SiteData("Site-B2")}, {}).site_names == ["Site-B2"]


def test_make_sites_refuses_a_bad_profile_name_before_writing(tmp_path):
    out = _deep(tmp_path)
    with pytest.raises(ValueError, match=_refused("../../pwned")):
        make_sites(out / "sites", sites=[SiteProfile("../../pwned", 4)], shape=(8, 8, 8), figure=False, progress=False)
    assert not list(tmp_path.rglob("*pwned*")) and not (out / "sites" / "datalist.json").exists()


# ------------------------------------------------------------------------------------------------------ handlers


@pytest.mark.parametrize("name", ATTACKS)
def test_site_score_recorder_refuses(tmp_path, name):
    with pytest.raises(ValueError, match="SiteScoreRecorder.*" + _refused(name)):
        SiteScoreRecorder(None, tmp_path / "exchange", name, transfer=None)


@pytest.mark.parametrize("name", ATTACKS)
def test_bayesian_site_handler_refuses(tmp_path, name):
    with pytest.raises(ValueError, match="BayesianSiteHandler.*" + _refused(name)):
        BayesianSiteHandler(torch.nn.Linear(1, 1), tmp_path / "exchange", name, dataset=[])


@pytest.mark.parametrize("name", ATTACKS)
def test_weight_transfer_handler_refuses(tmp_path, name):
    with pytest.raises(ValueError, match="WeightTransferHandler.*" + _refused(name)):
        WeightTransferHandler(tmp_path / "store", name, torch.nn.Linear(1, 1))
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("name", ATTACKS)
def test_replay_buffer_handler_refuses(name):
    with pytest.raises(ValueError, match="ReplayBufferHandler.*" + _refused(name)):
        ReplayBufferHandler(ReplayBuffer(), name, [{"image": "i.nii.gz", "label": "l.nii.gz"}])


def test_handler_site_changed_after_construction_is_refused_when_writing(tmp_path):
    """A name that becomes a path is checked where the path is built too, not only in the constructor."""
    run = _deep(tmp_path)
    recorder = SiteScoreRecorder(None, run, "site_a", transfer=None)
    recorder.site = "../../../pwned"
    recorder._score = lambda: ("dice", 0.5)
    with pytest.raises(ValueError, match=_refused("../../../pwned")):
        recorder._write(SimpleNamespace(stage=1, site="site_a"), "published")
    handler = BayesianSiteHandler(torch.nn.Linear(1, 1), run, "site_a", dataset=[0])
    handler.site = "../../../pwned"
    with pytest.raises(ValueError, match=_refused("../../../pwned")):
        handler.publish_posterior()
    assert not list(tmp_path.rglob("*pwned*"))


@pytest.mark.parametrize("name", VALID[:2])
def test_handlers_accept_valid_names(tmp_path, name):
    assert SiteScoreRecorder(None, tmp_path, name, transfer=None).site == name
    assert BayesianSiteHandler(torch.nn.Linear(1, 1), tmp_path, name, dataset=[]).site == name
    assert WeightTransferHandler(tmp_path / "store", name, torch.nn.Linear(1, 1)).site == name
    assert ReplayBufferHandler(ReplayBuffer(), name, [{"image": "i"}]).site == name


# ------------------------------------------------------------------------------------------------------ replay buffer


@pytest.mark.parametrize("name", ATTACKS)
def test_replay_buffer_refuses_a_bad_site(name):
    buffer = ReplayBuffer(capacity_per_site=2)
    with pytest.raises(ValueError, match=_refused(name)):
        buffer.add_site(name, [{"image": "i.nii.gz"}])
    with pytest.raises(ValueError, match=_refused(name)):
        buffer.offer(name, {"image": "i.nii.gz"})
    assert buffer.sites == []


def test_replay_manifest_with_a_bad_site_is_refused(tmp_path):
    buffer = ReplayBuffer(capacity_per_site=2)
    buffer.add_site("site_a", [{"image": "i.nii.gz"}])
    directory = buffer.save(tmp_path / "replay").parent
    manifest = json.loads((directory / "replay_manifest.json").read_text())
    manifest["kept"]["../../pwned"] = manifest["kept"].pop("site_a")
    manifest["seen"]["../../pwned"] = manifest["seen"].pop("site_a")
    (directory / "replay_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ValueError, match=re.escape(str(directory / "replay_manifest.json")) + ".*" + _refused("../../pwned")
    ):
        ReplayBuffer.load(directory, check_files=False)


def test_replay_export_never_writes_outside_its_destination(tmp_path):
    source = tmp_path / "case.nii.gz"
    source.write_bytes(b"not really a volume")
    buffer = ReplayBuffer(capacity_per_site=2)
    buffer._kept["../../pwned"] = [{"image": str(source)}]  # a buffer filled behind the checks' back
    destination = _deep(tmp_path) / "export"
    with pytest.raises(ValueError, match=_refused("../../pwned")):
        buffer.export_data(destination, keys=("image",))
    assert not list(tmp_path.rglob("*pwned*"))


def test_replay_buffer_accepts_valid_names(tmp_path):
    source = tmp_path / "case.nii.gz"
    source.write_bytes(b"x")
    buffer = ReplayBuffer(capacity_per_site=2)
    for name in VALID[:2]:
        buffer.add_site(name, [{"image": str(source)}])
    exported = ReplayBuffer.load(buffer.export_data(tmp_path / "export", keys=("image",)))
    assert exported.sites == VALID[:2] and (tmp_path / "export" / "Site-B2").is_dir()


# ------------------------------------------------------------------------------------------------------ stages


@pytest.mark.parametrize("name", ATTACKS)
def test_stage_refuses_a_bad_site(name):
    with pytest.raises(ValueError, match=r"stage 3: site " + _refused(name)):
        Stage(3, sites=("site_a", name))


def test_stage_from_a_federated_server_is_refused(tmp_path):
    """A stage received over the network names folders at the site (``sites/<site>/``): refused when decoded."""
    meta = stage_to_meta(Stage(2, sites=("site_a",)), {})
    meta["stage"]["sites"] = ["site_a", "../../../../pwned"]
    with pytest.raises(ValueError, match=_refused("../../../../pwned")):
        stage_from_meta(meta)
    assert stage_from_meta(stage_to_meta(Stage(2, sites=("site_a", "Site-B2")), {}))[0].site == "site_a+Site-B2"


# ------------------------------------------------------------------------------------------------------ nnU-Net


def test_nnunet_dataset_folders_stay_under_raw(tmp_path):
    pytest.importorskip("nnunetv2")
    from monai_continual.nnunet import NnUNetDatasetError, check_datasets_compatible
    from monai_continual.nnunet.datasets import raw_dataset_folder

    raw = tmp_path / "x1" / "raw"
    raw.mkdir(parents=True)
    (tmp_path / "pwned").mkdir()
    (tmp_path / "pwned" / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    for name in ("../../pwned", "../raw", "..", "", "Dataset501_a/b"):
        with pytest.raises(NnUNetDatasetError, match=_refused(name)):
            raw_dataset_folder(raw, name)
    with pytest.raises(NnUNetDatasetError, match=_refused("../../pwned")):
        check_datasets_compatible(raw, ["../../pwned"])
    (raw / "Dataset501_site a").mkdir()  # found by id: its folder name becomes the site's name
    with pytest.raises(NnUNetDatasetError, match=_refused("Dataset501_site a")):
        raw_dataset_folder(raw, 501)
    (raw / "Dataset502_Site-B2").mkdir()
    assert (
        raw_dataset_folder(raw, 502).name == raw_dataset_folder(raw, "Dataset502_Site-B2").name == "Dataset502_Site-B2"
    )


def test_nnunet_export_refuses_a_bad_datalist_site(tmp_path):
    pytest.importorskip("nnunetv2")
    from monai_continual.nnunet import export_nnunet_datasets

    path = _datalist(tmp_path / "data" / "datalist.json", ["site_a", "../../pwned"])
    with pytest.raises(DatalistError, match=_refused("../../pwned")):
        export_nnunet_datasets(path, _deep(tmp_path) / "raw")
    assert not list(tmp_path.rglob("*pwned*"))


def test_nnunet_dataset_name_refuses():
    pytest.importorskip("nnunetv2")
    from monai_continual.nnunet.launcher import dataset_name

    with pytest.raises(ValueError, match=_refused("Dataset501_../../pwned")):
        dataset_name("Dataset501_../../pwned")
    assert dataset_name("Dataset501_site_a") == "Dataset501_site_a"


def test_nnunet_stage_executor_never_removes_a_folder_outside_the_run(tmp_path):
    """``train`` removes an interrupted stage's folder ``stages/stage####_<dataset>``: with a dataset named
    ``a/../../../victim`` that was a folder outside the run directory."""
    pytest.importorskip("nnunetv2")
    from monai_continual.nnunet.sites import NnUNetSiteSettings, NnUNetStageExecutor

    run = tmp_path / "run"
    (run / "stages" / "stage0001_a").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    executor = NnUNetStageExecutor(run, [Stage(1, sites=("a",))], None, NnUNetSiteSettings(device="cpu"),
                                   "nnUNetTrainer")
    attack = "a/../../../victim"
    stage = SimpleNamespace(number=1, sites=(attack,), start=0)  # a stage that got past Stage's own check
    with pytest.raises(ValueError, match=_refused(attack)):
        executor.train(stage)
    with pytest.raises(ValueError, match=_refused("../../pwned")):
        executor.evaluate(SimpleNamespace(number=1, sites=("a",)), "../../pwned")
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not list(tmp_path.rglob("*pwned*"))
