"""Plan once, share the plans with every site's dataset, preprocess each site with them.

Weights can only move between nnU-Net trainings that build the same network from the same plans (patch size,
spacing, normalization, architecture). Planning is therefore done once and the plans are given to every site's
dataset before each site preprocesses its own cases. Only the plans (no images) cross a site boundary. Two ways:

- :func:`plan_and_preprocess_sites`: on one machine that sees every site's raw data, plan on one source dataset and
  move the plans to the others with nnU-Net's own ``move_plans_between_datasets``;
- federated: every site computes its fingerprint (:func:`~monai_continual.nnunet.fingerprints.site_fingerprint`),
  :func:`plan_from_fingerprints` merges them and runs nnU-Net's planner on the pooled fingerprint, and every site
  preprocesses its own dataset with the plans file it was given (:func:`preprocess_with_plans`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_continual.nnunet.datasets import channel_file, check_datasets_compatible, raw_dataset_folder
from monai_continual.nnunet.environment import NNUNET_ENV, dataset_id, nnunet_paths
from monai_continual.nnunet.fingerprints import (
    load_fingerprint,
    merge_fingerprints,
    nnunet_fingerprint,
    site_fingerprint,
)
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.hashing import config_sha256

__all__ = [
    "PLANNED_DATASET_KEY", "PlansFileError", "plan_and_preprocess_sites", "plans_file", "shared_plans",
    "preprocessed_data_folder", "check_shared_plans", "plan_from_fingerprints", "load_plans_file", "check_plans",
    "preprocess_with_plans", "plans_sha256",
]

#: the key of plans made from fingerprints that records the channels, labels and case count they were made for
PLANNED_DATASET_KEY = "planned_for_dataset"

#: the dataset name plans made from fingerprints carry until a site adopts them
_FEDERATED_DATASET = "Dataset000_federated"

#: what the classes a plans file names may be: nnU-Net imports them by name (``pydoc.locate``) to build the network
_NETWORK_PACKAGE = "dynamic_network_architectures.architectures."
_LAYER_PACKAGE = "torch.nn."
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
#: the plans' resampling functions, each looked up by name with ``<key>_kwargs`` as arguments
_RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
#: the largest patch side or batch size plans may ask a site for
_MAX_EXTENT = 4096


class PlansFileError(ValueError):
    """A plans file that is malformed or does not fit the dataset it is given to (the message names the file)."""


def plans_file(dataset: str | int, plans: str = "nnUNetPlans") -> Path:
    """``nnUNet_preprocessed/<dataset>/<plans>.json``."""
    paths = nnunet_paths()
    return paths["preprocessed"] / raw_dataset_folder(paths["raw"], dataset).name / f"{plans}.json"


def shared_plans(plans: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a plans file that must agree between sites (each site's dataset name and image reader may differ).

    Returned JSON-normalized (tuples as lists), so that two results compare equal exactly when the plans agree.
    """
    return json.loads(json.dumps({k: v for k, v in plans.items() if k not in ("dataset_name", "image_reader_writer")}))


