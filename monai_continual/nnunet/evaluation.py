"""Scores a published model on an nnU-Net dataset, per volume: its test cases (``imagesTs``/``labelsTs``), or the
validation fold's training cases when the site keeps no test labels.

Label-based datasets are scored by Dice per foreground label; region-based ones (``dataset.json`` labels that join
several values, with ``regions_class_order``, BraTS-style) by Dice per region, the region masks made the way nnU-Net's
own evaluation makes them (a voxel is in a region when its label is one of the region's values).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_continual.metrics.segmentation import mean_dice
from monai_continual.nnunet.datasets import channel_file, raw_dataset_folder
from monai_continual.nnunet.environment import nnunet_paths
from monai_continual.nnunet.planning import plans_file, preprocessed_data_folder
from monai_continual.nnunet.trainers import find_trainer
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.names import check_site_name

__all__ = ["SPLITS_FILE", "SiteEvaluator", "region_dice", "validation_cases"]

#: nnU-Net's file of cross-validation splits, in a dataset's preprocessed folder
SPLITS_FILE = "splits_final.json"


def region_dice(prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
                regions: Sequence[int | Sequence[int]]) -> float:
    """Dice per region averaged over regions, of one volume's label maps (the label-based Dice's conventions: a
    region absent from both scores 1, absent from the reference but predicted 0).

    Args:
        prediction, reference: label maps of the same shape (integers).
        regions: nnU-Net's foreground regions (``LabelManager.foreground_regions``): a label value or a tuple of them.

    Example::

        >>> region_dice(pred, label, [(1, 2, 3), (2, 3), 3])  # BraTS: whole tumour, tumour core, enhancing
    """
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    prediction, reference = np.asarray(prediction), np.asarray(reference)
    masks = [np.stack([region_or_label_to_mask(volume, region) for region in regions]) for volume in
             (prediction, reference)]
    # a channel in front that is never scored: mean_dice's one-hot input with the regions as classes 1..R
    one_hot = [torch.as_tensor(np.concatenate([np.zeros_like(m[:1]), m]), dtype=torch.float32)[None] for m in masks]
    return float(mean_dice(one_hot[0], one_hot[1], len(regions) + 1)[0])


def validation_cases(dataset: str, fold: int | str, configuration: str, plans: str) -> list[str]:
    """The case identifiers of ``fold``'s validation split of ``dataset``, as nnU-Net's trainer splits it.

    nnU-Net reads ``splits_final.json`` in the dataset's preprocessed folder and makes it when missing (5 folds of the
    sorted cases, seed 12345); this makes it the same way when no training of the site has yet.

    Raises:
        ValueError: ``fold`` is ``"all"`` (no validation cases) or not in the splits file (both named).
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    if str(fold) == "all":
        raise ValueError(f"dataset {dataset}: has no labelsTs, and fold 'all' trains on every case, leaving no "
                         "validation cases to evaluate on; give a fold (0-4) or add imagesTs/labelsTs.")
    folder = plans_file(dataset, plans).parent
    splits_file = folder / SPLITS_FILE
    if not splits_file.is_file():
        data_folder = preprocessed_data_folder(folder, configuration, plans)
        identifiers = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
        splits = generate_crossval_split(identifiers, seed=12345, n_splits=5)
        atomic_write_text(splits_file, json.dumps(splits, indent=2))
    try:
        splits = json.loads(splits_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"dataset {dataset}: {splits_file} is not valid JSON ({err}).") from None
    if (not isinstance(splits, list) or not 0 <= int(fold) < len(splits) or not isinstance(splits[int(fold)], dict)
            or not splits[int(fold)].get("val")):
        raise ValueError(f"dataset {dataset}: fold {fold} has no validation cases in {splits_file} "
                         "(a list of {'train': [...], 'val': [...]} per fold).")
    return [str(case) for case in splits[int(fold)]["val"]]


