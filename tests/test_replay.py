"""The replay buffer and the dataset that mixes it in."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd
from scipy import stats

from monai_continual.data import ReplayBuffer, ReplayDataset, load_multisite_datalist


def _items(site: str, n: int) -> list[dict]:
    return [{"image": f"/data/{site}/img{i}.nii.gz", "label": f"/data/{site}/seg{i}.nii.gz"} for i in range(n)]


@pytest.mark.parametrize("policy", ["random", "reservoir", "first"])
def test_never_more_than_k_per_site_and_all_of_small_sites(policy):
    buffer = ReplayBuffer(capacity_per_site=5, policy=policy, seed=1)
    buffer.add_site("a", _items("a", 12))
    buffer.add_site("b", _items("b", 3))
    assert buffer.size() == {"a": 5, "b": 3} and len(buffer) == 8
    assert {i["image"] for i in buffer.site_items("b")} == {i["image"] for i in _items("b", 3)}
    kept_a = [i["image"] for i in buffer.site_items("a")]
    assert len(set(kept_a)) == 5 and set(kept_a) <= {i["image"] for i in _items("a", 12)}
    assert all(i["site"] == "a" for i in buffer.site_items("a"))
    if policy == "first":
        assert kept_a == [f"/data/a/img{i}.nii.gz" for i in range(5)]
    for extra in range(20):  # streaming more items never breaks the cap
        buffer.offer("a", {"image": f"/data/a/more{extra}.nii.gz"})
        assert buffer.size()["a"] == 5


@pytest.mark.parametrize("policy", ["reservoir", "random"])
def test_sampling_is_uniform(policy):
    """Keep 3 of 10 items, 4000 times with different seeds: every item is kept with probability 0.3.

    Chi-square goodness of fit of the 10 inclusion counts against 1200 each; a correct sampler fails with
    probability 0.001, a sampler biased to early or late items (e.g. keeping the first or last K) fails surely."""
    counts = Counter()
    for seed in range(4000):
        buffer = ReplayBuffer(capacity_per_site=3, policy=policy, seed=seed)
        buffer.add_site("a", [{"image": str(i)} for i in range(10)])
        counts.update(i["image"] for i in buffer.site_items("a"))
    observed = [counts[str(i)] for i in range(10)]
    assert sum(observed) == 12000
    assert stats.chisquare(observed, [1200] * 10).pvalue > 0.001


def test_save_load_round_trip_continues_the_stream(tmp_path):
    buffer = ReplayBuffer(capacity_per_site=4, policy="reservoir", seed=7)
    buffer.add_site("a", _items("a", 9))
    buffer.save(tmp_path / "replay")
    restored = ReplayBuffer.load(tmp_path / "replay", check_files=False)
    assert restored.items() == buffer.items() and restored.seen("a") == 9
    for item in _items("z", 30):  # both continue identically: the RNG state was saved
        buffer.offer("a", item)
        restored.offer("a", item)
    assert restored.items() == buffer.items()
    with pytest.raises(ValueError, match=r"site 'a': image file '/data/a/.*' listed in .* does not exist"):
        ReplayBuffer.load(tmp_path / "replay")
    with pytest.raises(ValueError, match="no replay manifest"):
        ReplayBuffer.load(tmp_path / "elsewhere")
    (tmp_path / "replay" / "replay_manifest.json").write_text("{")
    with pytest.raises(ValueError, match="damaged"):
        ReplayBuffer.load(tmp_path / "replay")


def test_replay_dataset_mixes_current_and_buffer_through_monai(small_sites, tmp_path):
    data = load_multisite_datalist(small_sites)
    buffer = ReplayBuffer(capacity_per_site=2, policy="first")
    buffer.add_site("site_a", data.items("site_a", "training"))
    buffer.add_site("site_c", data.items("site_c", "training"))
    current = data.items("site_b", "training")
    transform = Compose(
        [LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]), NormalizeIntensityd("image")]
    )
    ds = ReplayDataset(current, buffer, transform=transform, site="site_b")
    assert len(ds) == len(current) + 4
    sites = [ds[i]["site"] for i in range(len(ds))]
    assert sites == ["site_b"] * len(current) + ["site_a", "site_a", "site_c", "site_c"]
    assert [ds[i]["replay"] for i in range(len(ds))].count(True) == 4
    batches = list(DataLoader(ds, batch_size=3, shuffle=True, num_workers=0))
    assert sum(b["image"].shape[0] for b in batches) == len(ds)
    assert batches[0]["image"].shape[1:] == (1, 24, 28, 24)
    assert abs(float(ds[len(current)]["image"].mean())) < 1e-4  # transforms applied to replayed items too

    half = ReplayDataset(current, buffer, transform=None, replay_fraction=0.5, site="site_b")
    assert len(half) == 2 * len(current)
    fraction = ReplayDataset(current, buffer, replay_fraction=0.25, seed=1)
    replayed = [fraction[i]["image"] for i in range(len(current), len(fraction))]
    assert len(replayed) == round(len(current) / 3)
    cached = ReplayDataset(current, buffer, transform=transform, site="site_b", cache=True)
    for index in (0, len(current)):  # a current and a replayed item
        torch.testing.assert_close(cached[index]["image"], ds[index]["image"])
        assert cached[index]["site"] == ds[index]["site"]
    with pytest.raises(ValueError, match="no training items"):
        ReplayDataset([], buffer, site="site_b")
    with pytest.raises(ValueError, match="replay_fraction"):
        ReplayDataset(current, buffer, replay_fraction=1.0)


def test_export_is_explicit_and_copies(small_sites, tmp_path):
    data = load_multisite_datalist(small_sites)
    buffer = ReplayBuffer(capacity_per_site=1, policy="first")
    buffer.add_site("site_a", data.items("site_a", "training"))
    buffer.save(tmp_path / "local")
    manifest = json.loads((tmp_path / "local" / "replay_manifest.json").read_text())
    assert manifest["kept"]["site_a"][0]["image"] == data.items("site_a", "training")[0]["image"]  # paths only
    assert not list((tmp_path / "local").glob("**/*.nii.gz"))
    exported = ReplayBuffer.load(buffer.export_data(tmp_path / "shared"))
    item = exported.items()[0]
    assert str(tmp_path / "shared") in item["image"]
    assert open(item["image"], "rb").read() == open(data.items("site_a", "training")[0]["image"], "rb").read()