def plans_sha256(plans: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`shared_plans`: equal for two sites exactly when their plans agree.

    Example::

        >>> plans_sha256(json.loads(plans_file("Dataset501_site_a").read_text()))
    """
    return config_sha256(shared_plans(plans))


def check_shared_plans(datasets: Sequence[str], plans: str = "nnUNetPlans") -> None:
    """Refuse, naming them, datasets without plans or preprocessed with different plans (weights would not fit).

    Example::

        >>> check_shared_plans(["Dataset501_site_a", "Dataset502_site_b"])
    """
    missing = [d for d in datasets if not plans_file(d, plans).is_file()]
    if missing:
        raise FileNotFoundError(f"datasets {missing} have no {plans}.json; run plan_and_preprocess_sites first.")
    shared = {plans_sha256(json.loads(plans_file(d, plans).read_text())) for d in datasets}
    if len(shared) != 1:
        raise ValueError(f"datasets {list(datasets)} were preprocessed with different plans; plan once and move the "
                         "plans (plan_and_preprocess_sites) so that weights fit every site.")


def preprocessed_data_folder(dataset_folder: str | os.PathLike, configuration: str, plans: str = "nnUNetPlans") -> Path:
    """The folder of ``configuration``'s preprocessed cases inside ``nnUNet_preprocessed/<dataset>``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_folder = Path(dataset_folder)
    manager = PlansManager(str(dataset_folder / f"{plans}.json"))
    return dataset_folder / manager.get_configuration(configuration).data_identifier


def plan_and_preprocess_sites(
    datasets: Sequence[str | int],
    configurations: Sequence[str] = ("3d_fullres",),
    plans: str = "nnUNetPlans",
    source: str | int | None = None,
    num_processes: int = 1,
    verbose: bool = False,
) -> dict[str, Path]:
    """Plan on ``source`` (default: the first dataset), move the plans to the others, preprocess every dataset.

    The datasets are checked first (:func:`check_datasets_compatible`), so mismatched sites fail before any work.
    Datasets whose plans already equal the shared ones are not preprocessed again.

    Args:
        datasets: the sites' datasets (names or ids) under ``nnUNet_raw``.
        configurations: nnU-Net configurations to preprocess (``"3d_fullres"``, ``"2d"``...).
        plans: the plans identifier.
        source: the dataset whose fingerprint the plans are made from.
        num_processes: preprocessing workers per dataset.
        verbose: nnU-Net's own verbose output.

    Returns:
        dataset name -> its plans file.

    Example::

        >>> plan_and_preprocess_sites(["Dataset501_site_a", "Dataset502_site_b"], configurations=["3d_fullres"])
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )

    paths = nnunet_paths()
    names = list(check_datasets_compatible(paths["raw"], datasets))
    source_name = raw_dataset_folder(paths["raw"], source).name if source is not None else names[0]
    if source_name not in names:
        raise ValueError(f"plan_and_preprocess_sites: source {source_name} is not one of the datasets {names}.")
    source_id = dataset_id(source_name)
    source_plans = plans_file(source_name, plans)
    for name in names:  # every site fingerprints its own cases (nnU-Net keeps it next to the plans)
        if not (paths["preprocessed"] / name / "dataset_fingerprint.json").is_file():
            extract_fingerprints(
                [dataset_id(name)], num_processes=num_processes, verbose=verbose, show_progress_bar=False
            )
    if not source_plans.is_file():
        with _planning_threads():
            plan_experiments([source_id], overwrite_plans_name=plans if plans != "nnUNetPlans" else None)
    result = {}
    for name in names:
        if name != source_name:
            move_plans_between_datasets(source_name, name, plans, plans)
        result[name] = _preprocess(name, plans, configurations, num_processes, verbose)
    return result


def _preprocess(name: str, plans: str, configurations: Sequence[str], num_processes: int, verbose: bool) -> Path:
    """Preprocess dataset ``name`` with its plans ``plans`` unless it was done with the same plans; the plans file."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    raw = nnunet_paths(("raw", "preprocessed"))["raw"]
    target = plans_file(name, plans)
    done = target.with_name(target.stem + ".preprocessed.json")
    wanted = {"plans": shared_plans(json.loads(target.read_text())), "configurations": list(configurations)}
    if not done.is_file() or json.loads(done.read_text()) != wanted:
        atomic_write_text(target.parent / "dataset.json", (raw_dataset_folder(raw, name) / "dataset.json").read_text())
        preprocess_dataset(dataset_id(name), plans, list(configurations), [num_processes] * len(configurations),
                           verbose=verbose, show_progress_bar=False)
        atomic_write_text(done, json.dumps(wanted))
    return target


@contextlib.contextmanager
def _planning_threads() -> Iterator[None]:
    # nnU-Net's planner sets torch's thread count to nnUNet_n_proc_DA, which fails for 0 (single-threaded data
    # augmentation, a valid training setting)
    value = os.environ.get("nnUNet_n_proc_DA")
    if value == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if value == "0":
            os.environ["nnUNet_n_proc_DA"] = value



def plan_from_fingerprints(
    fingerprints: Sequence[str | os.PathLike],
    output: str | os.PathLike | None = None,
    planner: str = "ExperimentPlanner",
    plans: str = "nnUNetPlans",
) -> dict[str, Any]:
    """Merge the sites' fingerprint files and run nnU-Net's planner on the pooled fingerprint.

    The plans equal nnU-Net's plans of the pooled data up to the approximations of
    :func:`~monai_continual.nnunet.fingerprints.merge_fingerprints` (the foreground median and 0.5/99.5 percentiles in
    ``foreground_intensity_properties_per_channel``). ``dataset_name`` is a placeholder and ``image_reader_writer`` is
    nnU-Net's first reader of the file ending: each site replaces both (:func:`preprocess_with_plans`). The plans also
    record, under :data:`PLANNED_DATASET_KEY`, the channels, labels and case count they were made for.

    Args:
        fingerprints: the sites' fingerprint files (checked when read), in the order their cases are pooled.
        output: where to write the plans (JSON); not written when ``None``.
        planner: nnU-Net's experiment planner class (``ExperimentPlanner``, ``nnUNetPlannerResEncM``...).
        plans: the plans identifier (``plans_name``).

    Returns:
        the plans.

    Example::

        >>> plans = plan_from_fingerprints(["site_a.json", "site_b.json"], "plans.json")
        >>> plans["configurations"]["3d_fullres"]["patch_size"]
    """
    import nnunetv2
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    merged = merge_fingerprints([load_fingerprint(f) for f in fingerprints],
                                [f"fingerprint file {f}" for f in fingerprints])
    planner_class = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                                "nnunetv2.experiment_planning")
    if planner_class is None:
        raise ValueError(f"plan_from_fingerprints: nnU-Net has no experiment planner {planner!r}.")
    dataset = {**merged["dataset"], "numTraining": len(merged["spacings"]), "dataset": {}}  # no cases, no files
    with tempfile.TemporaryDirectory() as tmp, _nnunet_folders(Path(tmp)) as folders:
        (folders["raw"] / _FEDERATED_DATASET).mkdir(parents=True)
        (folders["preprocessed"] / _FEDERATED_DATASET).mkdir(parents=True)
        (folders["raw"] / _FEDERATED_DATASET / "dataset.json").write_text(json.dumps(dataset))
        (folders["preprocessed"] / _FEDERATED_DATASET / "dataset_fingerprint.json").write_text(
            json.dumps(nnunet_fingerprint(merged)))
        experiment = planner_class(_FEDERATED_DATASET, plans_name=plans)
        # nnU-Net picks the reader by opening a case's image; there is none here, so the file ending decides
        reader = determine_reader_writer_from_file_ending(dataset["file_ending"], None, verbose=False)
        experiment.determine_reader_writer = lambda: reader
        with _planning_threads():
            experiment.plan_experiment()
        result = json.loads((folders["preprocessed"] / _FEDERATED_DATASET / f"{plans}.json").read_text())
    result[PLANNED_DATASET_KEY] = {**merged["dataset"], "numTraining": len(merged["spacings"])}
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2))
    return result


