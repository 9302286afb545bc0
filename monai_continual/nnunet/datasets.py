"""One nnU-Net raw dataset per site, and the checks that make the sites' datasets exchangeable.

nnU-Net can only move weights between datasets that share label sets, channel counts and plans. These functions
write a multi-site datalist as nnU-Net raw datasets (``DatasetXXX_<site>/imagesTr``, ``labelsTr``, ``imagesTs``,
``labelsTs``, ``dataset.json``) and check a set of raw datasets before anything is planned or trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_continual.data.datalist import MultiSiteDatalist, item_paths, load_multisite_datalist
from monai_continual.utils.atomic import atomic_copy, atomic_write_text
from monai_continual.utils.names import check_site_name

__all__ = [
    "FILE_ENDING", "NnUNetDatasetError", "channel_file", "export_nnunet_datasets", "check_datasets_compatible",
    "raw_dataset_folder",
]

#: the file ending of every exported image and label
FILE_ENDING = ".nii.gz"


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


def channel_file(identifier: str, channel: int, file_ending: str = FILE_ENDING) -> str:
    """nnU-Net's image file name of a case's channel: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...

    Example::

        >>> channel_file("site_a_000", 1)
        'site_a_000_0001.nii.gz'
    """
    return f"{identifier}_{int(channel):04d}{file_ending}"


def export_nnunet_datasets(
    datalist: MultiSiteDatalist | str | os.PathLike,
    raw_root: str | os.PathLike,
    first_id: int = 501,
    sites: Sequence[str] | None = None,
    channel_names: str | Sequence[str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    regions_class_order: Sequence[int] | None = None,
) -> dict[str, str]:
    """Write every site of a multi-site datalist as its own nnU-Net raw dataset.

    Training and validation cases go to ``imagesTr``/``labelsTr`` (nnU-Net makes its own folds), test cases to
    ``imagesTs``/``labelsTs``. A case whose image lists one file per modality is written as nnU-Net's channels
    ``<case>_0000``, ``<case>_0001``... in that order. All datasets get the same ``dataset.json`` labels, channels and
    regions, so their plans and weights can be shared. Files are copied atomically, so an interrupted export can
    simply be run again.

    Region-based labels (BraTS-style: overlapping regions such as whole tumour = labels 1, 2, 3) are declared by
    ``regions`` (region name -> the label values it joins) and ``regions_class_order`` (the label painted for each
    region, in order, when predictions are turned back into a label map), or by the datalist's top-level
    ``"regions"`` and ``"regions_class_order"``; nnU-Net then trains one sigmoid output per region.

    Args:
        datalist: the multi-site datalist (or its JSON file).
        raw_root: ``nnUNet_raw``.
        first_id: dataset id of the first site; the others follow in datalist order.
        sites: sites to export (default: the training sites; nnU-Net cannot plan a dataset without training cases).
        channel_names: one name per input channel, or one name for every channel (default: the datalist's
            ``"channel_names"``, else ``"MRI"``; ``"CT"`` switches nnU-Net to CT normalization).
        regions: region name -> label values (default: the datalist's ``"regions"``; none: plain labels).
        regions_class_order: with ``regions``, the label value written for each region, in the regions' order.

    Returns:
        site name -> nnU-Net dataset name.

    Example::

        >>> names = export_nnunet_datasets("data/datalist.json", os.environ["nnUNet_raw"], first_id=501)
        >>> names["site_a"]  # 'Dataset501_site_a'
    """
    data = datalist if isinstance(datalist, MultiSiteDatalist) else load_multisite_datalist(datalist)
    where = f"export_nnunet_datasets: {data.source or 'datalist'}"
    chosen = list(sites) if sites is not None else data.training_sites()
    if not (1 <= first_id and first_id + len(chosen) - 1 <= 999):
        raise ValueError(
            f"export_nnunet_datasets: dataset ids {first_id}..{first_id + len(chosen) - 1} must lie in 1..999."
        )
    channels = _channel_count(data, chosen, where)
    names_given = channel_names if channel_names is not None else data.metadata.get("channel_names", "MRI")
    names_list = [names_given] * channels if isinstance(names_given, str) else [str(n) for n in names_given]
    if len(names_list) != channels:
        raise ValueError(f"{where}: channel_names {names_list} name {len(names_list)} channels, but the images have "
                         f"{channels}.")
    labels = _dataset_labels(data, regions if regions is not None else data.metadata.get("regions"),
                             regions_class_order if regions is not None else data.metadata.get("regions_class_order"),
                             where)
    names: dict[str, str] = {}
    for offset, site in enumerate(chosen):
        site = check_site_name(site, f"{where}: site")
        site_data = data.site(site)
        name = f"Dataset{first_id + offset:03d}_{site}"
        folder = Path(raw_root) / name
        train_cases = site_data.training + site_data.validation
        for split, cases in (("Tr", train_cases), ("Ts", site_data.test)):
            for index, case in enumerate(cases):
                identifier = f"{site}_{index:03d}"
                for channel, path in enumerate(item_paths(case, "image")):
                    atomic_copy(path, folder / f"images{split}" / channel_file(identifier, channel))
                atomic_copy(case["label"], folder / f"labels{split}" / f"{identifier}{FILE_ENDING}")
        document: dict[str, Any] = {
            "channel_names": {str(i): n for i, n in enumerate(names_list)},
            **labels,
            "numTraining": len(train_cases),
            "file_ending": FILE_ENDING,
            "name": name,
            "description": f"site {site} of {data.name or 'a multi-site datalist'}",
            "site": site,
            "held_out": site_data.held_out,
        }
        atomic_write_text(folder / "dataset.json", json.dumps(document, indent=2))
        names[site] = name
    return names


def _channel_count(data: MultiSiteDatalist, sites: Sequence[str], where: str) -> int:
    """The number of image files per case, the same for every case of every site (else an error naming one)."""
    counts: dict[int, str] = {}
    for site in sites:
        for split in ("training", "validation", "test"):
            for index, case in enumerate(data.site(site).split(split)):
                counts.setdefault(len(item_paths(case, "image")), f"site {site}, {split} case {index}")
    if len(counts) > 1:
        found = "; ".join(f"{n} channel(s) in {case}" for n, case in sorted(counts.items()))
        raise ValueError(f"{where}: every case needs the same image channels, found {found}.")
    return next(iter(counts), 1)


def _dataset_labels(data: MultiSiteDatalist, regions: Any, order: Any, where: str) -> dict[str, Any]:
    """``dataset.json``'s ``labels`` (and ``regions_class_order`` when region-based), checked against the datalist."""
    labels: dict[str, Any] = {str(name): int(value) for value, name in sorted(data.labels.items())}
    if "background" not in labels:
        labels = {"background": 0, **labels}
    if regions is None:
        if order is not None:
            raise ValueError(f"{where}: regions_class_order {order} is given without regions.")
        return {"labels": labels}
    declared = {v for v in data.labels if v != 0} or set(range(1, 256))
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"{where}: regions must map region names to lists of label values, got {regions!r}.")
    document: dict[str, Any] = {"background": 0}
    for name, values in regions.items():
        members = [values] if isinstance(values, int) else values
        if (not isinstance(members, Sequence) or isinstance(members, str) or not members
                or not all(isinstance(v, int) and not isinstance(v, bool) and v in declared for v in members)):
            raise ValueError(f"{where}: region {name!r} must list foreground label values of {sorted(declared)}, "
                             f"got {values!r}.")
        document[str(name)] = [int(v) for v in members] if len(members) > 1 else int(members[0])
    if (not isinstance(order, Sequence) or len(order) != len(regions)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v in declared for v in order)):
        raise ValueError(f"{where}: regions_class_order must give one foreground label value per region "
                         f"({len(regions)}), got {order!r}.")
    return {"labels": document, "regions_class_order": [int(v) for v in order]}


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
