"""A hospital's own bundle as an NVFlare site (Client API): this package's strategies, or NVFlare's own FedAvg.

Started by NVFlare's ``ScriptRunner`` at every site::

    python bundle_client.py --bundle-root /opt/spleen_ct_segmentation --workdir /data/hospital_b/fl \
        --set dataset_dir='"/data/hospital_b/Task09_Spleen"'

The site's name is its NVFlare client name. Its bundle, its overrides and its working directory are its own: an
exported job names none of them, and what a site sets in its environment wins over what a job passes
(``MONAI_CONTINUAL_BUNDLE_ROOT``, ``MONAI_CONTINUAL_BUNDLE_OVERRIDES`` (a JSON file of config overrides),
``MONAI_CONTINUAL_WORKDIR``). Overrides are plain JSON values, never expressions or references.

A task of :class:`~monai_continual.federated.StrategyController` (its meta names the run) is one stage, run by
:class:`~monai_continual.federated.SiteWorker` with the bundle's executor. Any other task is NVFlare's plain FL
workflow (FedAvg's ``train``, ``validate`` and ``submit_model``), served by
:class:`~monai_continual.federated.bundle_algo.ContinualBundleAlgo` as MONAI's ``MonaiAlgo`` would be: full weights or
differences (``--send-weight-diff``), the number of training cases as FedAvg's weight.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["bundle_overrides", "main", "BUNDLE_ROOT_ENV", "BUNDLE_OVERRIDES_ENV"]

BUNDLE_ROOT_ENV = "MONAI_CONTINUAL_BUNDLE_ROOT"
BUNDLE_OVERRIDES_ENV = "MONAI_CONTINUAL_BUNDLE_OVERRIDES"
_KEY = re.compile(r"[A-Za-z0-9_]+(#[A-Za-z0-9_]+)*")


def _plain(value: Any, where: str) -> None:
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"bundle override {where}: {value!r} is an expression or reference; site overrides are data.")
    if isinstance(value, Mapping):
        raise ValueError(f"bundle override {where}: a mapping may hold a component; give its entries as KEY#ENTRY.")
    if isinstance(value, list):
        for item in value:
            _plain(item, where)


def bundle_overrides(items: Iterable[str] = (), file: str | None = None) -> dict[str, Any]:
    """A site's bundle overrides: the JSON object in ``file`` (the site's own setting), then ``KEY=JSON`` items.

    Raises:
        ValueError: naming the item, for a key that is not ``name(#name)*``, a value that is not JSON, or a value that
            is an expression (``$``), a reference (``@``), a macro (``%``) or a mapping.

    Example::

        >>> bundle_overrides(['dataset_dir="/data/spleen"', "train#trainer#amp=true"])
        {'dataset_dir': '/data/spleen', 'train#trainer#amp': True}
    """
    pairs: list[tuple[str, Any]] = []
    if file:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"bundle overrides {file!r}: expected a JSON object of KEY: value.")
        pairs += [(str(k), v) for k, v in data.items()]
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=JSON.")
        try:
            pairs.append((key, json.loads(text)))
        except json.JSONDecodeError as err:
            raise ValueError(f"--set {item!r}: the value is not JSON ({err}).") from err
    out = {}
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise ValueError(f"bundle override {key!r}: keys are config ids, name(#name)*.")
        if key.rpartition("#")[2].startswith("_"):  # _target_, _mode_, _requires_, _disabled_ name or run code
            raise ValueError(f"bundle override {key!r}: special keys of a component are not overrides of a site.")
        _plain(value, repr(key))
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    import os

    import nvflare.client as flare
    from monai.fl.utils.constants import ExtraItems

    from monai_continual.federated.bundle_algo import ContinualBundleAlgo
    from monai_continual.federated.site_paths import WORKDIR_ENV, site_path
    from monai_continual.federated.site_worker import SiteWorker
    from monai_continual.utils.names import check_site_name

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-root", help=f"the site's bundle (default: ${BUNDLE_ROOT_ENV})")
    parser.add_argument("--workdir", help=f"this site's working directory (default: ${WORKDIR_ENV})")
    parser.add_argument("--train-config", default="configs/train.json", help="training config, relative to the bundle")
    parser.add_argument("--evaluate-config", default=None,
                        help="config merged over the training config to score (default: configs/evaluate.json if any)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a bundle config override of this site (plain JSON, never an expression), repeated")
    parser.add_argument("--local-epochs", type=int, default=1, help="epochs of a plain FL round (default: 1)")
    parser.add_argument("--send-weight-diff", action="store_true",
                        help="a plain FL round returns weight differences instead of full weights")
    parser.add_argument("--mc-samples", type=int, default=3, help="Monte Carlo samples to score a Bayesian model")
    args = parser.parse_args(argv)
    bundle_root = site_path(args.bundle_root, BUNDLE_ROOT_ENV, "bundle")
    workdir = site_path(args.workdir, WORKDIR_ENV, "working directory")
    site_file = os.environ.get(BUNDLE_OVERRIDES_ENV, "")
    overrides = bundle_overrides([] if site_file else args.set, site_file or None)  # the site's own settings win

    flare.init()
    site = check_site_name(flare.get_site_name(), "NVFlare site")
    algo = ContinualBundleAlgo(bundle_root, workdir, local_epochs=args.local_epochs,
                               send_weight_diff=args.send_weight_diff, train_config=args.train_config,
                               evaluate_config=args.evaluate_config, overrides=overrides, mc_samples=args.mc_samples)
    algo.initialize({ExtraItems.CLIENT_NAME: site})
    worker = SiteWorker(lambda stages, run_dir: algo.executor(stages, run_dir), site, Path(workdir) / site)
    serve_bundle(worker, algo)


def serve_bundle(worker: Any, algo: Any) -> None:
    """Answer the server's tasks until the job ends: the controller's stages through ``worker``, NVFlare's plain FL
    tasks through ``algo`` (after ``flare.init()``)."""
    import nvflare.client as flare
    import torch
    from monai.fl.utils.constants import WeightType
    from monai.fl.utils.exchange_object import ExchangeObject
    from nvflare.app_common.abstract.fl_model import ParamsType
    from nvflare.client.api import FLModel

    from monai_continual.engines.bundle_executor import NetworkMismatchError
    from monai_continual.federated.site_worker import TRANSPORT_KEYS

    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        meta = {k: v for k, v in (model.meta or {}).items() if k not in TRANSPORT_KEYS}
        if "run" in meta:  # a stage of this package's controller
            try:
                params, meta, metrics = worker.handle(flare.get_task_name(), meta, model.params)
            except NetworkMismatchError as err:  # the server learns why (parameter names, shapes), and stops
                flare.send(FLModel(meta={"error": str(err).replace("/", "|")}, metrics={"refused": 1.0}))
                continue
            flare.send(FLModel(params=params, meta=meta, metrics=metrics))
            continue
        received = ExchangeObject(weights=dict(model.params or {}), weight_type=(
            WeightType.WEIGHT_DIFF if model.params_type == ParamsType.DIFF else WeightType.WEIGHTS))
        # a PyTorch job (NVFlare's PT recipes) sends tensors and expects tensors back; a NumPy job arrays
        as_sent = (lambda v: v) if any(isinstance(v, torch.Tensor) for v in received.weights.values()) else (
            lambda v: v.numpy())
        if flare.is_train():
            full = received.weights and received.weight_type == WeightType.WEIGHTS
            metrics = algo.evaluate(received).metrics if full else {}  # the global model on this site's data
            algo.train(received)
            update = algo.get_weights()
            flare.send(FLModel(
                params={k: as_sent(v) for k, v in update.weights.items()},
                params_type=ParamsType.DIFF if update.weight_type == WeightType.WEIGHT_DIFF else ParamsType.FULL,
                metrics={k: v for k, v in metrics.items() if k != "scores"},
                meta={"NUM_STEPS_CURRENT_ROUND": update.statistics["num_examples"]},
            ))
        elif flare.is_evaluate():
            metrics = algo.evaluate(received).metrics
            flare.send(FLModel(metrics={k: v for k, v in metrics.items() if k != "scores"}))
        elif flare.is_submit_model():
            update = algo.get_weights({"weight_type": WeightType.WEIGHTS})
            flare.send(FLModel(params={k: as_sent(v) for k, v in update.weights.items()}, params_type=ParamsType.FULL))
    algo.finalize()


if __name__ == "__main__":
    main()