def load_plans_file(path: str | os.PathLike, dataset_json: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read an nnU-Net plans file and check it, and that it fits a dataset (its ``dataset.json``) when given.

    Raises:
        PlansFileError: ``"plans file <path>: <what is wrong>"``: not JSON, not nnU-Net plans, or planned for other
            channels or labels than the dataset's.

    Example::

        >>> plans = load_plans_file("plans.json", json.loads(Path("dataset.json").read_text()))
    """
    where = f"plans file {path}"
    try:
        plans = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise PlansFileError(f"{where}: cannot be read ({e.strerror or e}).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlansFileError(f"{where}: not valid JSON ({e}).") from None
    return check_plans(plans, dataset_json, where)


def check_plans(plans: Any, dataset_json: Mapping[str, Any] | None = None,
                where: str = "the plans") -> dict[str, Any]:
    """Check nnU-Net plans in memory (what :func:`load_plans_file` checks after reading), and that they fit a
    dataset when its ``dataset.json`` is given: plans received from another party are checked before they are stored.

    Raises:
        PlansFileError: ``"<where>: <what is wrong>"``.

    Example::

        >>> check_plans(received, where="the received plans")
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict) or not plans[
                "configurations"]:
            raise TypeError("no configurations")
        if not isinstance(plans["plans_name"], str) or not plans["plans_name"].replace("_", "").isalnum():
            raise TypeError("plans_name is not an identifier")
        if not isinstance(plans.get("label_manager", "LabelManager"), str) or not plans.get(
                "label_manager", "LabelManager").isidentifier():  # looked up by name in nnU-Net's label handling
            raise TypeError("label_manager is not the plain name of one of nnU-Net's classes")
        manager = PlansManager(plans)
        channel_counts = {len(plans["foreground_intensity_properties_per_channel"])}
        for name in manager.available_configurations:
            configuration = manager.get_configuration(name)
            channel_counts.add(len(configuration.normalization_schemes))
            _ = (configuration.patch_size, configuration.spacing, configuration.data_identifier)
            _check_class_names(configuration)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, RecursionError) as e:
        raise PlansFileError(f"{where}: not nnU-Net plans ({type(e).__name__}: {e}).") from None
    if len(channel_counts) != 1:
        raise PlansFileError(f"{where}: its configurations and intensity properties disagree on the channel count.")
    if dataset_json is not None:
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        if channel_counts != {len(channels)}:
            raise PlansFileError(f"{where}: planned for {channel_counts.pop()} input channel(s), but the dataset has "
                                 f"{len(channels)} ({channels}).")
        planned = plans.get(PLANNED_DATASET_KEY)
        if isinstance(planned, Mapping):
            for key, what in (("channel_names", "channels"), ("labels", "labels"),
                              ("regions_class_order", "region order")):
                if planned.get(key) != dataset_json.get(key):
                    raise PlansFileError(f"{where}: planned for {what} {planned.get(key)}, but the dataset has "
                                         f"{dataset_json.get(key)}; plan with fingerprints of datasets like this one.")
    return plans


