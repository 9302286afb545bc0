"""Real-scan scale: patch training, sliding-window Monte Carlo evaluation and the disk cache, on make_sites volumes.

Three measurements in one run, printed as a table of ratios at the end:

1. Patch training at two volume sizes (64^3 and 128^3 by default) with the same 32^3 patches: a Bayesian MeshNet
   (the stage of ``vcl`` without a MAP stage) trained through the package's own path,
   ``ContinualRunner.executor(...).train(stage)``: the ``SupervisedTrainer`` and ``MonaiSettings.train_chain`` the
   MONAI executor builds, ``cache="none"``. Per iteration: the data fetch (NIfTI loading, normalization, the
   label-aware crop) and the step (forward, backward, update, the package's iteration handlers) separately. Peak
   memory of the training and, separately, of the same data pipeline without a network, each in a fresh process. The
   step and the training's own memory should be flat in the volume size; only the data part should grow.
2. Monte Carlo evaluation of one volume (128^3 by default) of the same Bayesian MeshNet with the package's two
   evaluation inferers (``MonaiSettings.inferer_for``): ``MCInferer(n, SlidingWindowInferer(patch))`` when
   ``patch_size`` is set (with the default ``sw_batch_size=1`` and with ``--sw-batch-size``, 4 by default) vs
   ``MCInferer(n, SimpleInferer())`` (whole volumes): peak memory and time, each in a fresh process, with the same
   seed; the outputs must have the same shape (their argmax agreement is printed too).
3. ``cache="disk"`` vs ``cache="none"``: time of the second training epoch (the first fills the cache) on the
   ``.nii.gz`` files of make_sites at each volume size; medians of the ratios of back-to-back pairs.

Peak memory: on CUDA (chosen when available) ``torch.cuda.max_memory_allocated`` over the measured section, and
always the host's peak RSS growth over it: the high-water mark is reset through ``/proc/self/clear_refs`` where the
kernel allows it (else ``ru_maxrss``, whose growth misses a section peak below an earlier one), after the heap
memory freed by the set-up is handed back (glibc's ``malloc_trim``), so that it cannot hide the section's own
growth. ``tracemalloc`` does not see torch's allocations.

Time: wall seconds, and on the CPU also the process's CPU seconds, which other work on a shared machine barely
moves; the CPU runs 1 torch thread by default, as two threads waiting for each other on a shared 2-core machine
swing a step's time by several times.

Run: ``.venv/bin/python benchmarks/bench_real_scale.py`` (a few minutes on a CPU);
paper-sized on a GPU: ``.venv/bin/python benchmarks/bench_real_scale.py --paper`` (MeshNet with 96 channels, 128^3
and 1 mm 256^3 volumes, 10 Monte Carlo samples; each can also be set alone: ``--channels``, ``--volumes``,
``--mc-samples``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

NUM_CLASSES = 4  # make_sites: background, CSF, GM, WM
SITE = "site_r"
STD_INIT = 1e-3  # McClure et al.'s initial std: no Laplace calibration pass before training
_MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------- memory


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_host_peak() -> bool:
    """Reset the process's RSS high-water mark to its current RSS; ``False`` where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _kib("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


class _Peak(AbstractContextManager):
    """Peak memory growth over a section of this process: ``host`` (RSS) and ``device`` (CUDA allocations) bytes."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.host = self.device = 0
        self.method = ""

    def __enter__(self) -> _Peak:
        import torch

        gc.collect()
        _trim_heap()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._device_base = torch.cuda.memory_allocated()
        self.hwm = _reset_host_peak()
        self.method = "VmHWM (reset)" if self.hwm else "ru_maxrss"
        self._host_base = _kib("VmRSS") * 1024 if self.hwm else _maxrss_bytes()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.device = torch.cuda.max_memory_allocated() - self._device_base
        self.host = (_kib("VmHWM") * 1024 if self.hwm else _maxrss_bytes()) - self._host_base


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc), so that RSS is the live memory when a section starts."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _in_fresh_process(function: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any]) -> dict[str, Any]:
    """``function(job)`` in a new spawned Python process (a clean allocator and peak RSS per configuration)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(function, job).result()


