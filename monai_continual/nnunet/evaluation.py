"""Scores a published model on an nnU-Net dataset's test cases (``imagesTs``/``labelsTs``), per volume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_continual.metrics.segmentation import mean_dice
from monai_continual.nnunet.datasets import raw_dataset_folder
from monai_continual.nnunet.environment import nnunet_paths
from monai_continual.nnunet.planning import plans_file
from monai_continual.nnunet.trainers import find_trainer
from monai_continual.utils.names import check_site_name

__all__ = ["SiteEvaluator"]


class SiteEvaluator:
    """Predicts every site's test images with a published model and scores them against ``labelsTs``.

    Args:
        datasets: the datasets it scores (the first one's plans serve a held-out dataset without plans of its own).
        configuration, plans: nnU-Net's.
        device: where it predicts.
        mirroring: nnU-Net's test-time mirroring.
        mc_samples: Monte Carlo passes of a Bayesian network (1: the posterior mean).

    Example::

        >>> evaluator = SiteEvaluator(["Dataset501_site_a"], "3d_fullres", "nnUNetPlans", torch.device("cpu"), True, 1)
        >>> evaluator(network, "nnUNetTrainer", "Dataset501_site_a", Path("runs/cwt/predictions/stage0003"))
    """

    def __init__(self, datasets: list[str], configuration: str, plans: str, device: torch.device, mirroring: bool,
                 mc_samples: int) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.device, self.mirroring, self.mc_samples = device, mirroring, mc_samples
        raw = nnunet_paths(("raw",))["raw"]
        self.folders = {d: raw_dataset_folder(raw, d) for d in datasets}
        # per dataset, read once: plans manager, configuration, dataset.json
        self.setup: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
        for dataset, folder in self.folders.items():
            if not any((folder / "imagesTs").glob("*_0000*")) or not (folder / "labelsTs").is_dir():
                raise FileNotFoundError(
                    f"dataset {dataset}: needs test cases in imagesTs/ and labelsTs/ to be evaluated."
                )
            # a held-out site has no training cases, hence no plans of its own: its images are preprocessed on the
            # fly with the shared plans of the first site (the same ones every trained site uses)
            own = plans_file(dataset, plans)
            manager = PlansManager(str(own if own.is_file() else plans_file(datasets[0], plans)))
            dataset_json = json.loads((folder / "dataset.json").read_text())
            self.setup[dataset] = (manager, manager.get_configuration(configuration), dataset_json)

    def network(self, trainer: str, dataset: str) -> torch.nn.Module:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        plans_manager, config, dataset_json = self.setup[dataset]
        heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        channels = determine_num_input_channels(plans_manager, config, dataset_json)
        return find_trainer(trainer).build_network_architecture(plans_manager, config, channels, heads, False)

    def __call__(self, network: torch.nn.Module, trainer: str, dataset: str, output: Path) -> list[float]:
        """Per-volume Dice (class average) of ``network`` on ``dataset``'s test cases."""
        import nibabel as nib

        from monai_continual.nnunet.mc_predictor import MCnnUNetPredictor

        folder = self.folders[dataset]
        plans_manager, config, dataset_json = self.setup[dataset]
        output = output / check_site_name(dataset, "nnU-Net dataset")
        predictor = MCnnUNetPredictor(mc_samples=self.mc_samples, use_mirroring=self.mirroring, device=self.device)
        axes = tuple(range(len(config.patch_size)))
        predictor.manual_initialization(network.to(self.device).eval(), plans_manager, config, [network.state_dict()],
                                        dataset_json, trainer, axes)
        written = predictor.predict_files(folder / "imagesTs", output, uncertainty=False, progress=False)
        num_classes = max(int(v) for v in dataset_json["labels"].values()) + 1
        dice = []
        for path in written:
            reference = folder / "labelsTs" / path.name
            pred = torch.as_tensor(np.asarray(nib.load(path).dataobj))[None, None]
            label = torch.as_tensor(np.asarray(nib.load(reference).dataobj))[None, None]
            dice.append(float(mean_dice(pred, label, num_classes)[0]))
        return dice
