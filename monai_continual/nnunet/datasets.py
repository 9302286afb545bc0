"""One nnU-Net raw dataset per site, and the checks that make the sites' datasets exchangeable.

nnU-Net can only move weights between datasets that share label sets, channel counts and plans. These functions
write a multi-site datalist as nnU-Net raw datasets (``DatasetXXX_<site>/imagesTr``, ``labelsTr``, ``imagesTs``,
``labelsTs``, ``dataset.json``) and check a set of raw datasets before anything is planned or trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_continual.data.datalist import MultiSiteDatalist, load_multisite_datalist
from monai_continual.utils.atomic import atomic_copy, atomic_write_text
from monai_continual.utils.names import check_site_name

__all__ = ["NnUNetDatasetError", "export_nnunet_datasets", "check_datasets_compatible", "raw_dataset_folder"]


class NnUNetDatasetError(ValueError):
    """Sites' nnU-Net datasets that cannot be trained together (the message names the dataset at fault)."""


def raw_dataset_folder(raw_root: str | os.PathLike, dataset: str | int) -> Path:
    """The folder of ``dataset`` (``"Dataset501_site_a"`` or ``501``) under ``raw_root``.

    A dataset's name is a site's name (it becomes part of folder names of a run), so it must match
    ``^[A-Za-z0-9_-]+$`` (:func:`~monai_continual.utils.check_site_name`): ``NnUNetDatasetError`` otherwise.
    """
    raw_root = Path(raw_root)
    if isinstance(dataset, int) or str(dataset).isdigit():
        matches = sorted(raw_root.glob(f"Dataset{int(dataset):03d}_*"))
        if len(matches) != 1:
            raise NnUNetDatasetError(
                f"dataset id {dataset}: expected one folder Dataset{int(dataset):03d}_* in {raw_root}, "
                f"found {len(matches)}."
            )
        _check_dataset_name(matches[0].name)
        return matches[0]
    folder = raw_root / _check_dataset_name(dataset)
    if not folder.is_dir():
        raise NnUNetDatasetError(f"dataset {dataset!r}: no folder {folder}.")
    return folder


def _check_dataset_name(name: Any) -> str:
    try:
        return check_site_name(name, "nnU-Net dataset")
    except ValueError as err:
        raise NnUNetDatasetError(str(err)) from None


def export_nnunet_datasets(
    datalist: MultiSiteDatalist | str | os.PathLike,
    raw_root: str | os.PathLike,
    first_id: int = 501,
    sites: Sequence[str] | None = None,
    channel_name: str = "MRI",
) -> dict[str, str]:
    """Write every site of a multi-site datalist as its own nnU-Net raw dataset.

    Training and validation cases go to ``imagesTr``/``labelsTr`` (nnU-Net makes its own folds), test cases to
    ``imagesTs``/``labelsTs``. All datasets get the same ``dataset.json`` labels and channel, so their plans and
    weights can be shared. Files are copied atomically, so an interrupted export can simply be run again.

    Args:
        datalist: the multi-site datalist (or its JSON file).
        raw_root: ``nnUNet_raw``.
        first_id: dataset id of the first site; the others follow in datalist order.
        sites: sites to export (default: the training sites; nnU-Net cannot plan a dataset without training cases).
        channel_name: the single input channel's name (``"CT"`` would switch nnU-Net to CT normalization).

    Returns:
        site name -> nnU-Net dataset name.

    Example::

        >>> names = export_nnunet_datasets("data/datalist.json", os.environ["nnUNet_raw"], first_id=501)
        >>> names["site_a"]  # 'Dataset501_site_a'
    """
    data = datalist if isinstance(datalist, MultiSiteDatalist) else load_multisite_datalist(datalist)
    chosen = list(sites) if sites is not None else data.training_sites()
    if not (1 <= first_id and first_id + len(chosen) - 1 <= 999):
        raise ValueError(
            f"export_nnunet_datasets: dataset ids {first_id}..{first_id + len(chosen) - 1} must lie in 1..999."
        )
    names: dict[str, str] = {}
    for offset, site in enumerate(chosen):
        site = check_site_name(site, f"export_nnunet_datasets: {data.source or 'datalist'}: site")
        site_data = data.site(site)
        name = f"Dataset{first_id + offset:03d}_{site}"
        folder = Path(raw_root) / name
        train_cases = site_data.training + site_data.validation
        for split, cases in (("Tr", train_cases), ("Ts", site_data.test)):
            for index, case in enumerate(cases):
                identifier = f"{site}_{index:03d}"
                atomic_copy(case["image"], folder / f"images{split}" / f"{identifier}_0000.nii.gz")
                atomic_copy(case["label"], folder / f"labels{split}" / f"{identifier}.nii.gz")
        document: dict[str, Any] = {
            "channel_names": {"0": channel_name},
            "labels": {str(name_): int(value) for value, name_ in sorted(data.labels.items())},
            "numTraining": len(train_cases),
            "file_ending": ".nii.gz",
            "name": name,
            "description": f"site {site} of {data.name or 'a multi-site datalist'}",
            "site": site,
            "held_out": site_data.held_out,
        }
        if "background" not in document["labels"]:
            document["labels"] = {"background": 0, **document["labels"]}
        atomic_write_text(folder / "dataset.json", json.dumps(document, indent=2))
        names[site] = name
    return names


def _dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NnUNetDatasetError(f"dataset {folder.name}: {path} is missing.") from None
    except json.JSONDecodeError as e:
        raise NnUNetDatasetError(f"dataset {folder.name}: {path} is not valid JSON ({e}).") from None


def check_datasets_compatible(raw_root: str | os.PathLike, datasets: Sequence[str | int]) -> dict[str, dict[str, Any]]:
    """Refuse sites' datasets that cannot share plans and weights: other labels, channels or file endings.

    Returns:
        dataset name -> its ``dataset.json``.

    Raises:
        NnUNetDatasetError: naming the first dataset that differs from the first one, and how.
    """
    if not datasets:
        raise NnUNetDatasetError("no datasets given.")
    documents = {}
    for dataset in datasets:
        folder = raw_dataset_folder(raw_root, dataset)
        documents[folder.name] = _dataset_json(folder)
    (reference_name, reference), *others = documents.items()
    for name, document in others:
        for key, what in (("labels", "label set"), ("channel_names", "input channels"), ("file_ending", "file ending")):
            if document.get(key) != reference.get(key):
                raise NnUNetDatasetError(
                    f"dataset {name}: {what} {document.get(key)} differ from {reference_name}'s {reference.get(key)}; "
                    "sites trained together need the same labels, channels and file format."
                )
        if "regions_class_order" in document or "regions_class_order" in reference:
            if document.get("regions_class_order") != reference.get("regions_class_order"):
                raise NnUNetDatasetError(f"dataset {name}: region order differs from {reference_name}'s.")
    return documents
