"""Real scans on the bundle configs: volumes larger than the patch through the main job, ``train_site.json`` +
``evaluate.json`` and ``inference.json`` with the real ``python -m monai.bundle run``; geometry (reorientation,
resampling and its inverse, sites of different voxel sizes) and channel counts checked before training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_continual.bayes import bayesianize
from monai_continual.consolidation import Posterior, save_weights
from monai_continual.data import (
    DatalistError,
    load_multisite_datalist,
    make_sites,
    scan_transforms,
    site_geometry,
)
from monai_continual.engines import ContinualRunner
from monai_continual.experiment import mc_segment_files
from monai_continual.networks import MeshNet
from monai_continual.strategies.run_state import RunState
from runner_utils import TINY_SITES
from test_bundle import CONFIGS, bundle

SHAPE = (32, 40, 32)
PATCH = "[16,16,16]"
SMALL_NET = ["--channels", "4"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three training sites and a held-out one at 32x40x32, twice the 16^3 patch on every axis."""
    return make_sites(tmp_path_factory.mktemp("scan_sites"), sites=TINY_SITES, seed=3, shape=SHAPE, figure=False,
                      progress=False)


def _meshnet(bayesian: bool = False, channels: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    net = MeshNet(3, 1, 4, channels=channels, dilations=(1, 1, 2, 4, 1))
    return bayesianize(net) if bayesian else net


@pytest.mark.slow
def test_the_main_job_trains_on_patches_and_evaluates_whole_volumes(scans, tmp_path):
    bundle("run", "experiment.json", tmp_path, "--datalist", str(scans), "--strategies", "['fine_tuning']",
           "--epochs", "1", "--orders", "1", "--mc_samples", "2", "--patch_size", PATCH, "--samples_per_volume", "2",
           *SMALL_NET)
    out = tmp_path / "outputs" / "experiment"
    config = RunState.read(out / "runs" / "fine_tuning").config
    assert config["patch_size"] == [16, 16, 16] and config["samples_per_volume"] == 2
    assert config["sliding_window"] == {"roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.25}
    summary = json.loads((out / "summary.json").read_text())
    row = summary["strategies"]["fine_tuning"]
    assert set(row["sites"]) == {"alpha", "beta", "gamma"} and set(row["held_out"]) == {"omega"}
    assert (out / "summary.md").is_file()


@pytest.mark.slow
def test_a_bayesian_site_trains_on_patches_and_evaluate_json_slides_a_window(scans, tmp_path):
    overrides = {"bundle_root": str(tmp_path), "datalist": str(scans), "site": "alpha", "bayesian": True,
                 "patch_size": [16, 16, 16], "samples_per_volume": 2, "batch_size": 2, "channels": 4, "epochs": 1}
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train_site.json"))
    parser.update(overrides)
    items = parser.get_parsed_content("train_datalist")
    batch = next(iter(parser.get_parsed_content("dataloader")))
    assert batch["image"].shape == (4, 1, 16, 16, 16) and batch["label"].shape == (4, 1, 16, 16, 16)
    assert parser.get_parsed_content("elbo_examples") == len(items) * 2 * 16**3  # N counts patch voxels

    prior = tmp_path / "prior.safetensors"
    Posterior.prior_of(_meshnet(bayesian=True)).save(prior)
    bundle("run", "train_site.json", tmp_path, "--datalist", str(scans), "--site", "alpha",
           "--bayesian", "true", "--prior", str(prior), "--patch_size", PATCH, "--samples_per_volume", "2",
           "--batch_size", "2", "--epochs", "1", *SMALL_NET)
    posterior = Posterior.load(tmp_path / "outputs" / "shared" / "sites" / "alpha.safetensors")
    model = tmp_path / "posterior_model.safetensors"
    save_weights(model, posterior.to_model(_meshnet(bayesian=True)))
    bundle("run", "evaluate.json", tmp_path, "--datalist", str(scans), "--model_file", str(model), "--bayesian",
           "true", "--mc_samples", "2", "--patch_size", PATCH, *SMALL_NET)
    scores = json.loads((tmp_path / "outputs" / "evaluation" / "scores.json").read_text())
    data = load_multisite_datalist(scans)
    assert {s: len(v) for s, v in scores.items()} == {s: len(data.items(s, "test")) for s in data.site_names}


def test_inference_writes_back_on_each_inputs_own_grid(scans, tmp_path):
    image = Path(load_multisite_datalist(scans).items("omega", "test")[0]["image"])
    source = nib.load(image)
    # the same scan stored in another orientation with anisotropic voxels
    affine = source.affine @ np.diag([-1.3, 1.0, 0.8, 1.0])
    other = tmp_path / "other_img.nii.gz"
    nib.save(nib.Nifti1Image(np.flip(np.asanyarray(source.dataobj), 0).copy(), affine), other)
    net = _meshnet(bayesian=True)
    weights = tmp_path / "net.safetensors"
    save_weights(weights, net)
    bundle("run", "inference.json", tmp_path, "--input_images", json.dumps([str(image), str(other)]),
           "--model_file", str(weights), "--mc_samples", "2", "--roi_size", PATCH, "--pixdim", "[2.0,2.0,2.0]",
           "--axcodes", "RAS", *SMALL_NET)
    for path in (image, other):
        name = path.name.split(".")[0]
        seg = nib.load(tmp_path / "outputs" / "inference" / f"{name}_seg.nii.gz")
        unc = nib.load(tmp_path / "outputs" / "inference" / f"{name}_uncertainty.nii.gz")
        original = nib.load(path)
        assert seg.shape == original.shape and unc.shape == original.shape + (3,)
        np.testing.assert_allclose(seg.affine, original.affine, atol=1e-5)
        np.testing.assert_allclose(unc.affine, original.affine, atol=1e-5)


def test_resampling_to_the_files_own_grid_and_back_changes_nothing(scans, tmp_path):
    image = load_multisite_datalist(scans).items("alpha", "test")[0]["image"]
    spacing = tuple(float(z) for z in nib.load(image).header.get_zooms()[:3])
    codes = "".join(nib.aff2axcodes(nib.load(image).affine))
    net = _meshnet(bayesian=True)
    outputs = {}
    for name, transform in (("plain", scan_transforms(["image"])),
                            ("resampled", scan_transforms(["image"], pixdim=spacing, axcodes=codes))):
        torch.manual_seed(0)  # the same Monte Carlo draws
        written = mc_segment_files(net, [image], tmp_path / name, transform, num_samples=2, roi_size=(16, 16, 16))
        outputs[name] = [np.asanyarray(nib.load(written[0][k]).dataobj) for k in ("seg", "uncertainty")]
    np.testing.assert_array_equal(outputs["resampled"][0], outputs["plain"][0])
    np.testing.assert_allclose(outputs["resampled"][1], outputs["plain"][1], atol=1e-4)


def _respaced_site(datalist: Path, site: str, zooms: tuple[float, float, float], out: Path) -> Path:
    """The datalist with ``site``'s images and labels rewritten with other voxel sizes (same voxels)."""
    raw = json.loads(Path(datalist).read_text())
    base = Path(datalist).parent
    for split in ("training", "validation", "test"):
        for item in raw["sites"][site][split]:
            for key in ("image", "label"):
                src = nib.load(base / item[key])
                affine = src.affine.copy()
                affine[:3, :3] = np.diag(zooms)
                dst = out / Path(item[key]).name
                nib.save(nib.Nifti1Image(np.asanyarray(src.dataobj), affine), dst)
                item[key] = str(dst)
    for name, entry in raw["sites"].items():
        if name != site:
            for split in ("training", "validation", "test"):
                for item in entry[split]:
                    for key in ("image", "label"):
                        item[key] = str(base / item[key])
    path = out / "datalist.json"
    path.write_text(json.dumps(raw))
    return path


def test_sites_of_other_voxel_sizes_are_reported_unless_resampled(scans, tmp_path, caplog):
    datalist = _respaced_site(scans, "beta", (1.5, 1.5, 1.5), tmp_path)
    geometry = {g.site: g for g in site_geometry(load_multisite_datalist(datalist))}
    assert geometry["beta"].spacing_min == geometry["beta"].spacing_max == (1.5, 1.5, 1.5)
    assert geometry["alpha"].spacing_min != (1.5, 1.5, 1.5) and geometry["alpha"].orientations == ("RAS",)
    with caplog.at_level(logging.WARNING, logger="monai_continual.engines.continual_runner"):
        ContinualRunner(datalist, tmp_path / "runs", _meshnet(), scan_transforms(), scan_transforms(), 4)
    assert "differ in voxel sizes (set pixdim" in caplog.text and "site 'beta': spacing 1.5x1.5x1.5 mm" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_continual.engines.continual_runner"):
        resampled = scan_transforms(pixdim=(2.0, 2.0, 2.0))
        ContinualRunner(datalist, tmp_path / "runs", _meshnet(), resampled, resampled, 4)
    assert "differ" not in caplog.text


def test_a_network_of_other_input_channels_is_refused_naming_the_site(scans, tmp_path):
    two = MeshNet(3, 2, 4, channels=4, dilations=(1, 2, 1))
    with pytest.raises(DatalistError, match=r"site 'alpha', training: image .* 1 channel\(s\); the network's "
                                            r"in_channels is 2"):
        ContinualRunner(scans, tmp_path / "runs", two, scan_transforms(), scan_transforms(), 4)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_inference_takes_a_plain_callable_and_refuses_a_grid_change_it_cannot_invert(scans, tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, LoadImaged

    image = load_multisite_datalist(scans).items("alpha", "test")[0]["image"]
    net = _meshnet(bayesian=True)

    def plain(item):  # no MONAI transform at all: nothing to invert, the grid is the file's
        return {"image": np.asanyarray(nib.load(item["image"]).dataobj)[None].astype(np.float32)}

    written = mc_segment_files(net, [image], tmp_path / "plain", plain, num_samples=1, roi_size=(16, 16, 16))
    assert nib.load(written[0]["seg"]).shape == nib.load(image).shape
    crop = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Lambdad("image", lambda x: x[:, 2:, 2:, 2:])])
    with pytest.raises(ValueError, match=r"changed the grid of .*cannot be inverted"):
        mc_segment_files(net, [image], tmp_path / "crop", crop, num_samples=1, roi_size=(16, 16, 16))
    assert not list((tmp_path / "crop").glob("*.nii.gz"))  # nothing written on the wrong grid
