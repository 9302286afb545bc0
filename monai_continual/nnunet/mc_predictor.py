"""Monte Carlo prediction with nnU-Net's own preprocessing, sliding window and export, plus uncertainty maps.

Each Monte Carlo pass is one full nnU-Net sliding-window sweep (mirroring and the fold ensemble included) with the
Bayesian weights sampled; the passes are averaged as probabilities by :class:`monai_continual.bayes.MCInferer`
(never as logits), and the mean is handed to nnU-Net's export as log-probabilities, so the segmentation nnU-Net
writes is the argmax of the mean probabilities. The uncertainty maps (predictive variance, entropy, mutual
information) are brought back to the input image's grid the way nnU-Net brings back its probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from monai_continual.bayes import MCInferer, bayesian_layers
from monai_continual.bayes.mc_inferer import UNCERTAINTY_KEYS

__all__ = ["MCnnUNetPredictor", "UNCERTAINTY_MAPS"]

#: the uncertainty maps written next to each segmentation, as ``<case>_<map>.nii.gz``
UNCERTAINTY_MAPS = tuple(k for k in UNCERTAINTY_KEYS if k != "probs")
_EPS = 1e-7


class MCnnUNetPredictor(nnUNetPredictor):
    """nnUNetPredictor that runs T stochastic passes of a Bayesian network and keeps the uncertainty maps.

    A network without Bayesian layers (or ``mc_samples=1``) predicts exactly as nnUNetPredictor does.

    Args:
        mc_samples: Monte Carlo passes T.
        sample_mode: ``"weights"`` (one weight draw per pass, shared by all windows) or ``"local"``.
        kwargs: nnUNetPredictor's arguments (``tile_step_size``, ``use_mirroring``, ``device``...).

    Example::

        >>> predictor = MCnnUNetPredictor(mc_samples=10, device=torch.device("cpu"))
        >>> predictor.initialize_from_trained_model_folder(model_dir, use_folds=("all",))
        >>> predictor.predict_files("imagesTs", "predictions", uncertainty=True)
    """

    def __init__(self, mc_samples: int = 10, sample_mode: str = "weights", **kwargs) -> None:
        kwargs.setdefault("allow_tqdm", False)
        super().__init__(**kwargs)
        if int(mc_samples) < 1:
            raise ValueError(f"MCnnUNetPredictor: mc_samples must be >= 1, got {mc_samples}.")
        self.mc_samples = int(mc_samples)
        self.sample_mode = sample_mode
        self.last_uncertainty: torch.Tensor | None = None

    @property
    def is_bayesian(self) -> bool:
        return self.network is not None and any(True for _ in bayesian_layers(self.network))

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self.last_uncertainty = None
        if not self.is_bayesian or self.mc_samples == 1:
            return super().predict_logits_from_preprocessed_data(data)
        regions = self.label_manager.has_regions
        sweep = lambda x, network: (  # noqa: E731
            super(MCnnUNetPredictor, self).predict_logits_from_preprocessed_data(x[0])[None].float()
        )
        inferer = MCInferer(self.mc_samples, inferer=sweep, activation="sigmoid" if regions else "softmax",
                            mode=self.sample_mode, return_uncertainty=True)
        out = inferer(data[None], self.network)
        self.last_uncertainty = torch.cat([out[k] for k in UNCERTAINTY_MAPS], dim=1)[0]
        probs = out["probs"][0].clamp(_EPS, 1 - _EPS)
        return torch.logit(probs) if regions else torch.log(probs)

    def export_uncertainty(self, maps: torch.Tensor, properties: dict, output_file_truncated: str) -> list[Path]:
        """Write each uncertainty map on the input image's grid as ``<output>_<map>.nii.gz`` (float32)."""
        import SimpleITK as sitk
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        if "sitk_stuff" not in properties:
            raise ValueError(
                "uncertainty maps can be written for NIfTI images read with SimpleITK (nnU-Net's default)."
            )
        plans, config = self.plans_manager, self.configuration_manager
        spacing = [properties["spacing"][i] for i in plans.transpose_forward]
        shape = properties["shape_after_cropping_and_before_resampling"]
        current = config.spacing if len(config.spacing) == len(shape) else [spacing[0], *config.spacing]
        resampled = np.asarray(config.resampling_fn_probabilities(maps.float().numpy(), shape, current, spacing))
        full = np.zeros((resampled.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
        full = insert_crop_into_image(full, resampled.astype(np.float32), properties["bbox_used_for_cropping"])
        full = full.transpose([0] + [i + 1 for i in plans.transpose_backward])
        written = []
        for channel, name in enumerate(UNCERTAINTY_MAPS):
            image = sitk.GetImageFromArray(np.ascontiguousarray(full[channel]))
            image.SetSpacing(properties["sitk_stuff"]["spacing"])
            image.SetOrigin(properties["sitk_stuff"]["origin"])
            image.SetDirection(properties["sitk_stuff"]["direction"])
            path = Path(f"{output_file_truncated}_{name}.nii.gz")
            tmp = path.with_name(f".{path.name}.tmp.nii.gz")
            sitk.WriteImage(image, str(tmp), True)
            os.replace(tmp, path)
            written.append(path)
        return written

    def predict_files(self, input_folder: str | os.PathLike, output_folder: str | os.PathLike, uncertainty: bool = True,
                      progress: bool = True, cases: Sequence[str] | None = None) -> list[Path]:
        """Predict every case of an nnU-Net images folder into ``output_folder``, one case at a time.

        Args:
            cases: only these case identifiers (e.g. a validation fold's cases of ``imagesTr``); default: all.

        Returns:
            the segmentation files written.
        """
        from tqdm.auto import tqdm

        output_folder = Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        chosen = _cases_of_folder(input_folder, self.dataset_json["file_ending"], cases)
        if cases is not None and len(chosen) != len(set(cases)):
            raise FileNotFoundError(f"{input_folder}: has images of {len(chosen)} of the {len(set(cases))} cases "
                                    f"{sorted(set(cases))}.")
        cases, outputs, _ = self._manage_input_and_output_lists(chosen, str(output_folder))
        if not cases:
            raise FileNotFoundError(f"no images ending in _0000{self.dataset_json['file_ending']} in {input_folder}.")
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        written = []
        for files, output in tqdm(list(zip(cases, outputs)), desc="predict", disable=not progress):
            data, _, properties = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                                        self.dataset_json)
            logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
            export_prediction_from_logits(logits, properties, self.configuration_manager, self.plans_manager,
                                          self.dataset_json, output, False)
            if uncertainty and self.last_uncertainty is not None:
                self.export_uncertainty(self.last_uncertainty.cpu(), properties, output)
            written.append(Path(output + self.dataset_json["file_ending"]))
        return written


def _cases_of_folder(folder: str | os.PathLike, file_ending: str,
                     only: Sequence[str] | None = None) -> list[list[str]]:
    """Every case's channel files in an nnU-Net images folder (``<case>_XXXX<ending>``), listed in this process.

    What nnU-Net's ``create_lists_from_splitted_dataset_folder`` returns, without its pool of 12 worker processes
    forked for every call (seconds per prediction on a small CPU).
    """
    from batchgenerators.utilities.file_and_folder_operations import subfiles
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    folder = str(folder)
    files = subfiles(folder, suffix=file_ending, join=False, sort=True)
    return [create_paths_fn(folder, files, file_ending, case)
            for case in get_identifiers_from_splitted_dataset_folder(folder, file_ending)
            if only is None or case in only]
