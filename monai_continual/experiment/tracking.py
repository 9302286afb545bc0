"""Experiment tracking of the main job: TensorBoard or MLflow, through the writers MONAI's handlers use."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import StrEnum, look_up_option

from monai_continual.metrics import backward_transfer, forward_transfer
from monai_continual.report import FinishedRun, weighted_dice
from monai_continual.strategies import INITIAL_STAGE, RunState, StageRecord
from monai_continual.utils.atomic import atomic_write_text

__all__ = ["Tracking", "RunTracker", "tracking_of"]

_RUN_NAME = re.compile(r"[A-Za-z0-9_.@+\[\]-]+")


class Tracking(StrEnum):
    """The tracking back ends (``tracking`` in the bundle configs; ``""`` or ``None``: none)."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"


def tracking_of(kind: str | None, owner: str, *, required: bool = False) -> Tracking | None:
    """The :class:`Tracking` named ``kind``, ``None`` for an empty name unless ``required``; ``owner`` names the caller
    in the error.

    Example::

        >>> tracking_of("mlflow", "RunTracker") is Tracking.MLFLOW
        True
    """
    if not kind and not required:
        return None
    found = look_up_option(kind, Tracking, default=None) if kind else None
    if found is None:
        raise ValueError(f"{owner}: tracking must be one of {[str(t) for t in Tracking]} (or empty for none), "
                         f"got {kind!r}.")
    return found


