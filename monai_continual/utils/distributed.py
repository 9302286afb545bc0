"""One place for "am I one of several training processes": rank, world size, barrier and rank-0-only work.

Under ``torchrun`` every process runs the same program; training is shared (DistributedDataParallel), everything else
(writing files, evaluating, consolidating) is done by rank 0 while the others wait and then take rank 0's answer.
Without an initialized process group of two or more processes every helper here is a no-op: a single process behaves
exactly as if this module did not exist.

Plain ``torch.distributed``: MONAI's ``monai.utils.dist`` has gathers and the device of the process group
(``get_dist_device``) but no rank, barrier or broadcast of a Python value; ignite's ``ignite.distributed`` has them
but would make this lowest layer depend on ignite.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "barrier",
    "check_process_group",
    "finalize_distributed",
    "broadcast_module",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_rank",
    "local_rank",
    "mean_over_ranks",
    "on_every_rank",
    "on_main_rank",
    "rank_device",
]

T = TypeVar("T")

#: inside :func:`on_main_rank`'s function on rank 0 (a nested call then runs directly: its broadcast would be taken by
#: the other ranks for the outer one's)
_on_main = False


def is_distributed() -> bool:
    """Whether this process is one of two or more in an initialized ``torch.distributed`` process group.

    Example::

        >>> is_distributed()  # False in a plain ``python`` process, True under ``torchrun --nproc_per_node 2``
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_rank() -> bool:
    """Whether this process is rank 0, the one that writes (always true when not distributed)."""
    return get_rank() == 0


def local_rank() -> int:
    """This process's rank on its machine: ``LOCAL_RANK`` (set by ``torchrun``), else the rank modulo the GPUs."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return get_rank() % max(torch.cuda.device_count(), 1)


def rank_device(device: torch.device | str) -> torch.device:
    """``device``, with a bare ``"cuda"`` made this process's GPU (``cuda:<local rank>``) when distributed.

    Example::

        >>> rank_device("cuda")  # cuda:1 in the second process of ``torchrun --nproc_per_node 2``; cuda elsewhere
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def init_distributed(timeout_minutes: float = 120) -> bool:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...): NCCL on
    CUDA (this process's GPU made the current device first), gloo on the CPU. Returns whether this process is
    distributed; a no-op outside ``torchrun`` (no ``WORLD_SIZE``) or when a group is already initialized.

    Rank 0 evaluates and writes while the others wait, so the group's timeout (the longest any collective waits;
    NCCL's default is 10 minutes) must exceed the longest evaluation of a stage.

    Example::

        >>> init_distributed()  # the bundle's ``initialize``: "$monai_continual.utils.distributed.init_distributed()"
    """
    if dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def finalize_distributed(timeout_minutes: float = 10) -> None:
    """Leave the process group once every process has finished: a barrier bounded by ``timeout_minutes``, then
    ``destroy_process_group`` (also when the barrier fails). A no-op without a process group.

    Without the barrier a process that finished first tears down its side while another still completes the last
    collective's background work, and gloo can then abort that process at exit (SIGABRT, "terminate called without an
    active exception"). The bound keeps a process whose peer died from waiting for the group's whole timeout; on gloo
    the error names the rank that did not arrive.

    Example::

        >>> finalize_distributed()  # the main job's ``finalize``
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    timeout = datetime.timedelta(minutes=timeout_minutes)
    try:
        if dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                dist.barrier(async_op=True, device_ids=[torch.cuda.current_device()]).wait(timeout=timeout)
            else:
                dist.monitored_barrier(timeout=timeout)
    finally:
        dist.destroy_process_group()


def check_process_group(who: str) -> None:
    """Refuse to go on as one of several ``torchrun`` processes without their process group: each would run the
    whole job on its own, into the same directory.

    Raises:
        RuntimeError: naming ``who`` and what joins the group.

    Example::

        >>> check_process_group("ContinualRunner")
    """
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and not dist.is_initialized():
        raise RuntimeError(
            f"{who}: started as one of {processes} processes (torchrun) without their process group, so each would "
            "run the whole job into the same directory; join it first (bundle: --distributed true; Python: "
            "monai_continual.utils.distributed.init_distributed())."
        )


def barrier() -> None:
    """Wait until every process gets here (a no-op when not distributed)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def on_main_rank(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank (pickled and broadcast); the other ranks wait.

    An exception on rank 0 is raised there and, as a ``RuntimeError`` naming it, on every other rank, so no rank is
    left waiting. ``fn`` must not itself wait for the other ranks (they are waiting here); a nested
    :func:`on_main_rank` inside it runs directly. Not distributed: ``fn()``.

    Example::

        >>> path = on_main_rank(lambda: make_sites("data/sites"))  # generated once, the path known everywhere
    """
    global _on_main
    if not is_distributed() or _on_main:
        return fn()
    box: list[object] = [None]
    error: BaseException | None = None
    if get_rank() == 0:
        _on_main = True
        try:
            box[0] = ("ok", fn())
        except BaseException as err:  # every rank must leave the broadcast, whatever went wrong
            error = err
            box[0] = ("error", f"{type(err).__name__}: {err}")
        finally:
            _on_main = False
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]  # type: ignore[misc]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value  # type: ignore[return-value]


def broadcast_module(module: nn.Module) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank 0's (in place: an optimizer keeps its tensors).

    Example::

        >>> broadcast_module(network)  # every rank starts from rank 0's weights
    """
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def on_every_rank(flag: bool) -> bool:
    """Whether ``flag`` is true in every process, on every process; ``flag`` when not distributed.

    Example::

        >>> if not on_every_rank(bool(torch.isfinite(loss))): raise ...  # every process stops, not one alone
    """
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: Sequence[float]) -> list[float]:
    """The mean of ``values`` (one number per position) over every rank, on every rank; ``values`` when not
    distributed.

    Example::

        >>> mean_over_ranks([epoch_loss])  # each rank's mean loss of its batches -> the mean over all batches
    """
    if not is_distributed() or not values:
        return list(values)
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return [float(v) / dist.get_world_size() for v in total.cpu()]


def _collective_device() -> torch.device | None:
    """Where a tensor of a collective must be: this process's GPU for NCCL, the CPU otherwise."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
