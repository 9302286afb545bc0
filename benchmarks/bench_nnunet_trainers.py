"""Training-iteration time of our nnU-Net trainers vs nnU-Net's own nnUNetTrainer, side by side in one run.

Two embedded sites are written as nnU-Net datasets (24x28x24), planned once and preprocessed; then each trainer
runs the same number of training iterations on the second site with nnU-Net's own loop, data loader and
augmentation (single-threaded, so that the comparison is not about worker processes). Pairs alternate plain /
other to cancel drift; the medians of the per-pair ratios are printed.

Run: ``.venv/bin/python benchmarks/bench_nnunet_trainers.py``
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

ITERATIONS = 20


def _time(trainer: str, dataset: str, replay: list[str] | None = None) -> float:
    import torch

    from monai_continual.nnunet.launcher import build_trainer
    from monai_continual.nnunet.replay_trainer import replay_sources_for

    torch.manual_seed(0)
    instance = build_trainer(dataset, "3d_fullres", "all", trainer, device="cpu", num_epochs=1,
                             iterations_per_epoch=ITERATIONS, val_iterations_per_epoch=1)
    instance.disable_checkpointing = True
    if replay:
        instance.replay_sources = replay_sources_for(replay, capacity_per_site=3, seed=0)
    instance.on_train_start()
    instance.on_train_epoch_start()
    start = time.perf_counter()
    for _ in range(ITERATIONS):
        instance.train_step(next(instance.dataloader_train))
    elapsed = time.perf_counter() - start
    instance.on_train_end()
    return elapsed / ITERATIONS


def main(pairs: int = 3) -> None:
    import torch

    from monai_continual.data import DEFAULT_SITES, make_sites
    from monai_continual.nnunet import export_nnunet_datasets, plan_and_preprocess_sites, set_nnunet_paths
    from monai_continual.nnunet.planning import preprocessed_data_folder

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        set_nnunet_paths(root / "raw", root / "preprocessed", root / "results")
        datalist = make_sites(
            root / "sites", sites=list(DEFAULT_SITES[:2]), shape=(24, 28, 24), figure=False, progress=False
        )
        names = list(export_nnunet_datasets(datalist, root / "raw", first_id=801).values())
        plan_and_preprocess_sites(names)
        replay = [preprocessed_data_folder(root / "preprocessed" / names[0], "3d_fullres")]
        others = {"nnUNetTrainerBayesian": None, "nnUNetTrainerVCL": None, "nnUNetTrainerReplay": replay}
        ratios: dict[str, list[float]] = {k: [] for k in others}
        plain_times = []
        for _ in range(pairs):
            for name, sources in others.items():
                plain = _time("nnUNetTrainer", names[1])
                other = _time(name, names[1], sources)
                plain_times.append(plain)
                ratios[name].append(other / plain)
        print(
            f"nnUNetTrainer: {statistics.median(plain_times) * 1000:.0f} ms per training iteration (batch 2, 2 threads)"
        )
        for name, values in ratios.items():
            print(
                f"{name} / nnUNetTrainer: {statistics.median(values):.3f} "
                f"(pairs: {', '.join(f'{v:.3f}' for v in values)})"
            )


if __name__ == "__main__":  # nnU-Net starts worker processes that import this module again
    main()
