"""A wrong or hostile site, or bad input, is refused by name; nothing pickled crosses a site; a diverged stage
publishes nothing and the run resumes once the cause is fixed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_continual.consolidation import DirectoryWeightStore, Posterior, PosteriorFileError
from monai_continual.data import DatalistError
from monai_continual.handlers import PriorHandler
from monai_continual.strategies import NonFiniteTrainingError
from monai_continual.utils.tensor_files import TensorFileError
from runner_utils import tiny_runner, tiny_sites

PACKAGE = Path(__file__).resolve().parents[1] / "monai_continual"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return tiny_sites(tmp_path_factory.mktemp("tiny_hardening"))


def _copy_sites(sites: Path, tmp_path: Path) -> Path:
    target = tmp_path / "sites"
    shutil.copytree(sites.parent, target)
    return target / "datalist.json"


def _edit_volume(path: Path, change) -> None:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj).astype(np.float32).copy()
    data = change(data)
    nib.save(nib.Nifti1Image(data, image.affine), path)


def _first(datalist: Path, site: str, key: str, split: str = "training") -> Path:
    document = json.loads(datalist.read_text())
    return datalist.parent / document["sites"][site][split][0][key]


def _label_out_of_range(datalist: Path) -> None:
    _edit_volume(_first(datalist, "beta", "label"), lambda d: np.where(d == 3, 9, d))


def _shape_mismatch(datalist: Path) -> None:
    _edit_volume(_first(datalist, "gamma", "label"), lambda d: d[:-2])


def _nan_voxels(datalist: Path) -> None:
    def change(d):
        d[3, 4, 5] = np.nan
        return d
    _edit_volume(_first(datalist, "alpha", "image", "test"), change)


def _two_channels(datalist: Path) -> None:
    _edit_volume(_first(datalist, "gamma", "image"), lambda d: np.stack([d, d], axis=-1))


def _missing_case(datalist: Path) -> None:
    _first(datalist, "beta", "image", "validation").unlink()


def _empty_site(datalist: Path) -> None:
    document = json.loads(datalist.read_text())
    document["sites"]["beta"]["training"] = []
    datalist.write_text(json.dumps(document))


BAD_DATA = [
    ("label values outside num_classes", _label_out_of_range,
     r"site 'beta', training: label file .*values \[9\] outside 0..3"),
    ("image/label shape mismatch", _shape_mismatch,
     r"site 'gamma', training: image .* has shape \(16, 20, 16\) but its label .* has \(14, 20, 16\)"),
    ("NaN voxels", _nan_voxels, r"site 'alpha', test: image .* has 1 NaN or infinite voxels"),
    ("another channel count", _two_channels,
     r"site 'gamma', training: image .* has 2 channel\(s\); the other cases have 1"),
    ("a case file that does not exist", _missing_case, r"site 'beta', validation: image file .* does not exist"),
    ("an empty site", _empty_site, r"site 'beta': the site has no training cases"),
]


@pytest.mark.parametrize("name,breaker,message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_refused_before_training_and_loses_nothing(sites, tmp_path, name, breaker, message):
    datalist = _copy_sites(sites, tmp_path)
    output = tmp_path / "runs"
    finished = tiny_runner(datalist, output).run("fine_tuning", epochs=1)
    before = (finished.directory / "state.json").read_bytes()
    breaker(datalist)
    with pytest.raises(DatalistError, match=message):
        tiny_runner(datalist, output).run("fine_tuning", epochs=1)
    assert (finished.directory / "state.json").read_bytes() == before  # nothing saved was lost or rewritten


def test_a_datalist_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(DatalistError, match=r"datalist '.*nowhere.json' does not exist"):
        tiny_runner(tmp_path / "nowhere.json", tmp_path / "runs")


def test_a_posterior_of_another_network_is_refused_by_name(sites, tmp_path):
    runner = tiny_runner(sites, tmp_path)
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3))
    from monai_continual.bayes import bayesianize

    foreign = tmp_path / "foreign.safetensors"
    Posterior.from_model(bayesianize(other), site="elsewhere").save(foreign)
    network = runner.new_network(bayesian=True)
    with pytest.raises(PosteriorFileError, match="foreign.safetensors"):
        PriorHandler(foreign, network, init_posterior=True)()


def test_a_manifest_listing_a_missing_or_altered_file_is_refused_by_name(sites, tmp_path):
    result = tiny_runner(sites, tmp_path).run("fine_tuning", epochs=1)
    store = DirectoryWeightStore(result.directory / "store")
    entry = store.entry(2)
    path = store.root / entry.file
    original = path.read_bytes()
    other = store.load(store.entry(1))
    from monai_continual.consolidation.weight_store import WEIGHTS_FORMAT
    from monai_continual.utils.tensor_files import write_tensor_file

    write_tensor_file(
        path, other, {"site": entry.site, "stage": entry.stage}, WEIGHTS_FORMAT, 1
    )  # a valid file, swapped
    with pytest.raises(TensorFileError, match=rf"{entry.file}.*does not match the manifest's SHA-256.*site 'beta'"):
        store.load(entry)
    path.unlink()
    with pytest.raises(TensorFileError, match=rf"{entry.file}' does not exist"):
        store.load(entry)
    path.write_bytes(original)
    assert store.load(entry)  # restored: accepted again


def test_a_diverged_stage_publishes_nothing_and_the_run_resumes_once_fixed(sites, tmp_path):
    lr = {"value": 1e-3}
    calls = []

    def optimizer(params):
        calls.append(1)
        return torch.optim.Adam(params, lr=float("inf") if len(calls) == 2 and lr["value"] is None else 1e-3)

    runner = tiny_runner(sites, tmp_path, optimizer=optimizer)
    lr["value"] = None  # the second stage's optimizer diverges
    with pytest.raises(
        NonFiniteTrainingError,
        match=r"site 'beta', stage 2 \(2:beta\): (the loss became nan|non-finite weights in \['layers.0.weight')",
    ):
        runner.run("fine_tuning", epochs=2)
    run_dir = tmp_path / "fine_tuning"
    state = json.loads((run_dir / "state.json").read_text())
    assert [r["number"] for r in state["stages"]] == [0, 1]  # stage 1 kept
    assert DirectoryWeightStore(run_dir / "store").entry(2) is None  # nothing published
    stage1 = state["stages"][1]
    lr["value"] = 1e-3  # the cause is fixed
    result = tiny_runner(sites, tmp_path, optimizer=optimizer).run("fine_tuning", epochs=2)
    finished = json.loads((run_dir / "state.json").read_text())["stages"]
    assert finished[1] == stage1 and [r["number"] for r in finished] == [0, 1, 2, 3]
    assert result.transfers[1]["loaded"]["start"] == stage1["published"]


def test_nothing_another_site_wrote_is_unpickled():
    """Only a site's own epoch checkpoint (MONAI's, and nnU-Net's checkpoint_latest inside a stage) is read with
    torch.load; every file that crosses sites is safetensors/JSON."""
    allowed = {"handlers/epoch_checkpoint.py", "nnunet/stage_training.py"}
    found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(r"torch\.load\(", p.read_text())}
    assert found == allowed
    pickling = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if re.search(r"^\s*(import|from) pickle|pickle\.(load|dump)|torch\.save\(", p.read_text(),
                             re.MULTILINE)}
    assert pickling <= allowed


def test_optimizer_state_that_travels_is_safetensors(sites, tmp_path):
    result = tiny_runner(sites, tmp_path, optimizer_state="transfer").run("cyclic_weight_transfer", cycles=2)
    shared = sorted(
        p.name for p in (result.directory / "store").iterdir() if p.is_file() and not p.name.startswith(".")
    )
    assert all(name.endswith((".safetensors", ".json")) for name in shared)
    assert any(name.startswith("optimizer_stage") for name in shared)
    from monai_continual.utils.optimizer_files import load_optimizer_state

    state = load_optimizer_state(result.directory / "store" / "optimizer_stage0006.safetensors")
    assert state["param_groups"][0]["lr"] == 1e-3 and int(state["state"][0]["step"]) > 0