def preprocess_with_plans(
    dataset: str | int,
    plans_path: str | os.PathLike,
    configurations: Sequence[str] = ("3d_fullres",),
    num_processes: int = 1,
    verbose: bool = False,
    replace: bool = True,
) -> Path:
    """Preprocess a site's own dataset with a plans file it was given (from :func:`plan_from_fingerprints`).

    The plans are checked (:func:`load_plans_file`) and written, as ``move_plans_between_datasets`` does, to
    ``nnUNet_preprocessed/<dataset>/<plans_name>.json`` with the dataset's own name and image reader; then nnU-Net
    preprocesses the dataset (skipped when it was already preprocessed with the same plans); a held-out dataset (test
    cases only) takes the plans without preprocessing, to be scored with them. The dataset's own
    fingerprint (:func:`~monai_continual.nnunet.fingerprints.site_fingerprint`, as nnU-Net's
    ``dataset_fingerprint.json``) is written next to the plans when missing: nnU-Net's trainer copies it to its output.

    Args:
        dataset: the site's dataset (name or id) under ``nnUNet_raw``.
        plans_path: the plans file.
        configurations: nnU-Net configurations to preprocess; each must be in the plans.
        num_processes: preprocessing workers.
        verbose: nnU-Net's own verbose output.
        replace: whether plans under the same identifier that differ from these are replaced (and the dataset
            preprocessed again); ``False`` refuses them, leaving the dataset as it is.

    Returns:
        the dataset's plans file.

    Raises:
        PlansFileError: the plans are malformed or do not fit the dataset, or (``replace=False``) the dataset has
            other plans under their identifier.

    Example::

        >>> preprocess_with_plans("Dataset501_site_a", "plans.json", ["3d_fullres"])
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    paths = nnunet_paths(("raw", "preprocessed"))
    folder = raw_dataset_folder(paths["raw"], dataset)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = load_plans_file(plans_path, dataset_json)
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise PlansFileError(f"plans file {plans_path}: has no configuration {missing} (it has "
                             f"{sorted(plans['configurations'])}).")
    cases = (get_filenames_of_train_images_and_targets(str(folder), dataset_json)
             if (folder / "imagesTr").is_dir() else {})
    tests = sorted((folder / "imagesTs").glob(channel_file("*", 0, dataset_json["file_ending"])))
    if not cases and not tests:
        raise ValueError(f"preprocess_with_plans: dataset {folder.name} has neither training nor test cases.")
    example = next(iter(cases.values()))["images"][0] if cases else str(tests[0])
    reader = determine_reader_writer_from_dataset_json(dataset_json, example, allow_nonmatching_filename=True,
                                                       verbose=False)
    plans = {**plans, "dataset_name": folder.name, "image_reader_writer": reader.__name__}
    target = plans_file(folder.name, plans["plans_name"])
    if not replace and target.is_file() and plans_sha256(json.loads(target.read_text())) != plans_sha256(plans):
        raise PlansFileError(f"dataset {folder.name} was planned with other plans named {plans['plans_name']!r}; "
                             "plan under another identifier, or remove those plans to replace them.")
    atomic_write_text(target, json.dumps(plans, indent=2))
    if not cases:  # a held-out dataset: the plans its test cases are predicted with, nothing to preprocess
        return target
    own = target.parent / "dataset_fingerprint.json"
    if not own.is_file():  # nnU-Net's trainer keeps the dataset's fingerprint with its checkpoints
        atomic_write_text(own, json.dumps(nnunet_fingerprint(site_fingerprint(folder.name)), indent=1))
    return _preprocess(folder.name, plans["plans_name"], configurations, num_processes, verbose)


def _located_module_class(name: Any, package: str, what: str) -> None:
    """Refuse ``name`` unless it names, as nnU-Net resolves it (``pydoc.locate``), an ``nn.Module`` class defined in
    ``package``: a dotted path can reach any module that another imports (``torch.nn.modules.module.torch.os.system``
    is ``os.system``), so the prefix alone proves nothing."""
    import pydoc

    from torch import nn

    if not (isinstance(name, str) and name.startswith(package) and _DOTTED_NAME.fullmatch(name)):
        raise ValueError(f"{what}={name!r} is not a class of {package}*")
    found = pydoc.locate(name)
    if not (isinstance(found, type) and issubclass(found, nn.Module) and found.__module__.startswith(package)):
        raise ValueError(f"{what}={name!r} is not a class of {package}* (it names {found!r})")


def _check_plain_data(value: Any, where: str) -> None:
    """Refuse anything but numbers, booleans, None, and lists or string-keyed mappings of them: the plans' layer
    arguments go to constructors as keyword arguments."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain_data(item, where)
    elif isinstance(value, Mapping) and all(isinstance(k, str) and k.isidentifier() for k in value):
        for key, item in value.items():
            _check_plain_data(item, f"{where}.{key}")
    else:
        raise ValueError(f"{where} must hold numbers, booleans and lists of them, got {value!r}")


