"""Added time of recording calibration and uncertainty in an evaluation (``evaluate_sites(..., calibration=...)``).

The evaluation of every model a summary row shows records, per test volume, the ECE, the reliability bins and the
entropy and mutual information AUROCs from the probabilities it scores Dice from (no further forward pass). This times
one site's evaluation (volumes already loaded) with and without the records, for the deterministic MeshNet and for its
Bayesian twin under Monte Carlo inference, at the main job's grid (16x20x16) and at the embedded sites' default grid
(32x40x32), and the record alone.

Run: ``.venv/bin/python benchmarks/bench_calibration.py``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from monai.transforms import Lambdad

from monai_continual.bayes import MCInferer, bayesianize
from monai_continual.data import SiteProfile, load_multisite_datalist, make_sites, scan_transforms
from monai_continual.metrics import evaluate_sites, volume_calibration
from monai_continual.networks import MeshNet

VOLUMES = 8
REPEATS = 7


def main() -> None:
    torch.set_num_threads(2)
    for shape in ((16, 20, 16), (32, 40, 32)):
        with tempfile.TemporaryDirectory() as tmp:
            sites = [SiteProfile("t", 4), SiteProfile("a", VOLUMES, held_out=True)]
            datalist = make_sites(Path(tmp) / "sites", sites=sites, shape=shape, progress=False)
            data = load_multisite_datalist(datalist)
            # loaded once: the timings compare the evaluation's compute, not the disk
            items = {"a": [scan_transforms()(dict(i)) for i in data.items("a", "test")]}
            transform = Lambdad(("image", "label"), lambda x: x)
            torch.manual_seed(0)
            plain = MeshNet(3, 1, 4, channels=12, dilations=(1, 1, 2, 4, 1))
            for name, network, inferer in (("deterministic", plain, None),
                                           ("Bayesian, 3 MC samples", bayesianize(plain), MCInferer(3))):

                def run(record: bool, network=network, inferer=inferer) -> float:
                    start = time.perf_counter()
                    evaluate_sites(network, items, transform, 4, inferer, calibration={} if record else None)
                    return (time.perf_counter() - start) / VOLUMES

                run(False), run(True)  # warm-up
                times = {False: [], True: []}
                for _ in range(REPEATS):  # interleaved, the fastest of each: the machine is shared
                    for record in (False, True):
                        times[record].append(run(record))
                without, with_ = min(times[False]), min(times[True])
                print(f"{'x'.join(map(str, shape))} {name}: {1000 * without:.1f} ms/volume without, "
                      f"{1000 * with_:.1f} ms/volume with calibration (+{100 * (with_ / without - 1):.0f}%)")
            probs = torch.softmax(torch.randn(1, 4, *shape), 1)
            label, mi = torch.randint(0, 4, (1, 1, *shape)), torch.rand(1, 1, *shape)
            alone = []
            for _ in range(VOLUMES):
                start = time.perf_counter()
                volume_calibration(probs, label, mutual_information=mi)
                alone.append(time.perf_counter() - start)
            print(f"{'x'.join(map(str, shape))} the record alone: {1000 * min(alone):.1f} ms/volume")


if __name__ == "__main__":
    main()