class RunTracker:
    """Writes every run of the main job to TensorBoard or MLflow.

    Per run (one TensorBoard log folder, or one MLflow run, per strategy run): ``dice/<site>`` after every evaluated
    stage (step: the stage number), ``elbo/data_term`` and ``elbo/kl_over_n`` of Bayesian stages per epoch (step:
    the run's epoch count), ``loss/train`` per epoch, ``summary/weighted_dice``, ``summary/bwt`` and
    ``summary/fwt``, and the R matrix as a figure. TensorBoard goes through ``torch.utils.tensorboard.SummaryWriter``
    (what MONAI's ``TensorBoardStatsHandler`` writes with), MLflow through its fluent API (as MONAI's
    ``MLFlowHandler``); a local MLflow store is a directory (``file:`` URI).

    Args:
        kind: one of :class:`Tracking`.
        directory: where TensorBoard's event files go (``<directory>/<run>``), or the MLflow store when
            ``tracking_uri`` is not given (``<directory>/mlruns``).
        experiment_name: the MLflow experiment.
        tracking_uri: an MLflow tracking URI (a server, or ``file:/path``).

    Example::

        >>> tracker = RunTracker("tensorboard", "outputs/experiment/tracking")
        >>> tracker.log_run("vcl", state_records, matrix, {"weighted_dice": 0.67, "bwt": -0.01})
    """

    def __init__(self, kind: str, directory: str | os.PathLike, experiment_name: str = "monai_continual",
                 tracking_uri: str | None = None) -> None:
        self.kind = tracking_of(kind, "RunTracker", required=True)
        self.directory = Path(directory)
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri or (self.directory / "mlruns").resolve().as_uri()
        if self.kind == Tracking.MLFLOW:
            import mlflow

            if self.tracking_uri.startswith("file:"):
                # MLflow keeps a directory store working but asks to be told so
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_experiment(experiment_name)
        else:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (fails early when tensorboard is missing)

    def stage_logger(self, name: str) -> Callable[[RunState, StageRecord], None]:
        """A callback for :meth:`~monai_continual.engines.ContinualRunner.run`'s ``on_stage``: logs each stage of run
        ``name`` as soon as it is saved (its epochs' losses and ELBO terms, its Dice per site), so a killed run's
        record is complete up to its last finished stage. Which stages were logged is kept beside the logs
        (``<directory>/<name>.tracked.json``): a resumed run logs each remaining stage once, including one finished
        but not yet logged when the process was killed.

        Example::

            >>> runner.run("vcl", on_stage=tracker.stage_logger("vcl"))
        """

        def log(state: RunState, record: StageRecord) -> None:
            logged = set(self._progress(name).get("stages", []))
            epoch = 0
            for done in state.stage_records():
                if INITIAL_STAGE < done.number and done.number not in logged:
                    self._write(name, _stage_scalars(asdict(done), epoch)[0])
                    logged.add(done.number)
                    self._save_progress(name, stages=sorted(logged))
                epoch += len(done.details.get("loss") or [])

        return log

    def _progress_file(self, name: str) -> Path:
        if not _RUN_NAME.fullmatch(name) or name.startswith("."):  # it names a file beside the logs
            raise ValueError(f"RunTracker: run name {name!r} must match {_RUN_NAME.pattern} (no path parts).")
        return self.directory / f"{name}.tracked.json"

    def _progress(self, name: str) -> dict[str, Any]:
        path = self._progress_file(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def _save_progress(self, name: str, **fields: Any) -> None:
        path = self._progress_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**self._progress(name), **fields}) + "\n")

    def log_finished(self, run: FinishedRun, test_sizes: Mapping[str, int], single: FinishedRun | None = None) -> None:
        """Log what a finished run of the main job adds to its stages (logged live by :meth:`stage_logger`): its R
        matrix, weighted Dice and, for a sequential strategy, BWT and FWT (against ``single``'s site models: b_i is
        site i's own model; only when every visit was scored).

        Args:
            run: the finished run.
            test_sizes: training site -> test-set size (the weighted Dice's weights).
            single: the finished ``single_site`` run, if there is one yet.
        """
        numbers: dict[str, float | None] = {"weighted_dice": weighted_dice(run.result.scores, test_sizes)}
        if run.strategy.sequential:
            numbers["bwt"] = float(backward_transfer(run.result.matrix))
            if single is not None and run.result.matrix.complete:  # FWT needs each site's first visit
                baseline = {s: float(np.mean(single.result.scores[s])) for s in test_sizes}
                numbers["fwt"] = float(forward_transfer(run.result.matrix, baseline))
        last = max((r.number for r in run.state.stage_records()), default=INITIAL_STAGE)
        self._write(run.key, _summary_scalars(numbers, last), run.result.matrix)

    def log_run(self, name: str, records: Sequence[Mapping[str, Any]], matrix: Any,
                summary: Mapping[str, float | None]) -> None:
        """Log one whole run at once: its stage records (as mappings), R matrix and summary numbers."""
        scalars: list[tuple[str, float, int]] = []
        epoch = 0
        for record in records:
            stage_scalars, epoch = _stage_scalars(record, epoch)
            scalars += stage_scalars
        last = int(records[-1]["number"]) if records else 0
        self._write(name, scalars + _summary_scalars(summary, last), matrix)

    def _write(self, name: str, scalars: list[tuple[str, float, int]], matrix: Any = None) -> None:
        figure = None if matrix is None else matrix.figure(title=f"{name}: R matrix")
        try:
            if self.kind == Tracking.TENSORBOARD:
                self._tensorboard(name, scalars, figure, matrix)
            else:
                self._mlflow(name, scalars, figure, matrix)
        finally:
            if figure is not None:
                import matplotlib.pyplot as plt

                plt.close(figure)

    def _tensorboard(self, name: str, scalars, figure, matrix) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.directory / name))
        try:
            for tag, value, step in scalars:
                writer.add_scalar(tag, float(value), step)
            if matrix is not None:
                writer.add_text("R matrix", json.dumps(matrix.to_dict()))
            if figure is not None:
                writer.add_figure("R matrix", figure)
        finally:
            writer.close()

    def _mlflow(self, name: str, scalars, figure, matrix) -> None:
        import mlflow

        run_id = self._progress(name).get("mlflow_run_id")  # one MLflow run per strategy run, across processes
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as active:
            self._save_progress(name, mlflow_run_id=active.info.run_id)
            for tag, value, step in scalars:
                mlflow.log_metric(tag, float(value), step=step)
            if matrix is not None:
                mlflow.log_dict(matrix.to_dict(), "R.json")
            if figure is not None:
                mlflow.log_figure(figure, "R.png")


def _stage_scalars(record: Mapping[str, Any], epoch: int) -> tuple[list[tuple[str, float, int]], int]:
    """A stage record's scalars (losses and ELBO terms per epoch, stepped from ``epoch``; Dice per site, stepped by
    stage number) and the epoch count after it."""
    details = record.get("details") or {}
    losses = details.get("loss") or []
    scalars = [("loss/train", value, epoch + offset) for offset, value in enumerate(losses, 1)]
    for offset, (data, kl) in enumerate(details.get("elbo") or [], 1):
        scalars += [("elbo/data_term", data, epoch + offset), ("elbo/kl_over_n", kl, epoch + offset)]
    for site, scores in (record.get("scores") or {}).items():
        if scores:
            scalars.append((f"dice/{site}", sum(scores) / len(scores), int(record["number"])))
    return scalars, epoch + len(losses)


def _summary_scalars(summary: Mapping[str, float | None], step: int) -> list[tuple[str, float, int]]:
    return [(f"summary/{k}", v, step) for k, v in summary.items() if v is not None and math.isfinite(v)]
