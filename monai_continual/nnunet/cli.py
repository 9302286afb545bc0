"""``python -m monai_continual.nnunet``: nnU-Net with Bayesian, VCL and replay trainers, and strategies across sites.

Commands (``python -m monai_continual.nnunet COMMAND --help`` for each one's options):
  export-sites   write a multi-site datalist as one nnU-Net raw dataset per site
  plan           plan once, move the plans to every site's dataset, preprocess each
  fingerprint    a site's nnU-Net dataset fingerprint, aggregate statistics only (federated planning)
  plan-from-fingerprints  merge the sites' fingerprints and plan with nnU-Net as if their data were pooled
  preprocess     preprocess a site's own dataset with a plans file it was given
  train          train any trainer (ours or nnU-Net's), like nnUNetv2_train, where nnU-Net's lookup cannot
  predict        predict a folder of images; Monte Carlo and uncertainty maps for Bayesian trainers
  sites          run a strategy over the sites' datasets and fill the R matrix (resumable)
  trainer-path   print the folder to export as nnUNet_extTrainer for nnUNetv2_train

nnU-Net's folders come from nnUNet_raw / nnUNet_preprocessed / nnUNet_results or --raw / --preprocessed / --results.
A dataset is an id (501) or a name (Dataset501_site_a).

Example:
  python -m monai_continual.nnunet export-sites sites/datalist.json --first-id 501
  python -m monai_continual.nnunet plan 501 502
  python -m monai_continual.nnunet fingerprint 501 -o site_a.json    # federated: at each site, then
  python -m monai_continual.nnunet plan-from-fingerprints site_a.json site_b.json -o plans.json
  python -m monai_continual.nnunet preprocess --plans-file plans.json 501    # at each site
  python -m monai_continual.nnunet sites cyclic_weight_transfer 501 502 -o runs/cwt --rounds 3
"""

# Only the standard library and monai_continual.nnunet.names are imported at module level: `--help` and argument
# errors must not wait for nnU-Net, torch or MONAI. Each command imports what it needs.

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from monai_continual.nnunet.names import (
    NNUNET_TRAINER,
    OUR_TRAINERS,
    SITE_STRATEGIES_WITH_ROUNDS,
    SITE_STRATEGY_TRAINERS,
)
from monai_continual.recommended import RECOMMENDED

__all__ = ["PROG", "CommandLineError", "build_parser", "main"]

PROG = "python -m monai_continual.nnunet"
_ENV = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_ORDERS = ("fixed", "random", "random_per_round")
_DEFAULT_ROUNDS = 2


