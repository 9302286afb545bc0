"""One process of the distributed runner test, started by ``torchrun --nproc_per_node 2`` on the CPU (gloo).

``python -m torch.distributed.run --nproc_per_node 2 ... distributed_worker.py SITES OUTPUT RECORDS``: every process
runs fine-tuning, single weight transfer (a validation plateau) and DWC of the tiny runner into the same OUTPUT, and
writes what it saw to ``RECORDS/rank<r>.json`` (outside OUTPUT): the files it wrote under OUTPUT (an audit hook), the
indices its sampler drew, the hashes of the weights it started and finished every stage with, the weights rank 0
published, the runs' results, the gap between one ELBO step's DistributedDataParallel gradient and the
single-process mean over both processes' batches, the error of a run whose loss turns NaN in rank 1 alone, and
what fine-tuning published when resumed in ``OUTPUT/resumed`` after ``... RECORDS crash`` (with
``MONAI_CONTINUAL_CRASH_AT`` set) stopped both processes in its middle.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch.nn.parallel import DistributedDataParallel

from monai_continual.engines import continual_runner, monai_executor
from monai_continual.engines.continual_runner import ContinualRunner
from monai_continual.engines.epoch_sampler import EpochSampler
from monai_continual.engines.monai_executor import MonaiStageExecutor
from monai_continual.losses import ELBOLoss
from monai_continual.strategies import NonFiniteTrainingError
from monai_continual.utils.distributed import finalize_distributed, get_rank, get_world_size, init_distributed
from monai_continual.utils.hashing import tensors_sha256

sys.path.insert(0, str(Path(__file__).parent))
from runner_utils import tiny_runner  # noqa: E402

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.link", "os.symlink",
                 "shutil.copyfile", "shutil.rmtree")

RECORD: dict[str, Any] = {"writes": [], "sampled": [], "started": {}, "trained": {}}


def _watch_writes(output: Path) -> None:
    """Record every file-system change this process makes under ``output``."""
    root = str(output.resolve())

    def under(path: Any) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and under(args[0]) and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
            RECORD["writes"].append(f"open {os.fsdecode(args[0])}")
        elif event == "os.mkdir" and under(args[0]) and os.path.isdir(args[0]):
            pass  # mkdir(exist_ok=True) of an existing folder changes nothing
        elif event in _WRITE_EVENTS and any(under(a) for a in args[:2]):
            RECORD["writes"].append(f"{event} {args[:2]}")

    sys.addaudithook(hook)


class RecordingSampler(EpochSampler):
    def __iter__(self):
        epoch = self.epoch
        order = list(super().__iter__())
        RECORD["sampled"].append({"seed": self.seed, "epoch": epoch, "n": self.n, "indices": order})
        return iter(order)


class RecordingExecutor(MonaiStageExecutor):
    def _parallel(self, network):
        RECORD["started"][f"{self.run_dir.name}/{self._stage}"] = tensors_sha256(network.state_dict())
        return super()._parallel(network)

    def _run(self, stage, items, run):
        self._stage = stage.number
        trainer = super()._run(stage, items, run)
        RECORD["trained"][f"{self.run_dir.name}/{stage.number}"] = tensors_sha256(run.network.state_dict())
        return trainer


def elbo_gradient_gap(runner: ContinualRunner) -> float:
    """Max |DDP gradient - mean of the single-process gradients of every process's batch| of one ELBO step of the
    run's Bayesian network (its KL computed on the unwrapped network, as the executor does)."""
    rank, world = get_rank(), get_world_size()
    network = runner.new_network(bayesian=True)
    reference = copy.deepcopy(network)
    data_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(model: torch.nn.Module, forward: torch.nn.Module, r: int) -> dict[str, torch.Tensor]:
        model.zero_grad()
        generator = torch.Generator().manual_seed(100 + r)
        image = torch.randn(2, 1, 16, 20, 16, generator=generator)
        label = torch.randint(0, 4, (2, 1, 16, 20, 16), generator=generator)
        torch.manual_seed(1000 + r)  # this process's Bayesian noise
        ELBOLoss(data_loss, model, 50.0)(forward(image), label).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    distributed = step(network, DistributedDataParallel(network), rank)
    single = [step(reference, reference, r) for r in range(world)]
    return max(float((distributed[k] - sum(g[k] for g in single) / world).abs().max()) for k in distributed)


def diverged_error(sites: Path, output: Path) -> str:
    """The error of a fine-tuning run whose loss is NaN in rank 1 only (both processes must stop)."""
    data_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def loss(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        value = data_loss(prediction, label)
        return value * float("nan") if get_rank() == 1 else value

    try:
        tiny_runner(sites, output, loss=loss).run("fine_tuning", directory="diverged")
    except NonFiniteTrainingError as err:
        return str(err)
    return "no error"


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    sites, output, records = Path(argv[0]), Path(argv[1]), Path(argv[2])
    assert init_distributed(), "not started by torchrun with two processes"
    if argv[3:] == ["crash"]:
        tiny_runner(sites, output, epochs=2).run("fine_tuning", directory="resumed")
        return
    _watch_writes(output)
    monai_executor.EpochSampler = RecordingSampler
    continual_runner.MonaiStageExecutor = RecordingExecutor
    runner = tiny_runner(sites, output, epochs=2)
    options = {"fine_tuning": {}, "single_weight_transfer": {"patience": 1}, "dwc": {}}
    results = {name: runner.run(name, **kwargs) for name, kwargs in options.items()}
    RECORD["results"] = {name: {"matrix": r.matrix.as_array().tolist(), "transfers": r.transfers}
                         for name, r in results.items()}
    RECORD["published"] = {}
    for name in ("fine_tuning", "single_weight_transfer"):
        executor = runner.executor(output / name, runner.schedule(name, **options[name]))
        RECORD["published"].update({f"{name}/{n}": tensors_sha256(executor.artifacts.weights(n))
                                    for n in executor.stages})
    RECORD["elbo_gradient_gap"] = elbo_gradient_gap(runner)
    monai_executor.EpochSampler, continual_runner.MonaiStageExecutor = EpochSampler, MonaiStageExecutor  # unrecorded
    RECORD["diverged"] = diverged_error(sites, output)
    RECORD["resumed"] = tiny_runner(sites, output, epochs=2).run("fine_tuning", directory="resumed").transfers
    records.mkdir(parents=True, exist_ok=True)
    (records / f"rank{get_rank()}.json").write_text(json.dumps(RECORD))
    finalize_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
