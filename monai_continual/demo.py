"""A short showcase of the Bayesian core, run by ``make demo`` until the multi-site experiment bundle lands.

It trains a small Bayesian MeshNet on synthetic 3-D spheres with the ELBO, turns it into a Monte Carlo predictor and
prints Dice and uncertainty, then shows that ``bayesianize`` converts a MONAI UNet without changing its output.
"""

from __future__ import annotations

import time

import torch
from monai.metrics import compute_dice
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from torch import nn
from tqdm import trange

from monai_continual.bayes import MCInferer, bayesian_layers, bayesianize, kl_divergence
from monai_continual.losses import ELBOLoss
from monai_continual.networks import MeshNet


def spheres(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy bright spheres of random centre and radius in ``size``^3 volumes, with their labels."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = size / 2 + (torch.rand(n, 3, 1, 1, 1, generator=generator) - 0.5) * size / 3
    radius = size * (0.2 + 0.1 * torch.rand(n, 1, 1, 1, generator=generator))
    labels = (((grid[None] - centre) ** 2).sum(1) <= radius**2).long()
    images = labels.float()[:, None] + 0.3 * torch.randn(n, 1, size, size, size, generator=generator)
    return images, labels


def main(steps: int = 150, num_train: int = 200, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    images, labels = spheres(num_train, 16, g)
    test_images, test_labels = spheres(8, 16, g)
    net = MeshNet(3, 1, 2, channels=8, dilations=(1, 1, 2, 4, 1), bayesian=True)
    loss_fn = ELBOLoss(nn.CrossEntropyLoss(), net, num_examples=num_train)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    bar = trange(steps, desc="Bayesian MeshNet (ELBO)")
    for _ in bar:
        idx = torch.randint(0, num_train, (4,), generator=g)
        opt.zero_grad()
        loss = loss_fn(net(images[idx]), labels[idx])
        loss.backward()
        opt.step()
        bar.set_postfix(data=f"{float(loss_fn.last_data_loss):.3f}", kl_over_n=f"{float(loss_fn.last_kl) / num_train:.1f}")
    net.eval()
    out = MCInferer(10, return_uncertainty=True)(test_images, net)
    pred = one_hot(out["probs"].argmax(1, keepdim=True), 2)
    dice = float(compute_dice(pred, one_hot(test_labels[:, None], 2), include_background=False).mean())
    wrong = pred.argmax(1) != test_labels
    mi = out["mutual_information"][:, 0]
    results = {
        "mc_dice": dice,
        "mean_mutual_information_where_wrong": float(mi[wrong].mean()) if wrong.any() else 0.0,
        "mean_mutual_information_where_right": float(mi[~wrong].mean()),
        "kl": float(kl_divergence(net)),
    }
    unet = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    bunet = bayesianize(unet).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        results["unet_bayesian_layers"] = float(sum(1 for _ in bayesian_layers(bunet)))
        results["unet_max_output_change"] = float((bunet(x) - unet(x)).abs().max())
    print(f"\nMC Dice of the Bayesian MeshNet (10 samples): {dice:.3f}")
    print(
        "Mutual information (epistemic uncertainty), mean over voxels: "
        f"{results['mean_mutual_information_where_wrong']:.4f} where wrong vs "
        f"{results['mean_mutual_information_where_right']:.4f} where right"
    )
    print(
        f"bayesianize(UNet): {int(results['unet_bayesian_layers'])} Bayesian layers, "
        f"max output change in eval mode {results['unet_max_output_change']:.2e}"
    )
    print(f"done in {time.time() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
