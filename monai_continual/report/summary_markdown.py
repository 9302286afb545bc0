"""``summary.md``: a run's summary as Markdown, McClure et al.'s Table 2 followed by the checks of the papers'
claims."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["summary_markdown"]


def _number(value: float, sign: str = "") -> str:
    """Three decimals, or three significant digits for a value below 0.01 (mutual information); ``sign="+"`` signs
    it."""
    return f"{value:{sign}.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:{sign}.3g}"


def _goal_lines(goals: list[dict]) -> list[str]:
    """The goals table: with the difference A - B, its 95% interval, d_z and n when every goal has them (summaries
    written before the intervals have not)."""
    full = all("difference" in g for g in goals)
    lines = (["| goal | paper | A | B | mean A | mean B | A - B (no margin) [95% CI] | d | holds? | p | n | test |",
              "|---" * 12 + "|"] if full else
             ["| goal | paper | A | B | mean A | mean B | holds? | p | test |", "|---" * 9 + "|"])
    for g in goals:
        margin = f" (+{g['margin']:.2f})" if g["margin"] else ""
        interval = (f" {_number(g['difference'], '+')} [{_number(g['ci_low'], '+')}, {_number(g['ci_high'], '+')}] | "
                    f"{'n/a' if g['effect_size'] is None else format(g['effect_size'], '.2f')} |" if full else "")
        count = f" {g['n']} |" if full else ""
        means = (f"{_number(g['mean_a'])} | {_number(g['mean_b'])}" if full else
                 f"{g['mean_a']:.3f} | {g['mean_b']:.3f}")
        lines.append(f"| {g['goal']} | {g['paper']} | {g['a']}{margin} | {g['b']} | {means} |{interval} "
                     f"{'yes' if g['holds'] else '**no**'} | {g['p_value']:.3g} |{count} {g['test']} |")
    return lines


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The text of ``summary.md``, written by the main job and by every federated run.

    The strategies table (mean Dice per site, test-size-weighted average, held-out sites, BWT), then each section
    whose entry the summary has: the papers' comparisons, the training budget, the site orders, VCL in site-size
    order, the goals, calibration and uncertainty; then the wall time.

    Args:
        summary: the summary of a run (the content of ``summary.json``): ``training_sites``, ``held_out_sites``,
            ``test_sizes``, ``strategies``, ``comparisons`` and ``seconds``; optional ``budget``, ``orders``,
            ``vcl_size_orders``, ``goals`` and ``calibration`` (the main job's).

    Returns:
        The Markdown text, ending with a newline.

    Example::

        >>> summary = json.loads(Path("outputs/experiment/summary.json").read_text())
        >>> Path("summary.md").write_text(summary_markdown(summary))
    """
    training, held = summary["training_sites"], summary["held_out_sites"]
    sizes = ", ".join(f"{s}: {summary['test_sizes'][s]}" for s in training)
    cols = training + ["weighted average"] + [f"{s} (held out)" for s in held] + ["BWT"]
    lines = [
        "# Multi-site segmentation: strategies compared",
        "",
        "Mean Dice over CSF, GM and WM per test volume, averaged per site; the weighted average weighs training sites "
        f"by test-set size ({sizes}). BWT: backward transfer "
        "(last visit of each site, GEM definition). Bayesian rows use Monte Carlo inference.",
        "",
        "| strategy | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, row in summary["strategies"].items():
        cells = [f"{row['sites'][s]:.3f}" if s in row["sites"] else "" for s in training]
        cells.append(f"{row['weighted_average']:.3f}")
        cells += [f"{row['held_out'][s]:.3f}" if s in row["held_out"] else "" for s in held]
        cells.append(f"{row['bwt']:+.3f}" if row["bwt"] is not None else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary["comparisons"]:
        lines += ["", "## The papers' comparisons on these runs", "",
                  "| claim | paper | A | B | volumes | mean A | mean B | holds? | t-test p | Wilcoxon p |",
                  "|---" * 10 + "|"]
    for c in summary["comparisons"]:
        lines.append(
            f"| {c['claim']} | {c['paper']} | {c['a']} | {c['b']} | {c['volumes']} ({c['n']}) | {c['mean_a']:.3f} | "
            f"{c['mean_b']:.3f} | {'yes' if c['direction_holds'] else 'no'} | {c['t_pvalue']:.3g} | "
            f"{c['wilcoxon_pvalue']:.3g} |"
        )
    lines += _extras(summary) + _calibration(summary)
    lines += ["", f"Wall time: {summary['seconds'] / 60:.1f} min.", "",
              "Heatmaps of every R matrix are in `heatmaps/`; `predictions.png` shows one subject per site with the "
              "Bayesian model's prediction and uncertainty.", ""]
    return "\n".join(lines)


def _extras(summary: Mapping[str, Any]) -> list[str]:
    """The main job's sections: training budget, site orders, VCL in site-size order, goals (each only if present)."""
    lines: list[str] = []
    if summary.get("budget"):
        lines += ["", "## Training budget and convergence", "",
                  "Every strategy trains each site's data for the same number of epochs per stage (DWC's first site "
                  "also trains its MAP network and, with fine-tuning, a third stage; single weight transfer stops "
                  "early at a validation plateau). A stage has plateaued when the mean training loss of its last 3 "
                  "epochs fell by less than 5% against the 3 before (McClure et al.: trained until the loss "
                  "oscillated around a stable value); short stages (cyclic visits, federated rounds) are judged per "
                  "site over their concatenation.", "",
                  "| run | epochs per training site | plateaued / judged |", "|---|---|---|"]
        for key, b in summary["budget"].items():
            lines.append(f"| {key} | {b['epochs_per_site']:.1f} | {b['plateaued']} / {b['judged']}"
                         + (f" ({b['unjudged']} too short to judge)" if b["unjudged"] else "") + " |")
    if summary.get("orders"):
        lines += ["", "## Site order", "",
                  "Each order-dependent strategy ran in the datalist's order and in seeded random permutations; "
                  "mean and standard deviation over the orders.", "",
                  "| strategy | orders | weighted Dice | BWT |", "|---|---|---|---|"]
        for name, o in summary["orders"].items():
            orders = "; ".join(" > ".join(order) for order in o["orders"])
            lines.append(f"| {name} | {orders} | {o['weighted_mean']:.3f} ± {o['weighted_std']:.3f} | "
                         f"{o['bwt_mean']:+.3f} ± {o['bwt_std']:.3f} |")
    sized = summary.get("vcl_size_orders") or {}
    if sized:
        lines += ["", "## VCL in increasing and decreasing site size", "", "| order | sites | weighted Dice | BWT |",
                  "|---|---|---|---|"]
        for name, o in sized.items():
            lines.append(f"| {name} | {' > '.join(o['order'])} | {o['weighted']:.3f} | {o['bwt']:+.3f} |")
        if {"increasing", "decreasing"} <= set(sized):
            diff = sized["increasing"]["weighted"] - sized["decreasing"]["weighted"]
            lines += ["", f"Increasing minus decreasing: {diff:+.3f} weighted Dice."]
    if summary.get("goals"):
        lines += ["", "## Goals", "",
                  "The papers' directions on this benchmark; p: the stated test. A direction that does not hold "
                  "is reported as such.", "",
                  *_goal_lines(summary["goals"])]
    return lines


def _cell(value: float | None, spec: str = ".3f") -> str:
    return "" if value is None else format(value, spec)


def _calibration(summary: Mapping[str, Any]) -> list[str]:
    """The calibration and uncertainty section (only if the summary has ``calibration``)."""
    rows = summary.get("calibration") or {}
    if not rows:
        return []
    training, held = summary["training_sites"], summary["held_out_sites"]
    groups = ("training", "held_out")
    cols = training + ["training"] + [f"{s} (held out)" for s in held] + ["held out"]
    lines = ["", "## Calibration and uncertainty", "",
             "Expected calibration error (ECE) of the voxel probabilities: each class but the background one-vs-rest "
             "in 20 equal-width bins, averaged over the classes (MONAI's `CalibrationErrorMetric`), mean over test "
             "volumes; deterministic rows: the softmax, Bayesian rows: the mean of the Monte Carlo samples. "
             "`reliability.png` is the reliability diagram of the training and of the held-out sites' volumes.", "",
             "| ECE | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        pooled = {g: row[g] or {} for g in groups}
        cells = [_cell(row["sites"].get(s, {}).get("ece")) for s in training] + [_cell(pooled["training"].get("ece"))]
        cells += [_cell(row["sites"].get(s, {}).get("ece")) for s in held] + [_cell(pooled["held_out"].get("ece"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Uncertainty as a detector of segmentation errors (voxels where the argmax differs from the label): "
              "AUROC of the predictive entropy (H, every row) and of the mutual information of the Monte Carlo samples "
              "(MI, Bayesian rows) over each volume's voxels, 0.5 being chance; means (nats) and AUROCs averaged over "
              "the training sites' and the held-out sites' volumes.", "",
              "| strategy | mean H training | mean H held out | H AUROC training | H AUROC held out | mean MI training "
              "| mean MI held out | MI AUROC training | MI AUROC held out |", "|---" * 9 + "|"]
    for name, row in rows.items():
        cells = [_cell((row[g] or {}).get(key), ".3g" if key.startswith("mean") else ".3f")
                 for key in ("mean_entropy", "auroc_entropy", "mean_mi", "auroc_mi") for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
