"""One set of defaults: every setting that several bundle configs declare has the same default in each, and every
config that generates the embedded sites generates the same ones (so they never overwrite each other's data)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "multisite_segmentation" / "configs"
ENTRY_POINTS = ("experiment.json", "federated.json", "federated_bundle.json", "train_site.json", "train.json",
                "evaluate.json", "inference.json")
#: keys whose meaning differs by entry point (a config of its own, a path of its own, its own output)
OWN = {"imports", "bundle_root", "output_dir", "run", "initialize", "network", "network_def", "base_network",
       "datalist", "model_file", "transforms", "preprocessing", "optimizer", "loss", "device", "set_threads",
       "datalist_file", "multisite", "train_datalist", "strategy_options", "site", "sites", "federated"}


def _defaults() -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = defaultdict(dict)
    for name in ENTRY_POINTS:
        for key, value in json.loads((CONFIGS / name).read_text()).items():
            if key not in OWN:
                found[key][name] = value
    return found


def test_a_setting_declared_by_several_configs_has_one_default():
    disagree = {k: v for k, v in _defaults().items() if len(v) > 1 and len({json.dumps(x) for x in v.values()}) > 1}
    assert not disagree, f"settings with different defaults by config: {disagree}"


def test_the_shared_settings_are_the_recommended_ones():
    defaults = _defaults()
    for key, value in {"dataset_shape": [16, 20, 16], "channels": 12, "epochs": 30, "batch_size": 1,
                       "learning_rate": 0.003, "mc_samples": 3, "num_classes": 4, "sw_batch_size": 4}.items():
        assert set(map(json.dumps, defaults[key].values())) == {json.dumps(value)}, key
    assert len(defaults["dataset_shape"]) >= 4 and len(defaults["channels"]) >= 4
    dirs = {json.loads((CONFIGS / n).read_text()).get("dataset_dir") for n in ENTRY_POINTS}
    assert dirs - {None} == {"$@bundle_root + '/data/sites'"}
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == defaults["dataset_shape"][
        "experiment.json"]


def test_the_bundle_readme_lists_every_setting_of_the_main_job():
    readme = (CONFIGS.parent / "docs" / "README.md").read_text()
    internal = {"imports", "bundle_root", "set_threads", "network_def", "transforms", "experiment", "initialize",
                "run", "finalize", "init_process_group"}
    keys = set(json.loads((CONFIGS / "experiment.json").read_text())) - internal
    missing = sorted(k for k in keys if f"`{k}`" not in readme)
    assert not missing, f"settings of experiment.json missing from the bundle README: {missing}"


def test_the_bundle_readme_has_the_model_zoo_sections_and_the_main_jobs_table():
    readme = (CONFIGS.parent / "docs" / "README.md").read_text()
    for section in ("## Overview", "## Data", "## Training and evaluation", "## Performance", "## License"):
        assert section in readme, section
    top = (CONFIGS.parents[2] / "README.md").read_text()
    table = re.search(r"\| strategy \| site_a \|.*?\n(?:\|.*\n)+", top).group(0)
    assert table in readme  # the same results in both READMEs
