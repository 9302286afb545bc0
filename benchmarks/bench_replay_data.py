"""ReplayDataset vs a plain MONAI Dataset over the same items and transforms, and embedded-data generation time.

Prints the iteration-time ratio (target overhead <= 5%) measured side by side (medians of back-to-back pairs), and
how long the default embedded multi-site dataset takes to generate.

Run: ``.venv/bin/python benchmarks/bench_replay_data.py``
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, NormalizeIntensityd

from monai_continual.data import ReplayBuffer, ReplayDataset, load_multisite_datalist, make_sites


def main(pairs: int = 7) -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        datalist = make_sites(tmp, progress=False)
        generation = time.perf_counter() - start
        data = load_multisite_datalist(datalist)
        keys = ["image", "label"]
        transform = Compose(
            [LoadImaged(keys), EnsureChannelFirstd(keys), NormalizeIntensityd("image", nonzero=True), EnsureTyped(keys)]
        )
        buffer = ReplayBuffer(capacity_per_site=20)
        for site in ("site_a", "site_b", "site_c"):
            buffer.add_site(site, data.items(site, "training"))
        current = data.items("site_d", "training")
        mixed = ReplayDataset(current, buffer, transform=transform)
        plain = Dataset(
            [dict(i, site="site_d", replay=False) for i in current] + [dict(i, replay=True) for i in buffer.items()],
            transform=transform,
        )
        assert len(mixed) == len(plain)

        def iterate(dataset) -> float:
            begin = time.perf_counter()
            for _ in DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0):
                pass
            return time.perf_counter() - begin

        iterate(plain), iterate(mixed)
        ratios, t_plain, t_mixed = [], [], []
        for _ in range(pairs):
            a, b = iterate(plain), iterate(mixed)
            t_plain.append(a)
            t_mixed.append(b)
            ratios.append(b / a)
    print(
        f"default embedded dataset ({sum(s.num_cases for s in data.sites.values())} subjects, 5 sites): "
        f"generated in {generation:.1f} s"
    )
    print(
        f"epoch over {len(mixed)} items: Dataset {statistics.median(t_plain) * 1000:.0f} ms, "
        f"ReplayDataset {statistics.median(t_mixed) * 1000:.0f} ms"
    )
    print(f"ReplayDataset / Dataset = {statistics.median(ratios):.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