# ---------------------------------------------------------------------------------------------------- set-up


def _transforms() -> tuple[Callable, Callable]:
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, NormalizeIntensityd

    keys = ["image", "label"]
    chain = Compose(
        [LoadImaged(keys), EnsureChannelFirstd(keys), NormalizeIntensityd("image", nonzero=True), EnsureTyped(keys)]
    )
    return chain, chain


def _runner(job: dict[str, Any], output_dir: Path, cache: str = "none") -> Any:
    import torch

    from monai_continual.engines import ContinualRunner
    from monai_continual.networks import MeshNet

    torch.manual_seed(0)
    train, evaluate = _transforms()
    return ContinualRunner(
        job["datalist"], output_dir, MeshNet(3, 1, NUM_CLASSES, channels=job["channels"]), train, evaluate,
        NUM_CLASSES, sites=[SITE], check_data=False, std_init=STD_INIT, epochs=job["epochs"],
        batch_size=job["batch_size"], samples_per_volume=job["samples_per_volume"], patch_size=(job["patch"],) * 3,
        mc_samples=job["mc_samples"], device=job["device"], amp=job["amp"], progress=False, cache=cache,
    )


def _timed_trainer(records: list[dict[str, float]], cuda: bool) -> type:
    """A ``SupervisedTrainer`` that records every iteration's epoch, data-fetch and total seconds."""
    import torch
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def cpu() -> float:
        return time.process_time()

    class TimedTrainer(SupervisedTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            marks: dict[str, float] = {}
            self.add_event_handler(Events.GET_BATCH_STARTED, lambda _: marks.update(start=clock(), cpu=cpu()))
            self.add_event_handler(Events.GET_BATCH_COMPLETED, lambda _: marks.update(batch=clock(), cpu_batch=cpu()))
            self.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: records.append(
                {"epoch": engine.state.epoch, "data": marks["batch"] - marks["start"],
                 "total": clock() - marks["start"], "cpu_data": marks["cpu_batch"] - marks["cpu"],
                 "cpu_total": cpu() - marks["cpu"]}))

    return TimedTrainer


def _train_stage(job: dict[str, Any], output_dir: Path, cache: str = "none",
                 peak: _Peak | None = None) -> tuple[list[dict[str, float]], list[float]]:
    """Train the Bayesian stage of ``vcl`` (without a MAP stage) at the site through the runner's executor; the
    iterations' times and the epochs' losses."""
    from monai_continual.engines import monai_executor
    from monai_continual.strategies import NetworkKind

    runner = _runner(job, output_dir, cache)
    stages = runner.schedule("vcl", map_stage=False)
    stage = stages[0]
    assert stage.network == NetworkKind.BAYES, stage
    executor = runner.executor(output_dir / "vcl", stages)
    executor.initialize(stage.network)
    records: list[dict[str, float]] = []
    original = monai_executor.SupervisedTrainer
    monai_executor.SupervisedTrainer = _timed_trainer(records, job["device"].startswith("cuda"))
    try:
        if peak is None:
            output = executor.train(stage)
        else:
            with peak:
                output = executor.train(stage)
    finally:
        monai_executor.SupervisedTrainer = original
    return records, list(output.details["loss"])


# ---------------------------------------------------------------------------------------------------- children


def _medians(records: list[dict[str, float]]) -> dict[str, float]:
    """Median wall and process-CPU seconds of the data fetch, the step and the whole iteration."""
    out = {}
    for clock in ("", "cpu_"):
        out[f"{clock}data"] = statistics.median(r[f"{clock}data"] for r in records)
        out[f"{clock}step"] = statistics.median(r[f"{clock}total"] - r[f"{clock}data"] for r in records)
        out[f"{clock}total"] = statistics.median(r[f"{clock}total"] for r in records)
    return out


