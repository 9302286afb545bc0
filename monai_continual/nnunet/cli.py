"""``python -m monai_continual.nnunet``: nnU-Net with Bayesian, VCL and replay trainers, and strategies across sites.

Commands:
  export-sites   write a multi-site datalist as one nnU-Net raw dataset per site
  plan           plan once, move the plans to every site's dataset, preprocess each
  train          train any trainer (ours or nnU-Net's), like nnUNetv2_train, where nnU-Net's lookup cannot
  predict        predict a folder of images; Monte Carlo and uncertainty maps for Bayesian trainers
  sites          run a strategy over the sites' datasets and fill the R matrix (resumable)
  trainer-path   print the folder to export as nnUNet_extTrainer for nnUNetv2_train

nnU-Net's folders come from nnUNet_raw / nnUNet_preprocessed / nnUNet_results or --raw / --preprocessed / --results.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence


def _paths(args: argparse.Namespace) -> None:
    from monai_continual.nnunet.environment import set_nnunet_paths

    set_nnunet_paths(args.raw, args.preprocessed, args.results)


def _export(args: argparse.Namespace) -> int:
    from monai_continual.nnunet.datasets import export_nnunet_datasets
    from monai_continual.nnunet.environment import nnunet_paths

    names = export_nnunet_datasets(args.datalist, nnunet_paths(("raw",))["raw"], args.first_id, args.sites or None)
    print(json.dumps(names, indent=2))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from monai_continual.nnunet.planning import plan_and_preprocess_sites

    files = plan_and_preprocess_sites(args.datasets, args.configurations, args.plans, args.source, args.num_processes)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from monai_continual.nnunet.launcher import train

    train(args.dataset, args.configuration, args.fold, args.tr, args.p, args.device, args.num_epochs,
          args.iterations_per_epoch, args.val_iterations_per_epoch, args.prior, args.replay or (), args.seed,
          args.init_weights, args.c, not args.skip_validation)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from monai_continual.nnunet.launcher import dataset_name, predict
    from monai_continual.nnunet.environment import nnunet_paths

    model = args.model
    if model is None:
        if args.d is None:
            raise SystemExit("predict: give -m MODEL_FOLDER, or -d DATASET with -c and -tr.")
        model = nnunet_paths(("results",))["results"] / dataset_name(args.d) / f"{args.tr}__{args.p}__{args.c}"
    files = predict(args.i, args.o, model, args.f, args.chk, args.weights, args.mc_samples, not args.no_uncertainty,
                    not args.disable_tta, args.device)
    print(f"wrote {len(files)} segmentations to {args.o}")
    return 0


def _sites(args: argparse.Namespace) -> int:
    from monai_continual.metrics.transfer import backward_transfer
    from monai_continual.nnunet.sites import run_sites

    result = run_sites(args.datasets, args.strategy, args.output, configuration=args.c, fold=args.f, plans=args.p,
                       epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                       val_iterations_per_epoch=args.val_iterations_per_epoch, rounds=args.rounds,
                       order=args.order, replay_capacity=args.replay_capacity, dwc_finetune=args.dwc_finetune, eval_datasets=args.eval or (), trainer=args.tr,
                       device=args.device, mirroring=not args.disable_tta, mc_samples=args.mc_samples, seed=args.seed)
    print(result.matrix)
    if result.matrix.num_stages > 1:
        print(f"BWT {backward_transfer(result.matrix):+.3f}")
    return 0


def _trainer_path(args: argparse.Namespace) -> int:
    from monai_continual.nnunet.trainers import ext_trainer_folder

    print(ext_trainer_folder())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m monai_continual.nnunet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", help="nnUNet_raw (default: the environment variable)")
    parser.add_argument("--preprocessed", help="nnUNet_preprocessed")
    parser.add_argument("--results", help="nnUNet_results")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export-sites", help="one nnU-Net raw dataset per site of a multi-site datalist")
    ex.add_argument("datalist")
    ex.add_argument("--first-id", type=int, default=501)
    ex.add_argument("--sites", nargs="*")
    ex.set_defaults(func=_export)

    pl = sub.add_parser("plan", help="plan once, move the plans to every site, preprocess every site")
    pl.add_argument("datasets", nargs="+")
    pl.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"])
    pl.add_argument("-p", dest="plans", default="nnUNetPlans")
    pl.add_argument("--source", help="dataset to plan on (default: the first)")
    pl.add_argument("-np", dest="num_processes", type=int, default=1)
    pl.set_defaults(func=_plan)

    tr = sub.add_parser("train", help="train a trainer, like nnUNetv2_train")
    tr.add_argument("dataset")
    tr.add_argument("configuration")
    tr.add_argument("fold")
    tr.add_argument("-tr", default="nnUNetTrainer")
    tr.add_argument("-p", default="nnUNetPlans")
    tr.add_argument("-device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    tr.add_argument("--num-epochs", type=int)
    tr.add_argument("--iterations-per-epoch", type=int)
    tr.add_argument("--val-iterations-per-epoch", type=int)
    tr.add_argument("--prior", help="posterior file used as the prior (VCL trainers)")
    tr.add_argument("--replay", nargs="*", help="earlier sites' datasets to replay, DATASET[:K] (replay trainers)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the choice of replayed cases")
    tr.add_argument("--init-weights", help="safetensors weights file to start from")
    tr.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument("--skip-validation", action="store_true", help="skip nnU-Net's final validation")
    tr.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="predict a folder of images (Monte Carlo + uncertainty for Bayesian models)")
    pr.add_argument("-i", required=True, help="folder of images (<case>_0000.nii.gz)")
    pr.add_argument("-o", required=True, help="output folder")
    pr.add_argument("-m", dest="model", help="the trainer's output folder")
    pr.add_argument("-d", help="dataset (with -c, -tr, -p instead of -m)")
    pr.add_argument("-c", default="3d_fullres")
    pr.add_argument("-tr", default="nnUNetTrainer")
    pr.add_argument("-p", default="nnUNetPlans")
    pr.add_argument("-f", nargs="+", default=["all"])
    pr.add_argument("-chk", dest="chk", default="checkpoint_final.pth")
    pr.add_argument("--weights", help="safetensors weights to predict with instead of the checkpoint's")
    pr.add_argument("--mc-samples", type=int, help="Monte Carlo passes (default: the trainer's)")
    pr.add_argument("--no-uncertainty", action="store_true")
    pr.add_argument("--disable-tta", action="store_true", help="no mirroring")
    pr.add_argument("-device", default=None)
    pr.set_defaults(func=_predict)

    st = sub.add_parser("sites", help="run a strategy over the sites' datasets (resumable)")
    st.add_argument("strategy", help="single_weight_transfer, cyclic_weight_transfer, fine_tuning, replay, vcl, dwc, federated_averaging")
    st.add_argument("datasets", nargs="+", help="the sites' datasets in training order")
    st.add_argument("-o", "--output", required=True, help="run directory")
    st.add_argument("-c", default="3d_fullres")
    st.add_argument("-f", default="all")
    st.add_argument("-p", default="nnUNetPlans")
    st.add_argument("-tr", default=None, help="override the strategy's trainer")
    st.add_argument("--epochs", type=int, default=1, help="epochs per stage (per visit for cyclic transfer)")
    st.add_argument("--iterations-per-epoch", type=int)
    st.add_argument("--val-iterations-per-epoch", type=int)
    st.add_argument("--rounds", type=int, default=2)
    st.add_argument("--eval", nargs="*", help="held-out datasets evaluated after every stage, never trained on")
    st.add_argument("--order", default="fixed", choices=("fixed", "random", "random_per_round"),
                    help="site order: as listed, one random permutation, or a new one every round")
    st.add_argument("--replay-capacity", type=int, default=5)
    st.add_argument("--no-dwc-finetune", dest="dwc_finetune", action="store_false", default=None,
                    help="leave out DWC's fine-tuning of the consolidated posterior on the first site")
    st.add_argument("--mc-samples", type=int, default=1)
    st.add_argument("--disable-tta", action="store_true")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("-device", default=None)
    st.set_defaults(func=_sites)

    tp = sub.add_parser("trainer-path", help="the folder for nnUNet_extTrainer")
    tp.set_defaults(func=_trainer_path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _paths(args)
    return int(args.func(args) or 0)
