"""The plain-text table of a run's summary, printed at the end of the main job and of a federated run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["summary_table"]


def summary_table(summary: Mapping[str, Any]) -> str:
    """One row per strategy: mean Dice per training site, the weighted average, held-out sites and BWT.

    Site names are cut to 10 characters; a site a strategy was not scored on reads ``nan``, a missing BWT is blank.

    Args:
        summary: the summary of a run (the content of ``summary.json``): ``training_sites``, ``held_out_sites`` and
            ``strategies`` (name -> ``sites``, ``weighted_average``, ``held_out``, ``bwt``).

    Returns:
        The table, lines joined by ``"\\n"``, without a final newline.

    Example::

        >>> row = {"sites": {"a": 0.8}, "weighted_average": 0.8, "held_out": {}, "bwt": None}
        >>> print(summary_table({"training_sites": ["a"], "held_out_sites": [], "strategies": {"vcl": row}}))
    """
    training, held = summary["training_sites"], summary["held_out_sites"]
    header = (
        f"{'strategy':<24}"
        + "".join(f"{s[:10]:>11}" for s in training)
        + f"{'weighted':>10}"
        + "".join(f"{s[:10]:>11}" for s in held)
        + f"{'BWT':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, row in summary["strategies"].items():
        cells = "".join(f"{row['sites'].get(s, float('nan')):>11.3f}" for s in training)
        cells += f"{row['weighted_average']:>10.3f}" + "".join(
            f"{row['held_out'].get(s, float('nan')):>11.3f}" for s in held
        )
        cells += f"{row['bwt']:>+8.3f}" if row["bwt"] is not None else f"{'':>8}"
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)
