"""Seeded mutations of the files that cross sites (posteriors, weight-store manifests, datalists) and the one rule
they must obey: every mutated file is either read correctly or refused with the documented error type."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import torch

from monai_continual.consolidation import DirectoryWeightStore, Posterior, PosteriorFileError
from monai_continual.data import DatalistError, load_multisite_datalist
from monai_continual.utils.tensor_files import TensorFileError

__all__ = ["mutate_bytes", "mutate_json", "fuzz", "TARGETS"]

_ODD_VALUES = [
    None,
    True,
    -1,
    0,
    2**63,
    1e308,
    float("nan"),
    "",
    "..",
    "/etc/passwd",
    "x" * 300,
    [],
    {},
    [1, "a"],
    {"a": []},
]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Flip, overwrite, insert or delete a few bytes, or truncate."""
    data = bytearray(data)
    kind = rng.choice(["flip", "overwrite", "insert", "delete", "truncate"])
    if kind == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data))
        if kind == "flip":
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == "overwrite":
            data[pos] = rng.randrange(256)
        elif kind == "insert":
            data.insert(pos, rng.randrange(256))
        elif len(data) > 1:
            del data[pos]
    return bytes(data)


def mutate_json(document, rng: random.Random):
    """Replace, delete or retype one value somewhere in a JSON document."""
    document = json.loads(json.dumps(document))
    node, key = document, None
    path = []
    while True:
        children = (
            list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        )
        if not children or (path and rng.random() < 0.3):
            break
        key, child = rng.choice(children)
        path.append((node, key))
        if not isinstance(child, (dict, list)):
            break
        node = child
    if not path:
        return rng.choice(_ODD_VALUES)
    parent, key = path[-1]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    else:
        parent[key] = rng.choice(_ODD_VALUES)
    return document


def _posterior_case(root: Path, rng: random.Random) -> str:
    target = root / "mutated.safetensors"
    target.write_bytes(mutate_bytes((root / "posterior.safetensors").read_bytes(), rng))
    try:
        Posterior.load(target)
    except PosteriorFileError:
        return "refused"
    return "read"


def _manifest_case(root: Path, rng: random.Random) -> str:
    store = root / "store"
    manifest = store / "manifest.json"
    original = (root / "manifest.orig").read_text()
    if rng.random() < 0.5:
        manifest.write_bytes(mutate_bytes(original.encode(), rng))
    else:
        manifest.write_text(json.dumps(mutate_json(json.loads(original), rng)))
    try:
        loaded = DirectoryWeightStore(store)
        for entry in loaded.entries():
            loaded.load(entry)
    except TensorFileError:
        return "refused"
    finally:
        manifest.write_text(original)
    return "read"


def _datalist_case(root: Path, rng: random.Random) -> str:
    original = (root / "datalist.orig").read_text()
    target = root / "data" / "mutated.json"
    if rng.random() < 0.5:
        target.write_bytes(mutate_bytes(original.encode(), rng))
    else:
        target.write_text(json.dumps(mutate_json(json.loads(original), rng)))
    try:
        load_multisite_datalist(target)
    except DatalistError:
        return "refused"
    return "read"


TARGETS = {"posterior": _posterior_case, "manifest": _manifest_case, "datalist": _datalist_case}


def prepare(root: Path, datalist: Path) -> None:
    """Valid originals: a posterior, a store with two entries and its manifest, a datalist next to its data."""
    torch.manual_seed(0)
    from monai_continual.bayes import bayesianize

    network = bayesianize(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv3d(2, 2, 1)))
    Posterior.from_model(network, site="a", num_examples=3).save(root / "posterior.safetensors")
    store = DirectoryWeightStore(root / "store")
    store.publish(torch.nn.Conv3d(1, 2, 3).state_dict(), "a", 1)
    store.publish(torch.nn.Conv3d(1, 2, 3).state_dict(), "b", 2)
    shutil.copyfile(root / "store" / "manifest.json", root / "manifest.orig")
    shutil.copytree(datalist.parent, root / "data")
    shutil.copyfile(datalist, root / "datalist.orig")


def fuzz(root: Path, datalist: Path, cases: int, seed: int = 0) -> Counter:
    """Run ``cases`` mutations spread over :data:`TARGETS`; return counts per (target, outcome). Any exception
    other than the documented type of the target propagates."""
    prepare(root, datalist)
    rng = random.Random(seed)
    counts: Counter = Counter()
    names = list(TARGETS)
    for index in range(cases):
        name = names[index % len(names)]
        counts[(name, TARGETS[name](root, rng))] += 1
    return counts
