"""The embedded multi-site brain dataset: valid NIfTI, declared labels, sites that differ, reproducible bytes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from monai_continual.data import (
    BRAIN_LABELS,
    DEFAULT_SITES,
    SiteProfile,
    load_multisite_datalist,
    make_sites,
    mni_brain_shape,
    site_splits,
)


def _volumes(data, site, split="test"):
    items = data.items(site, split) or data.items(site, "training")
    return [(nib.load(i["image"]), nib.load(i["label"])) for i in items]


def test_generated_sites_are_valid_nifti_with_declared_labels(small_sites):
    data = load_multisite_datalist(small_sites, check_labels=True)
    assert data.site_names == [s.name for s in DEFAULT_SITES]
    assert data.labels == BRAIN_LABELS and data.held_out_sites() == ["heldout_e"]
    assert [data.site(s.name).num_cases for s in DEFAULT_SITES] == [sum(site_splits(s).values()) for s in DEFAULT_SITES]
    assert sum(len(data.items(s.name, "test")) for s in DEFAULT_SITES if not s.held_out) >= 40
    for name in data.site_names:
        for image, label in _volumes(data, name):
            assert image.shape == label.shape == (24, 28, 24)
            np.testing.assert_allclose(image.affine, label.affine)
            assert set(np.unique(np.asanyarray(label.dataobj))) == {0, 1, 2, 3}  # every tissue present
            zooms = image.header.get_zooms()
            assert all(4.0 < z < 8.0 for z in zooms)  # ~150 mm of brain over 24-28 voxels
    assert (small_sites.parent / "sites.png").stat().st_size > 10_000


def _brain_stats(data, site):
    means, sharpness, contrast = [], [], []
    for image, label in _volumes(data, site):
        img, seg = np.asanyarray(image.dataobj).astype(float), np.asanyarray(label.dataobj)
        brain = img[seg > 0]
        means.append(brain.mean())
        norm = img / brain.mean()
        sharpness.append(np.mean(np.abs(np.diff(norm, axis=0))[seg[1:] > 0]))
        contrast.append(img[seg == 3].mean() / img[seg == 1].mean())  # WM / CSF
    return np.mean(means), np.mean(sharpness), np.mean(contrast)


def test_sites_differ_measurably(small_sites):
    data = load_multisite_datalist(small_sites)
    stats = {name: _brain_stats(data, name) for name in data.site_names}
    # intensity scale: site_b is scanned at 100x, site_c at 500x the scale of site_a
    assert 50 < stats["site_b"][0] / stats["site_a"][0] < 200
    assert 200 < stats["site_c"][0] / stats["site_a"][0] < 1000
    # contrast: T1-like sites have white matter brighter than CSF, the T2-like site the reverse
    assert stats["site_a"][2] > 1.5 and stats["site_c"][2] < 0.8
    # resolution: the half-resolution site has clearly less voxel-to-voxel variation than site_a
    assert stats["site_d"][1] < 0.8 * stats["site_a"][1]


def test_same_seed_same_bytes_other_seed_other_bytes_and_cache(tmp_path):
    sites = [SiteProfile("x", 4, noise=0.05), SiteProfile("y", 2, "t2", held_out=True)]
    a = make_sites(tmp_path / "a", sites=sites, seed=3, shape=(16, 18, 16), figure=False, progress=False)
    b = make_sites(tmp_path / "b", sites=sites, seed=3, shape=(16, 18, 16), figure=False, progress=False)
    c = make_sites(tmp_path / "c", sites=sites, seed=4, shape=(16, 18, 16), figure=False, progress=False)
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.nii.gz"))
    assert len(files) == 12
    for rel in files:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    assert (a.parent / files[0]).read_bytes() != (c.parent / files[0]).read_bytes()
    assert a.read_text().replace(str(tmp_path / "a"), "") == b.read_text().replace(str(tmp_path / "b"), "")
    before = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*.nii.gz")}
    assert make_sites(tmp_path / "a", sites=sites, seed=3, shape=(16, 18, 16), figure=False, progress=False) == a
    assert before == {p: p.stat().st_mtime_ns for p in a.parent.rglob("*.nii.gz")}  # reused, not regenerated
    (a.parent / files[0]).unlink()  # a damaged cache is regenerated
    make_sites(tmp_path / "a", sites=sites, seed=3, shape=(16, 18, 16), figure=False, progress=False)
    assert (a.parent / files[0]).read_bytes() == (b.parent / files[0]).read_bytes()


def test_lesions_are_small_hyperintense_white_matter_blobs(tmp_path):
    path = make_sites(
        tmp_path,
        sites=[SiteProfile("x", 4, noise=0.0, bias=0.0)],
        shape=(24, 28, 24),
        lesions=True,
        figure=False,
        progress=False,
    )
    data = load_multisite_datalist(path, check_labels=True)
    assert data.labels[4] == "lesion"
    for image, label in _volumes(data, "x", "training"):
        img, seg = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
        assert 0 < (seg == 4).sum() < 0.01 * seg.size
        assert img[seg == 4].mean() > img[seg == 3].mean()


def test_bad_site_requests():
    with pytest.raises(ValueError, match="unknown site 'site_z'"):
        make_sites("/tmp/never-written", sites=["site_z"])
    with pytest.raises(ValueError, match="contrast"):
        SiteProfile("x", 5, contrast="flair")
    with pytest.raises(ValueError, match="at least 4 subjects"):
        SiteProfile("x", 2)


def test_make_sites_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        make_sites(target, sites=["site_a"])


def test_a_voxel_size_gives_that_spacing_on_the_brains_box(tmp_path):
    # the brain's box of the 1 mm template is what the grids divide: a finer voxel gives proportionally more voxels
    one, two = mni_brain_shape(1.0), mni_brain_shape(2.0)
    assert all(abs(a - 2 * b) <= 1 for a, b in zip(one, two)) and 70 < min(two) and max(two) < 110
    path = make_sites(tmp_path, sites=[SiteProfile("alpha", 4), SiteProfile("omega", 2, held_out=True)],
                      voxel_size=6.0, figure=False, progress=False)
    image = nib.load(load_multisite_datalist(path).items("alpha", "training")[0]["image"])
    assert image.shape == mni_brain_shape(6.0)
    zooms = np.asarray(image.header.get_zooms()[:3])
    assert np.all(np.abs(zooms * np.asarray(image.shape) - np.asarray(one)) <= 1.0)  # the same box, in mm
    assert np.all(np.abs(zooms - 6.0) <= 0.5 * 6.0 / np.asarray(image.shape) + 1e-6)  # half a voxel over the box
    for bad in (0.1, True, "2"):
        with pytest.raises(ValueError, match="voxel_size"):
            mni_brain_shape(bad)


def test_more_test_subjects_leave_the_training_and_validation_subjects_unchanged(tmp_path):
    def generate(folder, num_test):
        return load_multisite_datalist(make_sites(tmp_path / folder, sites=[SiteProfile("x", 8, num_test=num_test)],
                                                  seed=2, shape=(16, 18, 16), figure=False, progress=False))

    few, more = generate("few", None), generate("more", 5)
    assert site_splits(SiteProfile("x", 8)) == {"training": 5, "validation": 1, "test": 2}
    assert [len(more.items("x", s)) for s in ("training", "validation", "test")] == [5, 1, 5]
    for split in ("training", "validation"):
        for old, new in zip(few.items("x", split), more.items("x", split), strict=True):
            assert np.array_equal(np.asanyarray(nib.load(old["image"]).dataobj),
                                  np.asanyarray(nib.load(new["image"]).dataobj))
    # the first test subjects are the same ones, more follow
    assert np.array_equal(np.asanyarray(nib.load(few.items("x", "test")[0]["image"]).dataobj),
                          np.asanyarray(nib.load(more.items("x", "test")[0]["image"]).dataobj))
    for bad in (1, True, 2.5):
        with pytest.raises(ValueError, match="num_test must be a whole number, at least 2"):
            SiteProfile("x", 8, num_test=bad)