class SiteEvaluator:
    """Predicts every site's test images with a published model and scores them against ``labelsTs``; a site
    without ``labelsTs`` is scored on its validation fold (``imagesTr``/``labelsTr`` cases of nnU-Net's split).

    Args:
        datasets: the datasets it scores (the first one's plans serve a held-out dataset without plans of its own).
        configuration, plans: nnU-Net's.
        device: where it predicts.
        mirroring: nnU-Net's test-time mirroring.
        mc_samples: Monte Carlo passes of a Bayesian network (1: the posterior mean).
        fold: the training fold, whose validation cases score a site without test labels (``"all"``: none).

    Example::

        >>> evaluator = SiteEvaluator(["Dataset501_site_a"], "3d_fullres", "nnUNetPlans", torch.device("cpu"), True, 1)
        >>> evaluator(network, "nnUNetTrainer", "Dataset501_site_a", Path("runs/cwt/predictions/stage0003"))
    """

    def __init__(self, datasets: list[str], configuration: str, plans: str, device: torch.device, mirroring: bool,
                 mc_samples: int, fold: int | str = "all") -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.device, self.mirroring, self.mc_samples = device, mirroring, mc_samples
        self.configuration, self.plans, self.fold = configuration, plans, fold
        raw = nnunet_paths(("raw",))["raw"]
        self.folders = {d: raw_dataset_folder(raw, d) for d in datasets}
        # per dataset, read once: plans manager, configuration, dataset.json
        self.setup: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        #: per dataset: whether it is scored on its test cases (else on its validation fold)
        self.on_test: dict[str, bool] = {}
        for dataset, folder in self.folders.items():
            # a held-out site has no training cases, hence no plans of its own: its images are preprocessed on the
            # fly with the shared plans of the first site (the same ones every trained site uses)
            own = plans_file(dataset, plans)
            self.on_test[dataset] = (any((folder / "imagesTs").glob(channel_file("*", 0, "*")))
                                     and (folder / "labelsTs").is_dir())
            if not self.on_test[dataset] and (not own.is_file() or str(fold) == "all"):
                raise FileNotFoundError(
                    f"dataset {dataset}: needs test cases in imagesTs/ and labelsTs/ to be evaluated"
                    + (", or a fold (0-4) whose validation cases score it." if own.is_file() else
                       " (it has no plans of its own, so no training cases to validate on).")
                )
            manager = PlansManager(str(own if own.is_file() else plans_file(datasets[0], plans)))
            dataset_json = json.loads((folder / "dataset.json").read_text())
            self.setup[dataset] = (manager, manager.get_configuration(configuration), dataset_json)

    def network(self, trainer: str, dataset: str) -> torch.nn.Module:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        plans_manager, config, dataset_json = self.setup[dataset]
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        channels = determine_num_input_channels(plans_manager, config, dataset_json)
        return find_trainer(trainer).build_network_architecture(plans_manager, config, channels, heads, False)

    def cases(self, dataset: str) -> tuple[Path, Path, list[str] | None]:
        """The images folder, the labels folder and the cases (``None``: all) ``dataset`` is scored on."""
        folder = self.folders[dataset]
        if self.on_test[dataset]:
            return folder / "imagesTs", folder / "labelsTs", None
        return (folder / "imagesTr", folder / "labelsTr",
                validation_cases(dataset, self.fold, self.configuration, self.plans))

    def __call__(self, network: torch.nn.Module, trainer: str, dataset: str, output: Path) -> list[float]:
        """Per-volume Dice (average over foreground labels, or over regions) of ``network`` on ``dataset``."""
        import nibabel as nib

        from monai_continual.nnunet.mc_predictor import MCnnUNetPredictor

        images, labels, cases = self.cases(dataset)
        plans_manager, config, dataset_json = self.setup[dataset]
        output = output / check_site_name(dataset, "nnU-Net dataset")
        predictor = MCnnUNetPredictor(mc_samples=self.mc_samples, use_mirroring=self.mirroring, device=self.device)
        axes = tuple(range(len(config.patch_size)))
        predictor.manual_initialization(network.to(self.device).eval(), plans_manager, config, [network.state_dict()],
                                        dataset_json, trainer, axes)
        written = predictor.predict_files(images, output, uncertainty=False, progress=False, cases=cases)
        label_manager = plans_manager.get_label_manager(dataset_json)
        dice = []
        for path in written:
            reference = labels / path.name
            if not reference.is_file():
                raise FileNotFoundError(f"dataset {dataset}: no reference label {reference} for {path.name}.")
            pred = np.asarray(nib.load(path).dataobj)
            label = np.asarray(nib.load(reference).dataobj)
            if label_manager.has_regions:
                dice.append(region_dice(pred, label, label_manager.foreground_regions))
            else:
                num_classes = max(label_manager.all_labels) + 1
                dice.append(float(mean_dice(torch.as_tensor(pred)[None, None], torch.as_tensor(label)[None, None],
                                            num_classes)[0]))
        return dice

