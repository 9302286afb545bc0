"""One set of defaults: the package's recommended settings (``monai_continual.recommended.RECOMMENDED``) are
the defaults of every bundle entry point, of their strategy options, of the bundle README's table and of the Python
API; every config that generates the embedded sites generates the same ones (so they never overwrite each other's
data)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from monai.bundle import ConfigParser

from monai_continual.recommended import PAPER, RECOMMENDED

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


def test_every_entry_point_declares_the_recommended_settings():
    defaults = _defaults()
    for key, value in RECOMMENDED.settings().items():
        found = {name: v for name, v in defaults[key].items() if v != value}
        assert not found, f"{key}: {found} instead of RECOMMENDED.{key} = {value!r} (monai_continual/recommended.py)"
    assert len(defaults["dataset_shape"]) >= 4 and len(defaults["channels"]) >= 5 and len(defaults["mc_samples"]) >= 5
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


def test_the_strategy_options_of_every_entry_point_are_the_recommended_ones():
    for name, key in (("experiment.json", "strategy_options"), ("federated.json", "strategy_defaults"),
                      ("federated_bundle.json", "strategy_defaults")):
        for epochs in (30, 7):  # cycles and rounds follow the budget
            parser = ConfigParser(json.loads((CONFIGS / name).read_text()))
            parser["epochs"] = epochs
            expected = {k: v for k, v in RECOMMENDED.strategy_options(epochs).items() if name == "experiment.json"
                        or k != "replay"}  # replay moves data between sites: the federated configs leave it out
            if name == "experiment.json":  # the main job's FedProx row
                expected["fedprox"] = {"proximal_mu": RECOMMENDED.proximal_mu}
            assert parser.get_parsed_content(key) == expected, (name, epochs)
    assert RECOMMENDED.strategy_options(7)["cyclic_weight_transfer"] == {"epochs_per_visit": 3, "cycles": 2,
                                                                    "evaluate": "last_cycle"}
    assert RECOMMENDED.strategy_options(2)["federated_averaging"] == {"rounds": 1, "local_epochs": 3}


def test_the_python_api_defaults_to_the_recommended_settings(tmp_path):
    import inspect

    import torch

    from monai_continual.engines import MonaiSettings
    from monai_continual.experiment import MultiSiteExperiment
    from monai_continual.strategies.names import Strategy

    settings = MonaiSettings(torch.nn.Conv3d(1, 4, 1), lambda x: x, lambda x: x, 4)
    for key in ("epochs", "batch_size", "mc_samples", "optimizer_state", "seed"):
        assert getattr(settings, key) == RECOMMENDED.settings()[key], key
    for optimizer in (settings.optimizer, settings.bayes_optimizer):
        assert optimizer(settings.network.parameters()).defaults["lr"] == RECOMMENDED.learning_rate
    signature = inspect.signature(MultiSiteExperiment).parameters
    assert list(signature["dataset_shape"].default) == RECOMMENDED.settings()["dataset_shape"]
    experiment = MultiSiteExperiment(tmp_path, torch.nn.Conv3d(1, 4, 1), None, None, 4, runner_options={"epochs": 9})
    options = experiment.plan_settings.strategy_options
    assert options[Strategy.CYCLIC_WEIGHT_TRANSFER] == {"epochs_per_visit": 3, "cycles": 3, "evaluate": "last_cycle"}
    assert options == {Strategy(k): v for k, v in RECOMMENDED.strategy_options(9).items()}
    assert experiment.plan_settings.fedprox is None  # not among the strategies asked for
    from monai_continual.nnunet.cli import build_parser
    from monai_continual.nnunet.settings import NnUNetSiteSettings

    command = build_parser().parse_args(["sites", "replay", "501", "502", "-o", str(tmp_path)])
    assert NnUNetSiteSettings().replay_capacity == command.replay_capacity == RECOMMENDED.capacity_per_site


def _table_defaults(readme: str) -> dict[str, str]:
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", readme, flags=re.M))


def test_the_bundle_readme_documents_the_recommended_defaults_and_the_papers_as_overrides():
    readme = (CONFIGS.parent / "docs" / "README.md").read_text()
    table = _table_defaults(readme)
    for key, value in RECOMMENDED.settings().items():
        assert table[key] == (f"`{value}`" if isinstance(value, (str, list)) else str(value)).replace("'", ""), key
    paper = re.search(r"The papers' values (.*?)\.\n", readme, flags=re.S).group(1).replace("\n", " ")
    for key, value in PAPER.settings().items():
        if value != RECOMMENDED.settings()[key]:
            assert f"--{key} {value}" in paper, key
    assert f"'epochs_per_visit': {PAPER.epochs_per_visit}" in paper


def test_inference_takes_mc_samples_or_monai_s_num_samples():
    parser = ConfigParser(json.loads((CONFIGS / "inference.json").read_text()))
    assert "@num_samples" in parser["run"][0] and "@mc_samples" not in parser["run"][0]
    parser["mc_samples"] = 5
    assert parser.get_parsed_content("num_samples") == 5  # follows the shared setting
    parser["num_samples"] = 10  # an override of MCInferer's own name is used, not ignored
    assert parser.get_parsed_content("num_samples") == 10
