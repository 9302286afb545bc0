"""Epoch time of the site-aware runner's stage vs a plain MONAI SupervisedTrainer on the same data and network.

The runner's extras per epoch are seeding, an atomic checkpoint, the weight store and a progress bar; the target is
<= 5% overhead. Both train the same MeshNet for the same number of epochs on one site of the embedded data; the
runner's time excludes its after-stage evaluation (timed separately and reported).

Run: ``.venv/bin/python benchmarks/bench_runner_overhead.py``
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, NormalizeIntensityd

from monai_continual.data import SiteProfile, load_multisite_datalist, make_sites
from monai_continual.engines import ContinualRunner
from monai_continual.networks import MeshNet

EPOCHS = 4


def main(pairs: int = 3) -> None:
    torch.set_num_threads(2)
    keys = ["image", "label"]
    transform = Compose(
        [LoadImaged(keys), EnsureChannelFirstd(keys), NormalizeIntensityd("image", nonzero=True), EnsureTyped(keys)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        datalist = make_sites(
            Path(tmp) / "sites",
            sites=[SiteProfile("a", 16), SiteProfile("h", 2, held_out=True)],
            shape=(24, 28, 24),
            progress=False,
        )
        data = load_multisite_datalist(datalist)
        torch.manual_seed(0)
        network = MeshNet(3, 1, 4, channels=16, dilations=(1, 1, 2, 4, 1))

        def plain() -> float:
            net = copy.deepcopy(network)
            trainer = SupervisedTrainer(
                device=torch.device("cpu"), max_epochs=EPOCHS,
                train_data_loader=DataLoader(Dataset(data.items("a", "training"), transform), batch_size=2,
                                             shuffle=True),
                network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-3),
                loss_function=DiceCELoss(to_onehot_y=True, softmax=True), decollate=False,
            )
            start = time.perf_counter()
            trainer.run()
            return time.perf_counter() - start

        evaluation = []

        def ours(index: int) -> float:
            runner = ContinualRunner(  # the plain trainer's batch size and optimizer, so that only the stage differs
                data, Path(tmp) / f"run{index}", network, transform, transform, 4, epochs=EPOCHS, progress=False,
                batch_size=2, optimizer=lambda params: torch.optim.Adam(params, 1e-3), optimizer_state="fresh",
            )
            original = runner._evaluate

            def timed(*args, **kwargs):
                begin = time.perf_counter()
                out = original(*args, **kwargs)
                evaluation.append(time.perf_counter() - begin)
                return out

            runner._evaluate = timed
            start = time.perf_counter()
            runner.run("fine_tuning")
            return time.perf_counter() - start - evaluation[-1]

        plain()
        ratios, a_times, b_times = [], [], []
        for i in range(pairs):
            a, b = plain(), ours(i)
            a_times.append(a)
            b_times.append(b)
            ratios.append(b / a)
    print(f"{EPOCHS} epochs on one site: plain SupervisedTrainer {statistics.median(a_times):.2f} s, "
          f"site-aware stage {statistics.median(b_times):.2f} s "
          f"(+ {statistics.median(evaluation):.2f} s evaluation on every site)")
    print(f"site-aware / plain = {statistics.median(ratios):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
