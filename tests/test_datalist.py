"""Multi-site datalists: MONAI-ready lists per site, and errors that name the site and file at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_continual.data import DatalistError, load_multisite_datalist


def _copy(small_sites: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "sites"
    shutil.copytree(small_sites.parent, target)
    document = json.loads((target / "datalist.json").read_text())
    edit(document, target)
    (target / "datalist.json").write_text(json.dumps(document))
    return target / "datalist.json"


def test_items_are_monai_ready(small_sites):
    data = load_multisite_datalist(small_sites)
    items = data.items("site_b", "training")
    assert items and all(Path(i["image"]).is_absolute() and Path(i["image"]).exists() for i in items)
    assert data.training_sites() == ["site_a", "site_b", "site_c", "site_d"]
    pooled = data.pooled("training")
    assert len(pooled) == sum(len(data.site(s).training) for s in data.training_sites())
    assert {i["site"] for i in pooled} == set(data.training_sites())
    only = load_multisite_datalist(small_sites, sites=["site_c"])
    assert only.site_names == ["site_c"] and only.site("site_c").modality == "T2w"


def _missing_file(doc, root):
    (root / doc["sites"]["site_b"]["test"][0]["label"]).unlink()


def _empty_site(doc, root):
    doc["sites"]["site_c"]["training"] = []


def _bad_label(doc, root):
    path = root / doc["sites"]["site_d"]["validation"][0]["label"]
    image = nib.load(path)
    data = np.asanyarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, image.affine), path)


def _no_image_key(doc, root):
    del doc["sites"]["site_a"]["training"][1]["image"]


CASES = [
    ("missing file", _missing_file, {}, r"site 'site_b', test: label file .*sub\d+_seg.nii.gz' does not exist"),
    ("empty site", _empty_site, {}, r"site 'site_c': the site has no training cases"),
    ("label out of range", _bad_label, {"check_labels": True},
     r"site 'site_d', validation: label file .* values \[7\] outside"),
    ("item without image", _no_image_key, {}, r"site 'site_a', training: item lacks 'image'"),
    ("unknown site", lambda d, r: None, {"sites": ["site_x"]}, r"unknown site\(s\) \['site_x'\]"),
]


@pytest.mark.parametrize("case,edit,kwargs,message", CASES, ids=[c[0] for c in CASES])
def test_bad_datalists_name_site_and_file(small_sites, tmp_path, case, edit, kwargs, message):
    path = _copy(small_sites, tmp_path, edit)
    with pytest.raises(DatalistError, match=message):
        load_multisite_datalist(path, **kwargs)


def test_unreadable_datalists(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        load_multisite_datalist(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_multisite_datalist(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text('{"sites": {}}')
    with pytest.raises(DatalistError, match="non-empty 'sites'"):
        load_multisite_datalist(tmp_path / "empty.json")