def _train_child(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        peak = _Peak(job["device"])
        records, _ = _train_stage(job, Path(tmp), peak=peak)
    timed = records[job["warmup"]:]
    return dict(_medians(timed), iterations=len(timed), host=peak.host, device=peak.device, method=peak.method)


def _data_child(job: dict[str, Any]) -> dict[str, Any]:
    """The training's data pipeline alone (the same items, chain and loader settings, no network)."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.data.utils import list_data_collate

    torch.set_num_threads(job["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        runner = _runner(job, Path(tmp))
        settings = runner.settings
        items = runner.data.items(SITE, "training")
        loader = DataLoader(Dataset(items, transform=settings.train_chain), batch_size=settings.batch_size,
                            num_workers=0, collate_fn=list_data_collate)
        batches = job["warmup"] + job["iterations"]
        with _Peak("cpu") as peak:
            done = 0
            while done < batches:
                for batch in loader:
                    done += 1
                    del batch
                    if done == batches:
                        break
    return {"host": peak.host}


def _infer_child(job: dict[str, Any]) -> dict[str, Any]:
    """Monte Carlo prediction of one test volume with the package's evaluation inferer of a Bayesian MeshNet."""
    import torch
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    from monai_continual.bayes import BayesConfig, MCInferer
    from monai_continual.data import load_multisite_datalist
    from monai_continual.engines import MonaiSettings
    from monai_continual.networks import MeshNet

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    train, evaluate = _transforms()
    window = job["sw_batch_size"] is not None
    settings = MonaiSettings(MeshNet(3, 1, NUM_CLASSES, channels=job["channels"]), train, evaluate, NUM_CLASSES,
                             mc_samples=job["mc_samples"], bayes=BayesConfig.calibrated(std_init=STD_INIT),
                             patch_size=(job["patch"],) * 3 if window else None,
                             sw_batch_size=job["sw_batch_size"] or 1, device=job["device"])
    inferer = settings.inferer_for(bayesian=True)
    assert isinstance(inferer, MCInferer)
    assert isinstance(inferer.inferer, SlidingWindowInferer if window else SimpleInferer), inferer.inferer
    network = settings.new_network(bayesian=True).eval()
    item = load_multisite_datalist(job["datalist"]).items(SITE, "test")[0]
    image = torch.as_tensor(evaluate(dict(item))["image"])[None].to(settings.device)
    autocast = job["amp"] and settings.device.type == "cuda"
    with torch.no_grad(), torch.autocast("cuda", enabled=autocast):
        MCInferer(1)(image[..., : job["patch"], : job["patch"], : job["patch"]], network)  # warm-up
        torch.manual_seed(1)
        with _Peak(job["device"]) as peak:
            start, cpu = time.perf_counter(), time.process_time()
            output = inferer(image, network)
            if settings.device.type == "cuda":
                torch.cuda.synchronize()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"shape": tuple(output.shape), "seconds": seconds, "cpu_seconds": cpu, "host": peak.host,
            "device": peak.device,
            "method": peak.method, "argmax": output.argmax(1).to(torch.uint8).cpu().numpy(),
            "input": tuple(image.shape)}


# ---------------------------------------------------------------------------------------------------- main


