"""The run directory's layout: every file a run keeps, named once, by stage number.

::

    <run>/state.json                                the run state (RunState)
    <run>/store/                                    weights of deterministic stages (DirectoryWeightStore)
    <run>/store/optimizer_stage####.safetensors     the optimizer state that travels (optimizer_state="transfer")
    <run>/posteriors/stage####.safetensors          posteriors of Bayesian stages
    <run>/fisher/stage####.safetensors              the running diagonal Fisher after a stage (ewc)
    <run>/receipts/stage####.json                   a stage's count, details and input hashes, written before
                                                    its model is published
    <run>/checks/stage####.json                     a site's check of a model it received
    <run>/replay/stage####/                         the replay memory after a stage
    <run>/sites/<site>/checkpoint_stage####.pt      a stage's epoch checkpoint (read back only by that site)
    <run>/sites/<site>/optimizer_<kind>_stage####.safetensors   a site's own optimizer state
    <run>/sites/<site>/scores/stage####_<site>.json   a bundle site's own record of a model's validation score
    <run>/stages/stage####_<dataset>/               nnU-Net's results folder of a stage
    <run>/predictions/stage####/<site>/             a stage's predictions of a site's test images
    <run>/calibration/stage####_<site>.json         a stage's per-volume calibration and uncertainty on a site
    <run>/cache/                                    the training datasets' disk cache (MONAI run, cache="disk")
    <run>/R.json, R.csv, R.png                      the R matrix
    <run>/final_model.safetensors                   the strategy's final model
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from monai_continual.utils.stage_files import stage_file_name, stage_name

if TYPE_CHECKING:
    from monai_continual.metrics import ContinualMatrix

__all__ = ["RunLayout", "STATE_FILE", "MATRIX_FILES"]

STATE_FILE = "state.json"
#: the R matrix's files, as JSON, CSV and heat map
MATRIX_FILES = ("R.json", "R.csv", "R.png")


class RunLayout:
    """Paths of a run directory's files (see the module docstring); nothing is created by looking a path up.

    Sites and datasets that become folder names must have been checked
    (:func:`~monai_continual.utils.names.check_site_name`) by whoever builds the stage.

    Args:
        run_dir: the run directory.

    Example::

        >>> layout = RunLayout("runs/dwc")
        >>> layout.posterior_file(3)
        PosixPath('runs/dwc/posteriors/stage0003.safetensors')
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.root = Path(run_dir)

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def cache_dir(self) -> Path:
        """Where a MONAI run's ``PersistentDataset`` keeps transformed training items (never a result)."""
        return self.root / "cache"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model.safetensors"

    def posterior_file(self, number: int) -> Path:
        return self.root / "posteriors" / stage_file_name(number, ".safetensors")

    def fisher_file(self, number: int) -> Path:
        return self.root / "fisher" / stage_file_name(number, ".safetensors")

    def receipt_file(self, number: int) -> Path:
        return self.root / "receipts" / stage_file_name(number, ".json")

    def check_file(self, number: int) -> Path:
        return self.root / "checks" / stage_file_name(number, ".json")

    def replay_dir(self, number: int) -> Path:
        return self.root / "replay" / stage_name(number)

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def checkpoint_file(self, site: str, number: int) -> Path:
        return self.site_dir(site) / stage_file_name(number, ".pt", prefix="checkpoint_")

    def optimizer_file(self, number: int, site: str | None = None, kind: str = "") -> Path:
        """The optimizer state after stage ``number``: a site's own (``site`` given; ``kind``: the network kind, so
        a site keeps one per kind) or the one that travels with the weights."""
        if site is None:
            return self.store / stage_file_name(number, ".safetensors", prefix="optimizer_")
        return self.site_dir(site) / stage_file_name(number, ".safetensors", prefix=f"optimizer_{kind}_")

    def stage_dir(self, number: int, dataset: str) -> Path:
        return self.root / "stages" / stage_file_name(number, site=dataset)

    def predictions_dir(self, number: int) -> Path:
        return self.root / "predictions" / stage_name(number)

    def calibration_file(self, number: int, site: str) -> Path:
        """Stage ``number``'s per-volume calibration and uncertainty records on ``site``'s test data."""
        return self.root / "calibration" / stage_file_name(number, ".json", site=site)

    def matrix_file(self, suffix: str) -> Path:
        """``R.json``, ``R.csv`` or ``R.png`` (by suffix)."""
        name = f"R{suffix}"
        if name not in MATRIX_FILES:
            raise ValueError(f"the R matrix is kept as {MATRIX_FILES}, not {name!r}.")
        return self.root / name

    def save_matrix(self, matrix: ContinualMatrix, title: str) -> None:
        """Write the R matrix as JSON, CSV and heat map (a plotting failure never loses the numbers)."""
        matrix.save_json(self.matrix_file(".json"))
        matrix.save_csv(self.matrix_file(".csv"))
        try:
            matrix.plot(self.matrix_file(".png"), title=title)
        except Exception as err:  # a missing plotting backend must not lose the results
            print(f"R matrix plot skipped: {err}")
