"""The ``monai-continual`` command line: make the embedded sites, consolidate posterior files, report an R matrix."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _consolidate(args: argparse.Namespace) -> int:
    from monai_continual.consolidation import consolidate_dwc

    out = Path(args.out)
    if out.is_dir():
        raise SystemExit(f"error: --out {str(out)!r} is a directory; give a file path (e.g. consolidated.safetensors).")
    merged = consolidate_dwc(args.prior, args.sites, fallback=args.fallback, progress=True,
                             max_mean_shift=args.max_mean_shift or None)
    merged.save(out)
    meta = merged.metadata
    print(
        f"consolidated {meta['num_sites']} site posterior(s) ({merged.num_parameters()} weights, "
        f"{meta['fallback_weights']} kept from the prior) -> {out}"
    )
    return 0


def _format_table(matrix) -> str:
    width = max(len(label) for label in matrix.labels) + 2
    lines = [" " * width + "".join(f"{site:>10}" for site in matrix.sites)]
    values = matrix.as_array()
    for label, row in zip(matrix.labels, values):
        cells = "".join(f"{'-':>10}" if v != v else f"{v:>10.3f}" for v in row)
        lines.append(f"{label:<{width}}" + cells)
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from monai_continual.metrics import ContinualMatrix, backward_transfer, forgetting, forward_transfer

    path = Path(args.matrix)
    if path.suffix.lower() == ".csv":
        matrix = ContinualMatrix.load_csv(path)
        twin = path.with_suffix(".json")
        if twin.is_file():  # the CSV does not say whether every training stage is a row
            matrix.complete = ContinualMatrix.load_json(twin).complete
    else:
        matrix = ContinualMatrix.load_json(path)
    print(_format_table(matrix))
    summary = {"bwt": backward_transfer(matrix), "forgetting": forgetting(matrix)}
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
        summary["fwt"] = forward_transfer(matrix, baseline)
    final = matrix.as_array()[-1]
    summary["final_mean"] = float(final[final == final].mean()) if (final == final).any() else float("nan")
    print()
    for key, value in summary.items():
        print(f"{key:>12}: {value:+.4f}")
    plot = Path(args.plot) if args.plot else path.with_suffix(".png")
    matrix.plot(plot, title=path.stem)
    print(f"heatmap written to {plot}")
    return 0


def _make_sites(args: argparse.Namespace) -> int:
    from monai_continual.data import load_multisite_datalist, make_sites

    if args.shape and args.voxel_size:
        raise SystemExit("make-sites: give --shape or --voxel-size, not both.")
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else (40, 48, 40)
    path = make_sites(args.outdir, sites=args.sites, seed=args.seed, shape=shape, lesions=args.lesions,
                      voxel_size=args.voxel_size)
    data = load_multisite_datalist(path)
    for name, site in data.sites.items():
        role = "held out" if site.held_out else "training"
        print(
            f"{name:>12} ({role}): {len(site.training):>2} train / {len(site.validation):>2} val / "
            f"{len(site.test):>2} test  {site.modality or ''}"
        )
    print(f"datalist: {path}\nfigure:   {path.parent / 'sites.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-continual", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    cons = sub.add_parser("consolidate", help="distributed weight consolidation (McClure Eq. 17) over posterior files")
    cons.add_argument("--prior", required=True, help="posterior file of the shared prior the sites trained from")
    cons.add_argument("--out", required=True, help="where to write the consolidated posterior (.safetensors)")
    cons.add_argument("--fallback", choices=("raise", "prior"), default="raise", help="where precision <= 0")
    cons.add_argument("--max-mean-shift", type=float, default=5.0,
                      help="refuse a site posterior whose means moved more than this many prior stds on more than "
                           "0.1%% of its weights (0: no check; default: %(default)s)")
    cons.add_argument("sites", nargs="+", help="site posterior files")
    cons.set_defaults(func=_consolidate)

    mk = sub.add_parser("make-sites", help="write the embedded multi-site brain dataset (NIfTI + datalist.json)")
    mk.add_argument("outdir", help="output directory (reused when it already holds the same generation)")
    mk.add_argument("--sites", nargs="+", help="names of the default sites to generate (default: all)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--shape", help="voxel grid, e.g. 40,48,40 (default)")
    mk.add_argument("--voxel-size", type=float, help="voxels of this size in mm instead of --shape, e.g. 2 (the "
                    "realistic tier: 76x94x80 voxels) or 1 (the paper's resolution)")
    mk.add_argument("--lesions", action="store_true", help="add small hyperintense white-matter lesions (label 4)")
    mk.set_defaults(func=_make_sites)

    rep = sub.add_parser("report", help="print BWT/FWT/forgetting of an R matrix and write its heatmap")
    rep.add_argument("matrix", help="R matrix file (.json or .csv)")
    rep.add_argument("--baseline", help="JSON {site: score} of the untrained or single-site models, for FWT")
    rep.add_argument("--plot", help="heatmap path (default: next to the matrix, .png)")
    rep.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