class CommandLineError(Exception):
    """A user error found by a command (a dataset that is not there, an option at fault): one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, ``PROG COMMAND: error: MESSAGE (see `PROG COMMAND --help`)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: ...)`` to every option that has a default value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


# ----------------------------------------------------------------------------------------------- argument types


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _decay(text: str) -> float:
    value = _nonnegative(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _dataset(text: str) -> str:
    """A dataset id (1-999) or name (``DatasetXXX_Name``), as nnU-Net takes them."""
    if text.isdigit() and 1 <= int(text) <= 999:
        return str(int(text))
    if re.fullmatch(r"Dataset\d{3}_[A-Za-z0-9_-]+", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a dataset: give an id from 1 to 999 (501) or a name (Dataset501_site_a)"
    )


def _dataset_id(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"expected a dataset id from 1 to 999, got {text!r}")
    return value


def _replay_item(text: str) -> str:
    """``DATASET`` or ``DATASET:K``."""
    dataset, _, capacity = text.partition(":")
    try:
        _dataset(dataset)
        if capacity:
            _positive_int(capacity)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET or DATASET:K ({e})") from None
    return text


def _fold(text: str) -> str:
    if text == "all" or (text.isdigit() and int(text) >= 0):
        return text
    raise argparse.ArgumentTypeError(f"expected a fold number (0, 1, ...) or 'all', got {text!r}")


def _device(text: str) -> str:
    if re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")


# ----------------------------------------------------------------------------------------------- checks


def _command(*words: Any) -> str:
    """The command line to run, quoted for the error message."""
    return "`" + " ".join([PROG, *map(str, words)]) + "`"


def _require(*keys: str) -> dict[str, Path]:
    """The nnU-Net folders a command needs; a clear error names the variables and options that are missing."""
    missing = [k for k in keys if not os.environ.get(_ENV[k])]
    if missing:
        variables = " and ".join([", ".join(_ENV[k] for k in missing[:-1]), _ENV[missing[-1]]] if missing[:-1] else
                                 [_ENV[missing[0]]])
        options = " ".join(f"--{k} DIR" for k in missing)
        raise CommandLineError(f"{variables} {'is' if len(missing) == 1 else 'are'} not set: export "
                               f"{'it' if len(missing) == 1 else 'them'} or pass {options}.")
    return {k: Path(os.environ[_ENV[k]]) for k in keys}


def _find_dataset(root: Path, dataset: str) -> list[Path]:
    pattern = f"Dataset{int(dataset):03d}_*" if dataset.isdigit() else dataset
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def _raw_dataset(root: Path, dataset: str, option: str = "") -> str:
    """The name of ``dataset`` under ``nnUNet_raw``."""
    found = _find_dataset(root, dataset)
    where = f"{option} {dataset}" if option else f"dataset {dataset}"
    if not found:
        raise CommandLineError(f"{where}: not found in nnUNet_raw ({root}); export the sites first with "
                               f"{_command('export-sites', 'DATALIST', '--first-id', 'ID')}.")
    if len(found) > 1:
        raise CommandLineError(f"{where}: several folders in nnUNet_raw ({root}) match: "
                               f"{[p.name for p in found]}; name one of them.")
    return found[0].name


def _planned_dataset(root: Path, dataset: str, plans: str, plan_command: Sequence[str], option: str = "") -> str:
    """The name of ``dataset`` under ``nnUNet_preprocessed``, which must hold ``plans``."""
    found = [p for p in _find_dataset(root, dataset) if (p / f"{plans}.json").is_file()]
    where = f"{option} {dataset}" if option else f"dataset {dataset}"
    if len(found) != 1:
        raise CommandLineError(f"{where}: not planned (no {plans}.json for it in nnUNet_preprocessed, {root}); run "
                               f"{_command('plan', *plan_command)} first (after export-sites if it is not in "
                               "nnUNet_raw yet).")
    return found[0].name


def _plans_option(plans: str) -> list[str]:
    return [] if plans == "nnUNetPlans" else ["-p", plans]


def _existing(path: str | None, option: str, kind: str = "file") -> None:
    if path is not None and not (Path(path).is_file() if kind == "file" else Path(path).is_dir()):
        raise CommandLineError(f"{option} {path}: no such {kind}.")


def _check_trainer(name: str, option: str = "-tr") -> None:
    """Look the trainer up now (ours, nnU-Net's, or under nnUNet_extTrainer) so that a typo fails at once."""
    if name == NNUNET_TRAINER or name in OUR_TRAINERS:
        return
    from monai_continual.nnunet.trainers import find_trainer

    try:
        find_trainer(name)
    except (RuntimeError, AssertionError) as e:
        ours = "" if OUR_TRAINERS[0] in str(e) else f" Ours: {', '.join(OUR_TRAINERS)}."
        raise CommandLineError(f"{option} {name}: {e}{ours}") from None


# ----------------------------------------------------------------------------------------------- commands


def _paths(args: argparse.Namespace) -> None:
    from monai_continual.nnunet.environment import set_nnunet_paths

    set_nnunet_paths(args.raw, args.preprocessed, args.results)


def _export(args: argparse.Namespace) -> int:
    from monai_continual.data.datalist import load_multisite_datalist
    from monai_continual.nnunet.datasets import export_nnunet_datasets

    raw = _require("raw")["raw"]
    _existing(args.datalist, "DATALIST")
    data = load_multisite_datalist(args.datalist)
    chosen = list(args.sites) if args.sites else data.training_sites()
    unknown = [s for s in chosen if s not in data.sites]
    if unknown:
        raise CommandLineError(f"--sites {' '.join(unknown)}: not in {args.datalist}; its sites are "
                               f"{', '.join(data.site_names)}.")
    if args.first_id + len(chosen) - 1 > 999:
        raise CommandLineError(f"--first-id {args.first_id}: {len(chosen)} sites need ids "
                               f"{args.first_id}..{args.first_id + len(chosen) - 1}, but nnU-Net ids end at 999.")
    names = export_nnunet_datasets(data, raw, args.first_id, chosen)
    print(json.dumps(names, indent=2))
    return 0


def _plan(args: argparse.Namespace) -> int:
    raw = _require("raw", "preprocessed")["raw"]
    names = [_raw_dataset(raw, d) for d in args.datasets]
    if args.source is not None and _raw_dataset(raw, args.source, "--source") not in names:
        raise CommandLineError(f"--source {args.source}: not one of the datasets to plan ({' '.join(args.datasets)}).")
    from monai_continual.nnunet.planning import plan_and_preprocess_sites

    files = plan_and_preprocess_sites(args.datasets, args.configurations, args.plans, args.source, args.num_processes)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    raw = _require("raw")["raw"]
    name = _raw_dataset(raw, args.dataset)
    from monai_continual.nnunet.fingerprints import save_fingerprint, site_fingerprint

    fingerprint = site_fingerprint(name, args.samples_per_case, args.num_processes)
    save_fingerprint(fingerprint, args.output)
    print(f"wrote the fingerprint of {name} ({len(fingerprint['spacings'])} cases) to {args.output}")
    return 0


def _plan_from_fingerprints(args: argparse.Namespace) -> int:
    for path in args.fingerprints:
        _existing(path, "FINGERPRINT")
    from monai_continual.nnunet.planning import plan_from_fingerprints

    plans = plan_from_fingerprints(args.fingerprints, args.output, args.planner, args.plans)
    print(f"wrote plans {plans['plans_name']} ({', '.join(plans['configurations'])}) for "
          f"{len(args.fingerprints)} sites to {args.output}; at each site run "
          f"{_command('preprocess', '--plans-file', args.output, 'DATASET')}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    raw = _require("raw", "preprocessed")["raw"]
    name = _raw_dataset(raw, args.dataset)
    _existing(args.plans_file, "--plans-file")
    from monai_continual.nnunet.planning import preprocess_with_plans

    target = preprocess_with_plans(name, args.plans_file, args.configurations, args.num_processes)
    print(f"preprocessed {name} with {args.plans_file}; its plans: {target}")
    return 0


def _train(args: argparse.Namespace) -> int:
    preprocessed = _require("preprocessed", "results")["preprocessed"]
    _planned_dataset(preprocessed, args.dataset, args.p, [args.dataset, *_plans_option(args.p)])
    for item in args.replay or ():
        dataset = item.partition(":")[0]
        _planned_dataset(preprocessed, dataset, args.p, [dataset, *_plans_option(args.p)], option="--replay")
    _existing(args.prior, "--prior")
    _existing(args.init_weights, "--init-weights")
    if args.c and args.init_weights is not None:
        raise CommandLineError("--c resumes from the fold's latest checkpoint; leave out --init-weights.")
    _check_trainer(args.tr)
    from monai_continual.nnunet.launcher import train

    train(args.dataset, args.configuration, args.fold, args.tr, args.p, args.device, args.num_epochs,
          args.iterations_per_epoch, args.val_iterations_per_epoch, args.prior, args.replay or (), args.seed,
          args.init_weights, args.c, not args.skip_validation)
    return 0


def _predict(args: argparse.Namespace) -> int:
    _existing(args.i, "-i", "folder")
    _existing(args.weights, "--weights")
    model = args.model
    if model is None:
        if args.d is None:
            raise CommandLineError("give -m MODEL_FOLDER, or -d DATASET (with -c, -tr and -p).")
        results = _require("results")["results"]
        found = _find_dataset(results, args.d)
        model = found[0] / f"{args.tr}__{args.p}__{args.c}" if len(found) == 1 else None
        if model is None or not model.is_dir():
            raise CommandLineError(
                f"-d {args.d}: no trained model {args.tr}__{args.p}__{args.c} for it in nnUNet_results ({results}); "
                f"train one with {_command('train', args.d, args.c, 'all', '-tr', args.tr)} or give -m MODEL_FOLDER."
            )
    else:
        _existing(model, "-m", "folder")
    from monai_continual.nnunet.launcher import predict

    files = predict(args.i, args.o, model, args.f, args.chk, args.weights, args.mc_samples, not args.no_uncertainty,
                    not args.disable_tta, args.device)
    print(f"wrote {len(files)} segmentations to {args.o}")
    return 0


def _sites(args: argparse.Namespace) -> int:
    paths = _require("raw", "preprocessed", "results")
    names = [_raw_dataset(paths["raw"], d) for d in args.datasets]
    for dataset in args.eval or ():
        _raw_dataset(paths["raw"], dataset, "--eval")
    for name in names:
        _planned_dataset(paths["preprocessed"], name, args.p, [*args.datasets, *_plans_option(args.p)])
    if args.tr is not None:
        _check_trainer(args.tr)
    if args.rounds is not None and args.strategy not in SITE_STRATEGIES_WITH_ROUNDS:
        print(f"{PROG} sites: note: {args.strategy} visits every site once; --rounds is ignored.", file=sys.stderr)
    # --epochs is the epochs of one visit (cyclic transfer) or of one round's local training (FedAvg)
    options = {"cyclic_weight_transfer": {"epochs_per_visit": args.epochs},
               "federated_averaging": {"local_epochs": args.epochs}}.get(args.strategy)
    for flag, key, strategy in (("--proximal-mu", "proximal_mu", "federated_averaging"),
                                ("--ewc-lambda", "ewc_lambda", "ewc"), ("--ewc-gamma", "gamma", "ewc"),
                                ("--evaluate", "evaluate", "cyclic_weight_transfer")):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if args.strategy == strategy:
            options = {**(options or {}), key: value}
        else:
            print(f"{PROG} sites: note: {flag} is {strategy}'s; ignored.", file=sys.stderr)
    from monai_continual.metrics.transfer import backward_transfer
    from monai_continual.nnunet.sites import run_sites

    result = run_sites(args.datasets, args.strategy, args.output, configuration=args.c, fold=args.f, plans=args.p,
                       epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                       val_iterations_per_epoch=args.val_iterations_per_epoch,
                       rounds=_DEFAULT_ROUNDS if args.rounds is None else args.rounds, order=args.order,
                       replay_capacity=args.replay_capacity, dwc_finetune=args.dwc_finetune,
                       eval_datasets=args.eval or (), trainer=args.tr, device=args.device,
                       mirroring=not args.disable_tta, mc_samples=args.mc_samples, seed=args.seed,
                       save_every=args.save_every, options=options)
    print(result.matrix)
    if result.matrix.num_stages > 1:
        print(f"BWT {backward_transfer(result.matrix):+.3f}")
    return 0


def _trainer_path(args: argparse.Namespace) -> int:
    # the folder of monai_continual.nnunet.trainers.ext_trainer_folder(), without importing nnU-Net and torch
    print(Path(__file__).resolve().parent / "ext_trainers")
    return 0


# ----------------------------------------------------------------------------------------------- parser

_TRAINERS_HELP = f"ours: {', '.join(OUR_TRAINERS)}; or nnU-Net's ({NNUNET_TRAINER}, its variants, nnUNet_extTrainer)"

_DESCRIPTION = """\
nnU-Net v2 with Bayesian, VCL and replay trainers, and continual strategies across sites' datasets.

nnU-Net's folders come from the environment variables nnUNet_raw, nnUNet_preprocessed and nnUNet_results, or from
--raw, --preprocessed and --results. A dataset is an id (501) or a name (Dataset501_site_a).
"""

_EPILOG = f"""\
example (one nnU-Net dataset per site, planned once, then cyclic weight transfer across them):
  {PROG} export-sites sites/datalist.json --first-id 501
  {PROG} plan 501 502 503
  {PROG} sites cyclic_weight_transfer 501 502 503 -o runs/cwt --rounds 3 --epochs 2
"""

_SITES_DESCRIPTION = f"""\
Run a strategy over the sites' datasets (exported with export-sites, then planned with the plan command) and
fill the R matrix: every evaluated stage is scored on every site's imagesTs/labelsTs. All state is in the -o
folder: run the same command again to resume after an interruption.

strategies:
  single_weight_transfer  every site once, in order, until its validation pseudo-Dice stops improving for 2 epochs
                          (at most --epochs epochs per site)
  cyclic_weight_transfer  --rounds cycles; each cycle visits every site once, for --epochs epochs
  fine_tuning             every site once for --epochs epochs, from the previous site's weights
  replay                  fine_tuning, plus up to --replay-capacity cases of every earlier site
  ewc                     fine_tuning with online elastic weight consolidation: every site after the first adds
                          --ewc-lambda/2 sum F (w - w_previous)^2, F the running Fisher (decayed by --ewc-gamma)
  vcl                     Bayesian: a deterministic network on the first site, then every site once for --epochs
                          epochs, each site's posterior the next site's prior
  dwc                     Bayesian: a deterministic network and the prior q0 on the first site; then --rounds
                          rounds, each training every other site from the prior and consolidating their
                          posteriors into the next prior; then fine-tuning on the first site (--no-dwc-finetune)
  federated_averaging     --rounds rounds; each trains every site for --epochs epochs from the same weights and
                          averages them, weighted by training-set size (FedProx with --proximal-mu)

trainers of the strategies' stages (-tr replaces one with a subclass of it):
{chr(10).join(f"  {trainer:<22}  {', '.join(s for s, t in SITE_STRATEGY_TRAINERS.items() if t == trainer)}"
              for trainer in dict.fromkeys(SITE_STRATEGY_TRAINERS.values()))}
"""

_ROUNDS_HELP = (
    "cyclic_weight_transfer: cycles (passes over all sites); dwc: consolidation rounds; federated_averaging: "
    f"averaging rounds; ignored by the strategies that visit every site once (single_weight_transfer, fine_tuning, "
    f"replay, vcl) (default: {_DEFAULT_ROUNDS})"
)


def _folder_options(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_argument_group("nnU-Net folders (before or after the command)")
    for key, what in (("raw", "raw datasets"), ("preprocessed", "plans and preprocessed data"),
                      ("results", "trained models")):
        group.add_argument(f"--{key}", metavar="DIR", default=default,
                           help=f"nnU-Net's folder of {what} (default: the environment variable {_ENV[key]})")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (no nnU-Net import: ``--help`` and argument errors return at once).

    Example::

        >>> args = build_parser().parse_args(["sites", "fine_tuning", "501", "502", "-o", "runs/ft"])
        >>> args.strategy, args.datasets
        ('fine_tuning', ['501', '502'])
    """
    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_HelpFormatter)
    _folder_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands (COMMAND --help for its options)")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, formatter_class=_HelpFormatter)
        _folder_options(p, argparse.SUPPRESS)  # also after the command; set only when given there
        return p

    ex = command("export-sites", "write every site of a multi-site datalist as its own nnU-Net raw dataset")
    ex.add_argument(
        "datalist", help="the multi-site datalist JSON file (e.g. from `python -m monai_continual make-sites`)"
    )
    ex.add_argument("--first-id", type=_dataset_id, default=501, metavar="ID",
                    help="dataset id of the first site; the others follow in datalist order")
    ex.add_argument("--sites", nargs="*", metavar="SITE",
                    help="sites to export (default: every training site; held-out sites have test cases only)")
    ex.set_defaults(func=_export)

    pl = command("plan", "plan once, move the plans to every site, preprocess every site")
    pl.add_argument("datasets", nargs="+", type=_dataset, metavar="DATASET", help="the sites' datasets (ids or names)")
    pl.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"], metavar="CONFIGURATION",
                    help="nnU-Net configurations to preprocess (2d, 3d_fullres, 3d_lowres)")
    pl.add_argument("-p", dest="plans", default="nnUNetPlans", metavar="PLANS", help="nnU-Net plans identifier")
    pl.add_argument("--source", type=_dataset, metavar="DATASET", help="dataset to plan on (default: the first)")
    pl.add_argument("-np", dest="num_processes", type=_positive_int, default=1, metavar="N",
                    help="preprocessing processes per dataset")
    pl.set_defaults(func=_plan)

    fp = command("fingerprint", "a site's nnU-Net dataset fingerprint: aggregate statistics only, to share for "
                 "federated planning")
    fp.add_argument("dataset", type=_dataset, help="the site's dataset (id or name) in nnUNet_raw")
    fp.add_argument("-o", "--output", required=True, metavar="FILE", help="fingerprint file to write (JSON)")
    fp.add_argument("--samples-per-case", type=_positive_int, default=10000, metavar="N",
                    help="foreground intensities sampled per case; the same at every site (int(1e8 / total cases) "
                         "reproduces pooled nnU-Net's intensity statistics exactly)")
    fp.add_argument("-np", dest="num_processes", type=_positive_int, default=1, metavar="N",
                    help="processes analyzing cases")
    fp.set_defaults(func=_fingerprint)

    pf = command("plan-from-fingerprints", "merge the sites' fingerprints and plan with nnU-Net's planner as if the "
                 "sites' data were pooled")
    pf.add_argument("fingerprints", nargs="+", metavar="FINGERPRINT",
                    help="the sites' fingerprint files (from the fingerprint command)")
    pf.add_argument("-o", "--output", required=True, metavar="FILE", help="plans file to write (JSON)")
    pf.add_argument("-pl", dest="planner", default="ExperimentPlanner", metavar="PLANNER",
                    help="nnU-Net experiment planner class (e.g. nnUNetPlannerResEncM)")
    pf.add_argument("-p", dest="plans", default="nnUNetPlans", metavar="PLANS", help="plans identifier")
    pf.set_defaults(func=_plan_from_fingerprints)

    pp = command("preprocess", "preprocess a site's own dataset with a plans file it was given")
    pp.add_argument("dataset", type=_dataset, help="the site's dataset (id or name) in nnUNet_raw")
    pp.add_argument("--plans-file", required=True, metavar="FILE",
                    help="the plans (from plan-from-fingerprints); written to nnUNet_preprocessed/<dataset>/ with "
                         "the dataset's own name")
    pp.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"], metavar="CONFIGURATION",
                    help="nnU-Net configurations to preprocess (2d, 3d_fullres, 3d_lowres)")
    pp.add_argument("-np", dest="num_processes", type=_positive_int, default=1, metavar="N",
                    help="preprocessing processes")
    pp.set_defaults(func=_preprocess)

    tr = command("train", "train a trainer on one dataset, like nnUNetv2_train")
    tr.add_argument("dataset", type=_dataset, help="the dataset (id or name), planned with the `plan` command")
    tr.add_argument("configuration", help="nnU-Net configuration (2d, 3d_fullres...)")
    tr.add_argument("fold", type=_fold, help="fold 0-4, or 'all' to train on every training case")
    tr.add_argument("-tr", default=NNUNET_TRAINER, metavar="TRAINER", help=f"trainer class: {_TRAINERS_HELP}")
    tr.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="nnU-Net plans identifier")
    tr.add_argument(
        "-device", type=_device, default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    tr.add_argument("--num-epochs", type=_positive_int, metavar="N", help="epochs (default: the trainer's own)")
    tr.add_argument("--iterations-per-epoch", type=_positive_int, metavar="N",
                    help="training iterations per epoch (default: the trainer's own)")
    tr.add_argument("--val-iterations-per-epoch", type=_positive_int, metavar="N",
                    help="validation iterations per epoch (default: the trainer's own)")
    tr.add_argument("--prior", metavar="FILE", help="posterior file used as the prior (VCL trainers only)")
    tr.add_argument("--replay", nargs="*", type=_replay_item, metavar="DATASET[:K]",
                    help="earlier sites' datasets to replay, K cases of each (all without :K; replay trainers only)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the choice of replayed cases")
    tr.add_argument("--init-weights", metavar="FILE", help="safetensors weights file to start from")
    tr.add_argument("--c", action="store_true", help="continue from the fold's latest checkpoint")
    tr.add_argument("--skip-validation", action="store_true", help="skip nnU-Net's final validation")
    tr.set_defaults(func=_train)

    pr = command("predict", "predict a folder of images (Monte Carlo and uncertainty maps for Bayesian models)")
    pr.add_argument("-i", required=True, metavar="FOLDER", help="folder of images (<case>_0000.nii.gz)")
    pr.add_argument("-o", required=True, metavar="FOLDER", help="output folder")
    pr.add_argument("-m", dest="model", metavar="FOLDER",
                    help="the trainer's output folder (<trainer>__<plans>__<configuration>); or use -d")
    pr.add_argument("-d", type=_dataset, metavar="DATASET",
                    help="dataset whose model in nnUNet_results to use, with -c, -tr and -p (instead of -m)")
    pr.add_argument("-c", default="3d_fullres", metavar="CONFIGURATION", help="configuration of the model (with -d)")
    pr.add_argument("-tr", default=NNUNET_TRAINER, metavar="TRAINER",
                    help=f"trainer of the model (with -d): {_TRAINERS_HELP}")
    pr.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans of the model (with -d)")
    pr.add_argument("-f", nargs="+", type=_fold, default=["all"], metavar="FOLD", help="folds to ensemble")
    pr.add_argument("-chk", dest="chk", default="checkpoint_final.pth", metavar="FILE",
                    help="checkpoint file name in each fold's folder")
    pr.add_argument("--weights", metavar="FILE", help="safetensors weights to predict with instead of the checkpoint's")
    pr.add_argument("--mc-samples", type=_positive_int, metavar="N",
                    help="Monte Carlo passes (default: the trainer's own; 1 for deterministic trainers)")
    pr.add_argument("--no-uncertainty", action="store_true", help="do not write uncertainty maps (Bayesian models)")
    pr.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation")
    pr.add_argument(
        "-device", type=_device, default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    pr.set_defaults(func=_predict)

    st = sub.add_parser("sites", help="run a strategy over the sites' datasets and fill the R matrix (resumable)",
                        description=_SITES_DESCRIPTION, formatter_class=_HelpFormatter)
    _folder_options(st, argparse.SUPPRESS)
    st.add_argument("strategy", choices=list(SITE_STRATEGY_TRAINERS), metavar="STRATEGY",
                    help=f"one of: {', '.join(SITE_STRATEGY_TRAINERS)} (described above)")
    st.add_argument("datasets", nargs="+", type=_dataset, metavar="DATASET",
                    help="the sites' datasets in training order (ids or names)")
    st.add_argument("-o", "--output", required=True, metavar="FOLDER", help="run folder (rerun to resume)")
    st.add_argument("-c", default="3d_fullres", metavar="CONFIGURATION", help="nnU-Net configuration")
    st.add_argument("-f", type=_fold, default="all", metavar="FOLD", help="fold (all: every training case)")
    st.add_argument("-p", default="nnUNetPlans", metavar="PLANS", help="plans identifier (shared by every site)")
    st.add_argument("-tr", default=None, metavar="TRAINER",
                    help="replace the strategy's trainer (listed above) with a subclass of it; "
                         f"ours: {', '.join(OUR_TRAINERS)} (default: the strategy's)")
    st.add_argument("--epochs", type=_positive_int, default=1, metavar="N",
                    help="epochs of every training stage: per visit for cyclic_weight_transfer, per round at each "
                         "site for federated_averaging, the most per site for single_weight_transfer")
    st.add_argument("--iterations-per-epoch", type=_positive_int, metavar="N",
                    help="training iterations per epoch (default: the trainer's own)")
    st.add_argument("--val-iterations-per-epoch", type=_positive_int, metavar="N",
                    help="validation iterations per epoch (default: the trainer's own)")
    st.add_argument("--rounds", "--cycles", dest="rounds", type=_positive_int, default=None, metavar="N",
                    help=_ROUNDS_HELP)
    st.add_argument("--eval", nargs="*", type=_dataset, metavar="DATASET",
                    help="held-out datasets (test cases only) evaluated after every stage, never trained on")
    st.add_argument("--order", default="fixed", choices=_ORDERS,
                    help="site order: as listed, one random permutation, or a new one every cycle "
                         "(not federated_averaging, whose sites train in parallel)")
    st.add_argument("--proximal-mu", type=_nonnegative, default=None, metavar="MU",
                    help="federated_averaging: FedProx's mu, the weight of mu/2 ||w - w_round||^2 added to every "
                         "local step, trained with nnUNetTrainerFedProx (default: 0, FedAvg)")
    st.add_argument("--ewc-lambda", type=_nonnegative, default=None, metavar="LAMBDA",
                    help="ewc: the weight of lambda/2 sum F (w - w_previous)^2 added to every step, trained with "
                         "nnUNetTrainerEWC (default: 1; 0 is fine_tuning)")
    st.add_argument("--ewc-gamma", type=_decay, default=None, metavar="GAMMA",
                    help="ewc: the running Fisher's decay in (0, 1] (default: 1)")
    st.add_argument("--evaluate", default=None, metavar="WHICH",
                    help="cyclic_weight_transfer: score every_visit (default) or the last_cycle's visits only (the "
                         "final model and BWT for a cycles-th of the scoring; no forward transfer)")
    st.add_argument("--replay-capacity", type=_positive_int, default=RECOMMENDED.capacity_per_site, metavar="K",
                    help="replay: cases kept of every earlier site")
    st.add_argument("--no-dwc-finetune", dest="dwc_finetune", action="store_false", default=None,
                    help="dwc: leave out the fine-tuning of the consolidated posterior on the first site")
    st.add_argument("--mc-samples", type=_positive_int, default=1, metavar="N",
                    help="Monte Carlo passes when evaluating Bayesian stages (1: the posterior mean)")
    st.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation in evaluation")
    st.add_argument("--seed", type=int, default=0, help="seeds every stage, random orders and the replayed cases")
    st.add_argument("--save-every", type=_positive_int, default=1, metavar="N",
                    help="a stage's resumable checkpoint every N epochs (a rerun continues a killed stage from it)")
    st.add_argument(
        "-device", type=_device, default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available)"
    )
    st.set_defaults(func=_sites)

    tp = command("trainer-path", "print the folder to export as nnUNet_extTrainer, for nnUNetv2_train -tr <ours>")
    tp.set_defaults(func=_trainer_path)
    return parser


def _raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is this package's code (a check of its input)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("monai_continual.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one line to stderr and exit with status 2 (as argparse's do).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when the command succeeded.

    Example::

        >>> main(["trainer-path"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    where = f"{PROG} {args.command}"
    try:
        _paths(args)
        return int(args.func(args) or 0)
    except (CommandLineError, FileNotFoundError) as e:
        message = e
    except ValueError as e:  # NnUNetDatasetError, DatalistError and our other checks of input
        if not _raised_by_us(e):
            raise
        message = e
    print(f"{where}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)
