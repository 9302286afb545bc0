"""nnU-Net's training loop for one stage of a run: reseeded at every epoch, checkpointed atomically, resumable.

nnU-Net's ``run_training`` keeps its random streams running from epoch to epoch and writes ``checkpoint_latest.pth``
with a plain ``torch.save`` (a process killed mid-write leaves a file that cannot be read). The loop here calls the
same trainer hooks in nnU-Net's order, but

- seeds every global generator at the start of each epoch from (stage seed, epoch), so an epoch's batches,
  augmentation and Bayesian noise depend only on its number (with nnU-Net's single-threaded data loading,
  ``nnUNet_n_proc_DA=0``; its multi-threaded augmenter is not deterministic);
- writes ``checkpoint_latest.pth`` (nnU-Net's own checkpoint, so ``nnUNetv2_train --c`` reads it too) every
  ``save_every`` epochs atomically, with what the stage needs besides: the hashes of the stage's inputs, the plateau
  stop's state and the trainer's per-epoch records;
- can stop at a validation plateau (single weight transfer trains a visit until validation stops improving).

A stage rerun after its process died continues from the last checkpoint when it belongs to the same stage inputs,
and then publishes exactly what the uninterrupted run published.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_continual.strategies.faults import crash_point
from monai_continual.utils.atomic import atomic_write
from monai_continual.utils.seeding import epoch_seed, seed_everything

__all__ = ["LATEST_CHECKPOINT", "StageCheckpoint", "run_stage_training"]

#: nnU-Net's name of the checkpoint it resumes from (``nnUNetv2_train --c``)
LATEST_CHECKPOINT = "checkpoint_latest.pth"
#: the checkpoint key holding what the stage adds to nnU-Net's checkpoint
_STAGE_KEY = "monai_continual_stage"
#: per-epoch records of our trainers that a resumed stage must keep (they end up in the stage's details)
_TRAINER_RECORDS = ("elbo_history", "std_stats")
#: what nnU-Net's checkpoints hold besides tensors and builtins (its logger keeps NumPy scalars)
_SAFE_GLOBALS = [np._core.multiarray.scalar, np.dtype,
                 *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_))]


class StageCheckpoint:
    """A stage's ``checkpoint_latest.pth``, bound to the stage's identity (the hashes of its inputs and so on).

    Args:
        identity: JSON-like values that must be equal for a checkpoint to be resumed (e.g. the stage's input hashes,
            trainer and schedule); a checkpoint of other inputs is never used.
        save_every: write the checkpoint every this many epochs (and after the last one).
        stage: the stage number (names the ``mid_training`` fault point, fired after the first checkpoint).

    Example::

        >>> checkpoint = StageCheckpoint({"inputs": {"start": sha}, "trainer": "nnUNetTrainer"}, save_every=1)
        >>> resumed = checkpoint.find(stage_dir)   # before the trainer is built; None: start from scratch
        >>> run_stage_training(trainer, seed=7, checkpoint=checkpoint, resumed=resumed)
    """

    def __init__(self, identity: Mapping[str, Any], save_every: int = 1, stage: int | None = None) -> None:
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"StageCheckpoint: save_every must be an integer >= 1, got {save_every!r}.")
        self.identity = dict(identity)
        self.save_every = save_every
        self.stage = stage

    def find(self, folder: str | os.PathLike) -> dict[str, Any] | None:
        """The usable checkpoint under ``folder`` (a stage's results folder), or ``None``.

        Usable: exactly one ``checkpoint_latest.pth``, readable as tensors and plain values only
        (``weights_only=True``), written for this identity. Anything else (no file, a truncated or foreign file,
        another stage's inputs) means the stage starts from scratch.
        """
        found = sorted(Path(folder).rglob(LATEST_CHECKPOINT)) if Path(folder).is_dir() else []
        if len(found) != 1:
            return None
        try:
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                checkpoint = torch.load(found[0], map_location="cpu", weights_only=True)
        except Exception as err:  # an unreadable checkpoint is no reason to stop: the stage trains from scratch
            print(f"{found[0]}: not resumed ({type(err).__name__}: {err}); the stage starts again.")
            return None
        stage = checkpoint.get(_STAGE_KEY) if isinstance(checkpoint, dict) else None
        if not isinstance(stage, dict) or stage.get("identity") != self.identity:
            print(f"{found[0]}: written for other stage inputs; the stage starts again.")
            return None
        checkpoint["path"] = str(found[0])
        return checkpoint

    def save(self, trainer: Any, loop: Mapping[str, Any]) -> Path:
        """Write ``trainer``'s checkpoint (nnU-Net's content plus the stage's) atomically; the path written."""
        buffer = io.BytesIO()
        # nnU-Net stores current_epoch + 1 (it saves before counting the epoch); the loop saves after counting it
        trainer.current_epoch -= 1
        try:
            trainer.save_checkpoint(buffer)
        finally:
            trainer.current_epoch += 1
        buffer.seek(0)
        # the bytes this process has just written (never a file): a trainer's checkpoint with more than tensors and
        # plain values is still saved, and find() then starts the stage again instead of unpickling it
        checkpoint = torch.load(buffer, map_location="cpu", weights_only=False)
        records = {name: getattr(trainer, name) for name in _TRAINER_RECORDS if hasattr(trainer, name)}
        checkpoint[_STAGE_KEY] = {"identity": self.identity, "loop": dict(loop), "records": records}
        path = Path(trainer.output_folder) / LATEST_CHECKPOINT
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)
        return path

    @staticmethod
    def restore(trainer: Any, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
        """Load ``checkpoint`` (from :meth:`find`) into an initialized trainer; returns the loop's saved state.

        What nnU-Net's ``load_checkpoint`` restores (network, optimizer, grad scaler, logger, best EMA, epoch), from
        the checkpoint already read with ``weights_only=True``, plus the trainer's per-epoch records.
        """
        network = getattr(trainer.network, "_orig_mod", trainer.network)
        network.load_state_dict(checkpoint["network_weights"])
        trainer.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if trainer.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            trainer.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        trainer.logger.load_checkpoint(checkpoint["logging"])
        trainer._best_ema = checkpoint["_best_ema"]
        trainer.current_epoch = int(checkpoint["current_epoch"])
        trainer.inference_allowed_mirroring_axes = checkpoint.get(
            "inference_allowed_mirroring_axes", trainer.inference_allowed_mirroring_axes
        )
        stage = checkpoint[_STAGE_KEY]
        for name, value in stage["records"].items():
            setattr(trainer, name, value)
        trainer.print_to_log_file(f"resumed at epoch {trainer.current_epoch} from {checkpoint.get('path', '?')}")
        return dict(stage["loop"])


def run_stage_training(
    trainer: Any,
    seed: int | None = None,
    checkpoint: StageCheckpoint | None = None,
    resumed: Mapping[str, Any] | None = None,
    patience: int | None = None,
    min_delta: float = 1e-4,
) -> dict[str, Any]:
    """Run an initialized nnU-Net trainer's training like ``run_training``: the same hooks in the same order.

    Args:
        trainer: an nnU-Net trainer after ``initialize()`` (its start weights loaded).
        seed: the stage's seed; every epoch starts by seeding the global generators from (seed, epoch).
            ``None``: no reseeding (nnU-Net's own behaviour).
        checkpoint: where and how often to write the resumable checkpoint (``None``: none is written).
        resumed: a checkpoint from :meth:`StageCheckpoint.find` to continue from (loaded here).
        patience: stop after this many epochs without an improvement of nnU-Net's EMA pseudo Dice on its validation
            batches, restoring the best weights before ``on_train_end`` (``None``: train ``num_epochs``). With
            ``fold="all"`` nnU-Net validates on the training cases: give a real fold for a held-out split.
        min_delta: smallest EMA pseudo-Dice change that counts as an improvement.

    Returns:
        ``{}``, or with ``patience``: ``{"epochs_run": int, "plateau": bool, "best": float}``.

    Example::

        >>> trainer.initialize()
        >>> run_stage_training(trainer, seed=3, checkpoint=StageCheckpoint({"stage": 3}), patience=2)
    """
    if patience is not None and patience < 1:
        raise ValueError(f"run_stage_training: patience must be >= 1, got {patience}.")
    loop: dict[str, Any] = {"best": -float("inf"), "bad": 0, "epochs": 0, "stopped": False, "best_state": None}
    if resumed is not None:
        loop.update(StageCheckpoint.restore(trainer, resumed))
    network = getattr(trainer.network, "_orig_mod", trainer.network)
    trainer.on_train_start()
    # nnU-Net's own periodic save would write the same file non-atomically: the loop writes it instead
    own_save_every, trainer.save_every = trainer.save_every, trainer.num_epochs + 1
    try:
        while trainer.current_epoch < trainer.num_epochs and not loop["stopped"]:
            if seed is not None:
                seed_everything(epoch_seed(seed, trainer.current_epoch))
            _run_epoch(trainer)
            loop["epochs"] += 1
            if patience is not None:
                _plateau_step(trainer, network, loop, patience, min_delta)
            if checkpoint is not None and (trainer.current_epoch % checkpoint.save_every == 0 or loop["stopped"]
                                           or trainer.current_epoch == trainer.num_epochs):
                checkpoint.save(trainer, loop)
                if checkpoint.stage is not None:
                    crash_point("mid_training", checkpoint.stage)
    finally:
        trainer.save_every = own_save_every
    if loop["best_state"] is not None:
        network.load_state_dict(loop["best_state"])
    trainer.on_train_end()
    if patience is None:
        return {}
    return {"epochs_run": loop["epochs"], "plateau": loop["stopped"], "best": loop["best"]}


def _run_epoch(trainer: Any) -> None:
    """One epoch of nnU-Net's ``run_training``."""
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    train_outputs = [trainer.train_step(next(trainer.dataloader_train))
                     for _ in range(trainer.num_iterations_per_epoch)]
    trainer.on_train_epoch_end(train_outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        val_outputs = [trainer.validation_step(next(trainer.dataloader_val))
                       for _ in range(trainer.num_val_iterations_per_epoch)]
        trainer.on_validation_epoch_end(val_outputs)
    trainer.on_epoch_end()


def _plateau_step(trainer: Any, network: torch.nn.Module, loop: dict[str, Any], patience: int,
                  min_delta: float) -> None:
    """Keep the best weights by EMA pseudo Dice; mark the loop stopped after ``patience`` epochs without gain."""
    score = float(trainer.logger.get_value("ema_fg_dice", step=-1))
    if score > loop["best"] + min_delta:
        loop["best"], loop["bad"] = score, 0
        loop["best_state"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return
    loop["bad"] += 1
    if loop["bad"] >= patience:
        trainer.print_to_log_file(f"validation plateau after {loop['epochs']} epochs "
                                  f"(best EMA pseudo Dice {loop['best']:.4f})")
        loop["stopped"] = True
