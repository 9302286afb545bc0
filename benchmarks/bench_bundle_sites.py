"""A hospital's own bundle as a federated site: seconds per FedAvg round under this package's controller against
NVIDIA FLARE's own FedAvg recipe on the same bundle, sites and data, and the bytes per round against the model's size.

Both runs are 2 hospitals, 2 rounds of 1 local epoch of the spleen-style model-zoo bundle of ``tests/test_overlays``
in NVFlare's simulator. Our controller also has every site score every round's model on its own data (the R
matrix); NVFlare's FedAvg has every site score the global model it receives before training. Our bytes are counted
from the server's payload audit (every tensor sent and received); NVFlare's are its protocol's (the global model to
each site and one update back per round).

Run: ``.venv/bin/python benchmarks/bench_bundle_sites.py``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from monai.networks.nets import UNet

ROUNDS = 2


def _bundle(root: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_overlays import MODEL_ZOO_TRAIN, _spleen_site

    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps(MODEL_ZOO_TRAIN))
    sites = {name: {"dataset_dir": str(_spleen_site(root / name / "Task09_Spleen", 4, seed, bright)),
                    "bundle_root": str(root / name)}
             for seed, (name, bright) in enumerate([("hospital_1", 120.0), ("hospital_2", 60.0)])}
    return bundle, sites


def main() -> None:
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe import SimEnv, set_per_site_config

    import monai_continual.federated.bundle_client as client
    from monai_continual.federated import FederatedRun

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_overlays import MODEL_ZOO_TRAIN

    unet_args = {k: v for k, v in MODEL_ZOO_TRAIN["network_def"].items() if k != "_target_"}
    sizes = {k: int(v.numel() * v.element_size()) for k, v in UNet(**unet_args).state_dict().items()}
    model_bytes = sum(sizes.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, sites = _bundle(root)
        audit = root / "payloads.jsonl"
        start = time.perf_counter()
        FederatedRun.bundle(bundle, sites, "federated_averaging", root / "ours", options={"rounds": ROUNDS},
                            epochs=1, task_request_interval=0.2, payload_log=str(audit)).run()
        ours = time.perf_counter() - start
        moved = 0
        for line in audit.read_text().splitlines():
            record = json.loads(line)
            moved += sum(sizes.get(name.partition("/")[2], 0) for name in record["params"])

        recipe = FedAvgRecipe(name="bundle_fedavg", min_clients=2, num_rounds=ROUNDS, train_script=client.__file__,
                              model={"class_path": "monai.networks.nets.UNet", "args": unet_args},
                              key_metric="val_mean_dice")
        set_per_site_config(recipe, {site: {"train_args": " ".join(
            [f"--bundle-root {bundle} --workdir {root / 'nvflare_sites'}",
             *[f"--set {k}={json.dumps(v)}" for k, v in overrides.items()]])} for site, overrides in sites.items()})
        start = time.perf_counter()
        recipe.execute(SimEnv(clients=list(sites), workspace_root=str(root / "workspace")))
        theirs = time.perf_counter() - start

    print(f"model: {model_bytes / 1e3:.1f} kB ({len(sizes)} tensors of the bundle's UNet)")
    print(f"our controller (FedAvg, {ROUNDS} rounds, every site scores every round): {ours / ROUNDS:.1f} s per round")
    print(f"NVFlare's FedAvg recipe ({ROUNDS} rounds, the same client):            {theirs / ROUNDS:.1f} s per round")
    print(f"ratio ours / NVFlare's: {ours / theirs:.2f}")
    per_round = moved / ROUNDS
    print(f"our bytes per round: {per_round / 1e3:.1f} kB = {per_round / model_bytes:.1f} x the model "
          f"(2 sites x (1 start + 1 update + 1 model to score) per round, and the initial weights once)")
    print(f"NVFlare's bytes per round: {2 * len(sites) * model_bytes / 1e3:.1f} kB = {2 * len(sites)} x the model")


if __name__ == "__main__":
    main()
