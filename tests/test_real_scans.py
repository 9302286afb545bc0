"""Real scans on the MONAI runner: label-aware patches for training, sliding windows for every evaluation, several
modalities, a dataset cache; a resumed patch stage repeats exactly and the defaults keep whole volumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

import resume_worker
from forked import run_forked
from monai_continual.bayes import MCInferer
from monai_continual.data import DatalistError, check_case, load_multisite_datalist, make_sites
from monai_continual.engines.settings import DatasetCache, MonaiSettings
from monai_continual.networks import MeshNet
from monai_continual.strategies import CRASH_ENV, NetworkKind
from runner_utils import TINY_SITES, tiny_runner, transform

SHAPE = (24, 28, 24)
PATCH = (12, 12, 12)


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return make_sites(tmp_path_factory.mktemp("scans"), sites=TINY_SITES[:2], seed=1, shape=SHAPE, figure=False,
                      progress=False)


def _net(in_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return MeshNet(3, in_channels, 4, channels=4, dilations=(1, 2, 1))


def test_defaults_keep_whole_volumes_and_patches_bring_a_window():
    plain = MonaiSettings(_net(), transform(), transform(), 4)
    assert isinstance(plain.inferer, SimpleInferer) and plain.train_chain is plain.train_transform
    assert plain.patch_transforms == () and plain.cache == DatasetCache.MEMORY and plain.patch_voxels is None
    assert plain.identity()["patch_size"] is None and plain.identity()["sliding_window"] is None
    patches = MonaiSettings(_net(), transform(), transform(), 4, patch_size=[12, 12, 12], samples_per_volume=2,
                            sw_overlap=0.5, cache="memory")
    assert isinstance(patches.inferer, SlidingWindowInferer) and tuple(patches.inferer.roi_size) == PATCH
    assert patches.inferer.overlap == 0.5 and patches.patch_voxels == 12**3
    assert patches.identity()["sliding_window"] == {"roi_size": [12, 12, 12], "sw_batch_size": 4, "overlap": 0.5}
    assert "cache" not in patches.identity() and patches.identity()["amp"] is False
    own = MonaiSettings(_net(), transform(), transform(), 4, patch_size=PATCH, inferer=SimpleInferer())
    assert isinstance(own.inferer, SimpleInferer) and own.identity()["sliding_window"] is None  # the user's wins
    window = MonaiSettings(_net(), transform(), transform(), 4, sw_roi_size=(16, 16, 16))
    assert tuple(window.inferer.roi_size) == (16, 16, 16) and window.train_chain is window.train_transform
    for bad, name in (({"patch_size": (12, 0, 12)}, "patch_size"), ({"sw_overlap": 1.0}, "sw_overlap"),
                      ({"cache": "ssd"}, "cache"), ({"samples_per_volume": 0}, "samples_per_volume")):
        with pytest.raises(ValueError, match=name):
            MonaiSettings(_net(), transform(), transform(), 4, **bad)


def test_training_batches_are_patches_and_the_elbo_counts_patch_voxels(sites, tmp_path):
    runner = tiny_runner(sites, tmp_path, patch_size=PATCH, samples_per_volume=2, batch_size=2)
    stages = runner.schedule("vcl")
    stage = next(s for s in stages if s.network == NetworkKind.BAYES)
    executor = runner.executor(tmp_path / "vcl", stages)
    items = executor._items(stage)
    run = executor._build(stage, items, None, 0)
    batch = next(iter(run.loader))
    assert batch["image"].shape == (4, 1, *PATCH) and batch["label"].shape == (4, 1, *PATCH)  # 2 volumes x 2 patches
    assert run.loss.num_examples == len(items) * 2 * 12**3
    result = runner.run("fine_tuning")  # trains on patches, scores whole volumes through the window
    assert result.matrix.num_stages == 2 and all(len(v) == 2 for v in result.scores.values())


def test_a_window_as_large_as_the_volume_is_a_whole_volume_forward():
    net = _net().eval()
    image = torch.randn(1, 1, *SHAPE)
    window = MonaiSettings(net, transform(), transform(), 4, patch_size=PATCH, sw_roi_size=SHAPE).inferer
    with torch.no_grad():
        torch.testing.assert_close(window(image, net), net(image), rtol=1e-5, atol=1e-5)
    settings = MonaiSettings(net, transform(), transform(), 4, sw_roi_size=SHAPE, mc_samples=3)
    bayes = settings.new_network(bayesian=True).eval()
    outputs = []
    for inferer in (settings.inferer_for(True), MCInferer(3, SimpleInferer())):
        torch.manual_seed(3)
        outputs.append(inferer(image, bayes))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def _final(run_dir: Path) -> tuple[dict, list]:
    state = json.loads((run_dir / "state.json").read_text())
    published = [(r["number"], r["published"], {k: v for k, v in r["details"].items() if k != "seconds"})
                 for r in state["stages"]]
    return json.loads((run_dir / "R.json").read_text()), published


def test_a_patch_stage_killed_after_an_epoch_resumes_exactly(sites, tmp_path):
    settings = json.dumps({"patch_size": list(PATCH), "samples_per_volume": 2, "epochs": 2, "mc_samples": 2})
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    for output, crash in (("reference", None), ("killed", "mid_training:2"), ("killed", None)):
        run_env = dict(env, **({CRASH_ENV: crash} if crash else {}))
        done = run_forked(resume_worker.main, [str(sites), str(tmp_path / output), "vcl", "{}", "0.03", settings],
                          env=run_env, timeout=300)
        assert (done.returncode != 0) == bool(crash), done.stdout[-2000:] if done.stdout else done
    assert _final(tmp_path / "killed" / "vcl") == _final(tmp_path / "reference" / "vcl")


def _two_modalities(datalist: Path, out: Path) -> Path:
    raw = json.loads(datalist.read_text())
    base = datalist.parent
    for site in raw["sites"].values():
        for split in ("training", "validation", "test"):
            for item in site.get(split, []):
                first = base / item["image"]
                image = nib.load(str(first))
                second = out / f"{first.parent.name}_{first.name.replace('.nii.gz', '_sq.nii.gz')}"
                nib.save(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32) ** 2, image.affine), str(second))
                item["image"] = [str(first), str(second)]
                item["label"] = str(base / item["label"])
    path = out / "datalist.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_two_modality_datalist_trains(sites, tmp_path):
    datalist = _two_modalities(Path(sites), tmp_path)
    data = load_multisite_datalist(datalist)
    assert len(data.items("alpha", "training")[0]["image"]) == 2
    runner = tiny_runner(datalist, tmp_path / "runs", network=_net(2), patch_size=PATCH)
    result = runner.run("fine_tuning")
    assert result.matrix.num_stages == 2
    with pytest.raises(DatalistError, match="1 channel"):  # a network of one modality is refused at the check
        check_case(dict(data.items("alpha", "test")[0], image=data.items("alpha", "test")[0]["image"][0]), 4,
                   channels=2)


def test_an_image_label_affine_mismatch_is_refused_naming_the_file(sites, tmp_path):
    item = load_multisite_datalist(sites).items("alpha", "training")[0]
    label = nib.load(item["label"])
    affine = label.affine.copy()
    affine[:3, 3] += 2.0  # shifted by 2 mm
    moved = tmp_path / "moved_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), str(moved))
    assert check_case(item, 4) == 1
    with pytest.raises(DatalistError, match="moved_seg.nii.gz.*different affines"):
        check_case(dict(item, label=str(moved)), 4, where="site 'alpha'")


@pytest.mark.parametrize("workers", [0, 1])
def test_memory_and_disk_caches_give_the_same_models_and_r_matrix(sites, tmp_path, workers):
    """Replay: its first site trains from the site's own dataset, the later ones from current and replayed items; the
    random patch crops run in the main process or in a DataLoader worker, which seeds them through the chain."""
    matrices, published = {}, {}
    for cache in ("none", "memory", "disk"):
        result = tiny_runner(sites, tmp_path / cache, patch_size=PATCH, cache=cache,
                             num_workers=workers).run("replay", capacity_per_site=2)
        matrices[cache] = json.loads((result.directory / "R.json").read_text())
        published[cache] = [t["published"] for t in result.transfers]
    assert matrices["memory"] == matrices["none"] and matrices["disk"] == matrices["none"]
    assert published["memory"] == published["none"] and published["disk"] == published["none"]
    assert any((tmp_path / "disk" / "replay" / "cache").iterdir())
    assert not (tmp_path / "none" / "replay" / "cache").exists()


def test_a_worker_seeds_a_chain_that_is_not_randomizable_itself_through_its_attributes():
    from monai.transforms import Compose, RandGaussianNoised

    from monai_continual.data import ChainSeededDataset

    class Chain:  # a user's callable holding its random transforms as an attribute
        def __init__(self):
            self.transforms = Compose([RandGaussianNoised("image", prob=1.0)])

        def __call__(self, item):
            return self.transforms(item)

    chain = Chain()
    dataset = ChainSeededDataset([{"image": torch.zeros(1, 4, 4)}] * 2, chain)

    def draw(seed):
        dataset.set_random_state(seed=seed)
        return chain(dict(dataset[0]))["image"]

    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))
