"""nnU-Net's training loop with a plateau stop: single weight transfer trains a visit until validation stops
improving."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["run_training_to_plateau"]


def run_training_to_plateau(trainer: Any, patience: int, min_delta: float = 1e-4) -> dict[str, Any]:
    """Run ``trainer`` (an initialized nnU-Net trainer) like ``run_training``, stopping after ``patience`` epochs
    without an improvement of nnU-Net's EMA pseudo Dice on its validation batches; the best weights are restored
    before ``on_train_end`` (so the final checkpoint and any posterior export hold them).

    The hooks called are nnU-Net's own, in its order; only the loop differs. With ``fold="all"`` nnU-Net validates
    on the training cases: give a real fold for a held-out validation split.

    Args:
        trainer: an nnU-Net trainer after ``initialize()``.
        patience: epochs without improvement before stopping (``num_epochs`` caps the run).
        min_delta: smallest EMA pseudo-Dice change that counts as an improvement.

    Returns:
        ``{"epochs_run": int, "plateau": bool, "best": float}``.

    Example::

        >>> trainer.initialize(); run_training_to_plateau(trainer, patience=2)
    """
    if patience < 1:
        raise ValueError(f"run_training_to_plateau: patience must be >= 1, got {patience}.")
    network = getattr(trainer.network, "_orig_mod", trainer.network)
    best, bad, best_state, epochs, stopped = -float("inf"), 0, None, 0, False
    trainer.on_train_start()
    for _ in range(trainer.current_epoch, trainer.num_epochs):
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        train_outputs = [
            trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)
        ]
        trainer.on_train_epoch_end(train_outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            val_outputs = [trainer.validation_step(next(trainer.dataloader_val))
                           for _ in range(trainer.num_val_iterations_per_epoch)]
            trainer.on_validation_epoch_end(val_outputs)
        trainer.on_epoch_end()
        epochs += 1
        score = float(trainer.logger.get_value("ema_fg_dice", step=-1))
        if score > best + min_delta:
            best, bad = score, 0
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                trainer.print_to_log_file(f"validation plateau after {epochs} epochs (best EMA pseudo Dice {best:.4f})")
                stopped = True
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    trainer.on_train_end()
    return {"epochs_run": epochs, "plateau": stopped, "best": best}