def _check_class_names(configuration: Any) -> None:
    """Refuse a configuration that names code other than nnU-Net's architectures and ``torch.nn`` layers, or paths:
    nnU-Net imports and calls whatever the plans name, with arguments from the plans, and writes preprocessed data
    under ``data_identifier``, so plans from elsewhere are data only when these are checked."""
    _located_module_class(configuration.network_arch_class_name, _NETWORK_PACKAGE, "the network class")
    arguments = configuration.network_arch_init_kwargs
    imported = set(configuration.network_arch_init_kwargs_req_import)
    for key in imported:
        if arguments.get(key) is not None:
            _located_module_class(arguments[key], _LAYER_PACKAGE, f"the network argument {key}")
    for key, value in arguments.items():
        if key not in imported:
            _check_plain_data(value, f"the network argument {key}")
    if not (isinstance(configuration.data_identifier, str) and _IDENTIFIER.fullmatch(configuration.data_identifier)):
        raise ValueError(f"data_identifier {configuration.data_identifier!r} is not a folder name of letters, digits "
                         "and underscores")
    raw = configuration.configuration
    names = [raw.get("preprocessor_name"), *raw.get("normalization_schemes", [None]),
             *(raw.get(k) for k in _RESAMPLING_KEYS)]
    for name in names:  # looked up by name inside nnU-Net's own packages: plain names only
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"{name!r} is not the plain name of one of nnU-Net's classes or functions")
    for key in _RESAMPLING_KEYS:
        _check_plain_data(raw.get(f"{key}_kwargs"), f"{key}_kwargs")
    sizes = [*raw.get("patch_size", [None]), raw.get("batch_size")]
    if not all(isinstance(v, int) and 0 < v <= _MAX_EXTENT for v in sizes):
        raise ValueError(f"patch size and batch size must be whole numbers in 1..{_MAX_EXTENT}, got {sizes}")


@contextlib.contextmanager
def _nnunet_folders(root: Path) -> Iterator[dict[str, Path]]:
    """Point nnU-Net's raw and preprocessed folders at ``root/raw`` and ``root/preprocessed`` for the block."""
    keys = ("raw", "preprocessed")
    saved = {k: os.environ.get(NNUNET_ENV[k]) for k in keys}
    folders = {k: root / k for k in keys}
    os.environ.update({NNUNET_ENV[k]: str(v) for k, v in folders.items()})
    try:
        yield folders
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(NNUNET_ENV[key], None)
            else:
                os.environ[NNUNET_ENV[key]] = value
