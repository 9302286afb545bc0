"""Plan once, share the plans with every site's dataset, preprocess each site with them.

Weights can only move between nnU-Net trainings that build the same network from the same plans (patch size,
spacing, normalization, architecture). Planning is therefore done once, on one source dataset, and the plans are
moved to the other sites' datasets with nnU-Net's own ``move_plans_between_datasets`` before each site preprocesses
its own cases. Only the plans (no images) cross a site boundary.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_continual.nnunet.datasets import check_datasets_compatible, raw_dataset_folder
from monai_continual.nnunet.environment import dataset_id, nnunet_paths
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["plan_and_preprocess_sites", "plans_file", "shared_plans", "preprocessed_data_folder", "check_shared_plans"]


def plans_file(dataset: str | int, plans: str = "nnUNetPlans") -> Path:
    """``nnUNet_preprocessed/<dataset>/<plans>.json``."""
    paths = nnunet_paths()
    return paths["preprocessed"] / raw_dataset_folder(paths["raw"], dataset).name / f"{plans}.json"


def shared_plans(plans: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a plans file that must agree between sites (each site's dataset name and image reader may differ).

    Returned JSON-normalized (tuples as lists), so that two results compare equal exactly when the plans agree.
    """
    return json.loads(json.dumps({k: v for k, v in plans.items() if k not in ("dataset_name", "image_reader_writer")}))


def check_shared_plans(datasets: Sequence[str], plans: str = "nnUNetPlans") -> None:
    """Refuse, naming them, datasets without plans or preprocessed with different plans (weights would not fit).

    Example::

        >>> check_shared_plans(["Dataset501_site_a", "Dataset502_site_b"])
    """
    missing = [d for d in datasets if not plans_file(d, plans).is_file()]
    if missing:
        raise FileNotFoundError(f"datasets {missing} have no {plans}.json; run plan_and_preprocess_sites first.")
    shared = {json.dumps(shared_plans(json.loads(plans_file(d, plans).read_text())), sort_keys=True) for d in datasets}
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
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess_dataset,
    )
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
    shared = shared_plans(json.loads(source_plans.read_text()))
    result = {}
    for name in names:
        target = plans_file(name, plans)
        if name != source_name:
            move_plans_between_datasets(source_name, name, plans, plans)
        done = target.with_name(target.stem + ".preprocessed.json")
        wanted = {"plans": shared, "configurations": list(configurations)}
        if not done.is_file() or json.loads(done.read_text()) != wanted:
            atomic_write_text(
                target.parent / "dataset.json", (raw_dataset_folder(paths["raw"], name) / "dataset.json").read_text()
            )
            preprocess_dataset(dataset_id(name), plans, list(configurations), [num_processes] * len(configurations),
                               verbose=verbose, show_progress_bar=False)
            atomic_write_text(done, json.dumps(wanted))
        result[name] = target
    return result


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