def _inferers(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """The evaluation inferers compared: name and ``sw_batch_size`` (``None``: whole volumes)."""
    sizes = sorted({1, args.sw_batch_size})
    return [(f"window b{b}", b) for b in sizes] + [("whole", None)]


def _mib(value: float) -> str:
    return f"{value / _MIB:.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _table(title: str, columns: list[str], rows: list[tuple[str, ...]]) -> list[str]:
    width = [max(len(title), *(len(r[0]) for r in rows))] + [
        max(len(c), *(len(r[i + 1]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join([title.ljust(width[0])] + [c.rjust(w) for c, w in zip(columns, width[1:])])]
    lines += ["  ".join([r[0].ljust(width[0])] + [v.rjust(w) for v, w in zip(r[1:], width[1:])]) for r in rows]
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--volumes", type=int, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                        help="edge of the two cubic volume sizes (default 64 128; --paper: 128 256)")
    parser.add_argument("--eval-volume", type=int, default=None,
                        help="edge of the volume of the evaluation comparison (default: the larger volume)")
    parser.add_argument("--patch", type=int, default=32, help="edge of the training patches and sliding window")
    parser.add_argument("--channels", type=int, default=None, help="MeshNet channels (default 8; --paper: 96)")
    parser.add_argument("--mc-samples", type=int, default=None, help="Monte Carlo samples (default 2; --paper: 10)")
    parser.add_argument("--sw-batch-size", type=int, default=4,
                        help="sliding-window batch compared besides the package's default 1")
    parser.add_argument("--batch-size", type=int, default=2, help="volumes per mini-batch")
    parser.add_argument("--samples-per-volume", type=int, default=1, help="patches drawn from a volume per visit")
    parser.add_argument("--iterations", type=int, default=5, help="timed training iterations per volume size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training iterations before them")
    parser.add_argument("--subjects", type=int, default=10, help="subjects generated per volume size (10: 6 train)")
    parser.add_argument("--cache-pairs", type=int, default=3, help="back-to-back none/disk pairs per volume size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on the CPU (1: on a shared machine, two threads waiting for each other "
                             "swing a step's time by several times)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--paper", action="store_true",
                        help="paper-sized defaults: 96 channels, 128^3 and 256^3 volumes, 10 MC samples (a GPU)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where make_sites writes (and reuses) the volumes (default: a temporary folder)")
    args = parser.parse_args(argv)
    paper = {"volumes": [128, 256], "channels": 96, "mc_samples": 10}
    small = {"volumes": [64, 128], "channels": 8, "mc_samples": 2}
    for name, value in (paper if args.paper else small).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.eval_volume is None:
        args.eval_volume = max(args.volumes)
    return args


def main(argv: list[str] | None = None) -> None:
    import torch

    from monai_continual.data import SiteProfile, load_multisite_datalist, make_sites

    args = _parse(argv)
    begin = time.perf_counter()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    torch.set_num_threads(args.threads)
    cuda = device == "cuda"
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name()})" if cuda else f", {args.threads} thread(s)")
          + f"; MeshNet {args.channels} channels, Bayesian (std {STD_INIT}); patches {args.patch}^3, "
          f"batch {args.batch_size} x {args.samples_per_volume} patch(es); {args.mc_samples} MC samples", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp) / "data"
        datalists: dict[int, Path] = {}
        for edge in sorted({*args.volumes, args.eval_volume}):
            start = time.perf_counter()
            datalists[edge] = make_sites(root / f"sites{edge}", sites=[SiteProfile(SITE, args.subjects)],
                                         shape=(edge,) * 3, figure=False, progress=False)
            print(f"make_sites {edge}^3: {time.perf_counter() - start:.1f} s", flush=True)
        n_train = len(load_multisite_datalist(datalists[args.volumes[0]]).items(SITE, "training"))
        per_epoch = math.ceil(n_train / args.batch_size)
        base = {"channels": args.channels, "batch_size": args.batch_size, "samples_per_volume": args.samples_per_volume,
                "patch": args.patch, "mc_samples": args.mc_samples, "device": device, "amp": args.amp,
                "threads": args.threads, "warmup": args.warmup, "iterations": args.iterations,
                "epochs": math.ceil((args.warmup + args.iterations) / per_epoch)}

        # 1. patch training at two volume sizes
        train: dict[int, dict[str, Any]] = {}
        data: dict[int, dict[str, Any]] = {}
        for edge in args.volumes:
            job = dict(base, datalist=str(datalists[edge]))
            print(f"[1] training at {edge}^3 ({args.warmup} + {args.iterations} iterations, fresh process)", flush=True)
            train[edge] = _in_fresh_process(_train_child, job)
            print(f"[1] data pipeline alone at {edge}^3 (fresh process)", flush=True)
            data[edge] = _in_fresh_process(_data_child, job)

        # 2. sliding-window vs whole-volume Monte Carlo evaluation
        infer: dict[str, dict[str, Any]] = {}
        for name, sw_batch_size in _inferers(args):
            print(f"[2] MC evaluation of {args.eval_volume}^3, {name} (fresh process)", flush=True)
            infer[name] = _in_fresh_process(
                _infer_child, dict(base, datalist=str(datalists[args.eval_volume]), sw_batch_size=sw_batch_size))

        # 3. disk cache vs none, second epoch
        cache: dict[int, dict[str, list[float]]] = {}
        same_losses = True
        for edge in args.volumes:
            job = dict(base, datalist=str(datalists[edge]), epochs=2)
            times: dict[str, list[float]] = {}
            for pair in range(args.cache_pairs):
                losses = {}
                for mode in ("none", "disk"):
                    print(f"[3] cache={mode} at {edge}^3, pair {pair + 1}/{args.cache_pairs}", flush=True)
                    records, losses[mode] = _train_stage(job, Path(tmp) / f"cache{edge}_{mode}_{pair}", cache=mode)
                    second = [r for r in records if r["epoch"] == 2]
                    for key in ("", "cpu_"):
                        times.setdefault(f"{mode} {key}epoch", []).append(sum(r[f"{key}total"] for r in second))
                        times.setdefault(f"{mode} {key}data", []).append(sum(r[f"{key}data"] for r in second))
                same_losses &= losses["none"] == losses["disk"]
            cache[edge] = times
    elapsed = time.perf_counter() - begin

    print()
    print(_report(args, device, train, data, infer, cache, n_train, same_losses))
    print(f"\ntotal {elapsed:.0f} s")


def _report(args: argparse.Namespace, device: str, train: dict[int, dict[str, Any]], data: dict[int, dict[str, Any]],
            infer: dict[str, dict[str, Any]], cache: dict[int, dict[str, list[float]]], n_train: int,
            same_losses: bool) -> str:
    cuda = device == "cuda"
    small, large = args.volumes
    clocks = [("wall", "")] + ([] if cuda else [("CPU", "cpu_")])
    memory = "CUDA max_memory_allocated and host" if cuda else "host"
    lines = [f"=== results (device {device}{'' if cuda else f', {args.threads} thread(s)'}; memory: {memory} peak "
             f"RSS growth ({train[small]['method']}), a fresh process per configuration) ==="]

    def row(name: str, values: dict[int, float], fmt: Callable[[float], str]) -> tuple[str, ...]:
        return (name, fmt(values[small]), fmt(values[large]), _ratio(values[large], values[small]))

    def seconds(v: float) -> str:
        return f"{v:.3f}"

    rows = []
    for clock, key in clocks:
        rows += [row(f"train iteration, {clock} s", {e: train[e][f"{key}total"] for e in args.volumes}, seconds),
                 row("  data fetch: load + crop", {e: train[e][f"{key}data"] for e in args.volumes}, seconds),
                 row("  step: forward + backward + update", {e: train[e][f"{key}step"] for e in args.volumes},
                     seconds)]
    if cuda:
        rows.append(row("train peak CUDA memory (MiB)", {e: train[e]["device"] for e in args.volumes}, _mib))
    own = {e: train[e]["host"] - data[e]["host"] for e in args.volumes}
    rows += [row("train peak host RSS growth (MiB)", {e: train[e]["host"] for e in args.volumes}, _mib),
             row("  data pipeline alone (MiB)", {e: data[e]["host"] for e in args.volumes}, _mib),
             row("  training minus data pipeline (MiB)", own, _mib)]
    lines += _table(f"1. patch training ({args.patch}^3 patches, median of {train[small]['iterations']})",
                    [f"{small}^3", f"{large}^3", f"{large}^3 / {small}^3"], rows)
    key = "" if cuda else "cpu_"
    step = train[large][f"{key}step"] / train[small][f"{key}step"]
    fetch = train[large][f"{key}data"] / train[small][f"{key}data"]
    mem = train[large]["device"] / train[small]["device"] if cuda else own[large] / own[small]
    lines.append(
        f"-> the step is {'flat' if abs(step - 1) <= 0.15 else 'NOT flat'} in the volume size ({step:.2f}x "
        f"{'wall' if cuda else 'CPU'} time); the training's own memory is {'flat' if mem <= 1.2 else 'NOT flat'} "
        f"({mem:.2f}x{', CUDA' if cuda else ', host RSS minus the data pipeline'}); the data fetch grows "
        f"{fetch:.1f}x for {(large / small) ** 3:.0f}x the voxels and is "
        f"{train[large][f'{key}data'] / train[large][f'{key}step']:.2f}x the step at {large}^3 (num_workers=0, "
        "no cache)")

    whole = infer["whole"]
    windows = [name for name in infer if name != "whole"]
    names = [*windows, "whole"]

    def compare(label: str, key: str, fmt: Callable[[float], str]) -> tuple[str, ...]:
        return (label, *(fmt(infer[n][key]) for n in names), *(_ratio(infer[n][key], whole[key]) for n in windows))

    rows = [compare("wall s", "seconds", lambda v: f"{v:.2f}")]
    rows.append(compare("peak CUDA memory (MiB)", "device", _mib) if cuda
                else compare("CPU s", "cpu_seconds", lambda v: f"{v:.2f}"))
    rows.append(compare("peak host RSS growth (MiB)", "host", _mib))
    shapes = {n: "x".join(map(str, infer[n]["shape"])) for n in names}
    rows.append(("output shape", *(shapes[n] for n in names),
                 *("same" if infer[n]["shape"] == whole["shape"] else "DIFFERENT" for n in windows)))
    lines.append("")
    lines += _table(f"2. MC evaluation of {args.eval_volume}^3, {args.mc_samples} samples ({args.patch}^3 window, "
                    "bN: sw_batch_size N)", [*names, *(f"{n[7:]} / whole" for n in windows)], rows)
    memory_key, time_key = ("device", "seconds") if cuda else ("host", "cpu_seconds")
    same = all(infer[n]["shape"] == whole["shape"] for n in windows)
    lines.append(
        "-> " + "; ".join(f"the window with sw_batch_size {n[8:]} needs {infer[n][memory_key] / whole[memory_key]:.2f}x"
                          f" the whole volume's peak memory and {infer[n][time_key] / whole[time_key]:.2f}x its time"
                          for n in windows)
        + f"; output shapes {'equal' if same else 'DIFFER'}; the argmax agrees on "
        + ", ".join(f"{float((infer[n]['argmax'] == whole['argmax']).mean()):.1%}" for n in windows) + " of voxels"
        + f" (the window's peak is its full-size buffers of {NUM_CLASSES} class channels: output, counts, MC mean; "
        f"the whole volume's is {args.channels}-channel activations)")

    rows = []
    summary = []
    for edge in args.volumes:
        t = cache[edge]
        for clock, key in clocks:
            epoch = statistics.median(d / n for d, n in zip(t[f"disk {key}epoch"], t[f"none {key}epoch"]))
            fetch = statistics.median(d / n for d, n in zip(t[f"disk {key}data"], t[f"none {key}data"]))
            rows.append((f"{edge}^3 second epoch, {clock} s", f"{statistics.median(t[f'none {key}epoch']):.2f}",
                         f"{statistics.median(t[f'disk {key}epoch']):.2f}", f"{epoch:.2f}x"))
            rows.append((f"  of which data fetch, {clock} s", f"{statistics.median(t[f'none {key}data']):.2f}",
                         f"{statistics.median(t[f'disk {key}data']):.2f}", f"{fetch:.2f}x"))
            if key == ("" if cuda else "cpu_"):
                summary.append(f"{edge}^3: {epoch:.2f}x the epoch ({fetch:.2f}x the data fetch)")
    lines.append("")
    lines += _table(f"3. dataset cache ({n_train} volumes; {args.cache_pairs} back-to-back pairs: medians, and the "
                    "median of the pairs' ratios)",
                    ["none", "disk", "disk / none"], rows)
    lines.append(f"-> second epoch with cache=\"disk\" vs \"none\" ({'wall' if cuda else 'CPU'} time): "
                 + "; ".join(summary) + f"; training losses {'identical' if same_losses else 'DIFFER'} with it")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
