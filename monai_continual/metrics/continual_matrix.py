"""The R matrix of continual learning: the test score on every site after every training stage."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_continual.utils.atomic import atomic_write, atomic_write_text

__all__ = ["ContinualMatrix"]


class ContinualMatrix:
    """R[stage, site]: the score on ``site``'s test set after training ``stage`` (Lopez-Paz & Ranzato's R).

    A stage records which site(s) it trained on (``trained_on``): one site for sequential strategies, the same site
    again when a cyclic schedule revisits it, several sites (or none) for stages such as a DWC consolidation or an
    untrained starting point. Rows are stages in the order they ran; columns are the evaluation sites.

    Args:
        sites: the evaluation sites (columns), in display order.
        complete: every training stage of the run has a row. ``False`` when some were not scored (cyclic weight
            transfer's earlier cycles under ``evaluate="last_cycle"``, federated averaging's local rounds): backward
            transfer still holds (each site's last visit and the final stage are rows), forward transfer and
            forgetting, which need each site's first visit, are NaN. Kept in the JSON form, not in the CSV.

    Example::

        >>> R = ContinualMatrix(["A", "B", "C"])
        >>> R.add_stage("A", {"A": 0.80, "B": 0.40, "C": 0.30})
        >>> R.add_stage("B", {"A": 0.70, "B": 0.85, "C": 0.50})
        >>> R.add_stage("C", {"A": 0.65, "B": 0.80, "C": 0.90})
        >>> backward_transfer(R)  # ((0.65 - 0.80) + (0.80 - 0.85)) / 2 = -0.10
    """

    def __init__(self, sites: Sequence[str], complete: bool = True) -> None:
        sites = [str(s) for s in sites]
        if not sites:
            raise ValueError("ContinualMatrix: needs at least one evaluation site.")
        if len(set(sites)) != len(sites):
            raise ValueError(f"ContinualMatrix: duplicate site names in {sites}.")
        self.sites = sites
        self.complete = bool(complete)
        self.stages: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------------------------------------
    # building

    def add_stage(
        self,
        trained_on: str | Sequence[str] | None,
        scores: Mapping[str, float] | None = None,
        label: str | None = None,
    ) -> int:
        """Append a stage and return its index; ``scores`` may be given now or later with :meth:`record`."""
        if trained_on is None:
            trained = []
        elif isinstance(trained_on, str):
            trained = [trained_on]
        else:
            trained = [str(s) for s in trained_on]
        unknown = [s for s in trained if s not in self.sites]
        if unknown:
            raise ValueError(f"ContinualMatrix: stage trains on unknown site(s) {unknown}; sites are {self.sites}.")
        index = len(self.stages)
        default_label = "+".join(trained) if trained else "start"
        self.stages.append({"label": label or f"{index}:{default_label}", "trained_on": trained, "scores": {}})
        for site, score in (scores or {}).items():
            self.record(index, site, score)
        return index

    def record(self, stage: int, site: str, score: float) -> None:
        """Set R[stage, site]."""
        if not 0 <= stage < len(self.stages):
            raise IndexError(f"ContinualMatrix: stage {stage} does not exist ({len(self.stages)} stages).")
        if site not in self.sites:
            raise ValueError(f"ContinualMatrix: unknown site {site!r}; sites are {self.sites}.")
        score = float(score)
        if math.isnan(score):
            raise ValueError(f"ContinualMatrix: score for stage {stage}, site {site!r} is NaN.")
        self.stages[stage]["scores"][site] = score

    # ----------------------------------------------------------------------------------------------------------------
    # reading

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def labels(self) -> list[str]:
        return [s["label"] for s in self.stages]

    def trained_on(self, stage: int) -> list[str]:
        return list(self.stages[stage]["trained_on"])

    def score(self, stage: int, site: str) -> float:
        """R[stage, site]; raises ``KeyError`` naming both when it was never recorded."""
        try:
            return self.stages[stage]["scores"][site]
        except KeyError:
            raise KeyError(
                f"ContinualMatrix: no score for site {site!r} after stage {stage} ({self.labels[stage]!r})."
            ) from None

    def visits(self, site: str) -> list[int]:
        """Indices of the stages that trained on ``site``."""
        return [i for i, s in enumerate(self.stages) if site in s["trained_on"]]

    def trained_sites(self) -> list[str]:
        """Sites trained on at least once, in the order of their first visit."""
        seen: list[str] = []
        for stage in self.stages:
            seen.extend(s for s in stage["trained_on"] if s not in seen)
        return seen

    def as_array(self) -> np.ndarray:
        """``(num_stages, num_sites)`` float array, NaN where no score was recorded."""
        out = np.full((len(self.stages), len(self.sites)), np.nan)
        for i, stage in enumerate(self.stages):
            for j, site in enumerate(self.sites):
                if site in stage["scores"]:
                    out[i, j] = stage["scores"][site]
        return out

    @classmethod
    def from_array(
        cls, values: Sequence[Sequence[float]] | np.ndarray, sites: Sequence[str] | None = None
    ) -> ContinualMatrix:
        """A sequential K x K matrix: row i trained on site i (the layout of the GEM and replay papers)."""
        array = np.asarray(values, dtype=float)
        if array.ndim != 2 or array.shape[0] != array.shape[1]:
            raise ValueError(f"ContinualMatrix.from_array: expected a square matrix, got shape {array.shape}.")
        sites = list(sites) if sites is not None else [f"site{i + 1}" for i in range(array.shape[0])]
        matrix = cls(sites)
        for i, site in enumerate(sites):
            matrix.add_stage(site, {s: array[i, j] for j, s in enumerate(sites) if not np.isnan(array[i, j])})
        return matrix

    # ----------------------------------------------------------------------------------------------------------------
    # files

    def to_dict(self) -> dict[str, Any]:
        data = {"sites": list(self.sites), "stages": [dict(s, scores=dict(s["scores"])) for s in self.stages]}
        return data if self.complete else {**data, "complete": False}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "R matrix") -> ContinualMatrix:
        complete = data.get("complete", True) if isinstance(data, Mapping) else True
        if not isinstance(complete, bool):
            raise ValueError(f"{source}: 'complete' must be true or false, got {complete!r}.")
        try:
            matrix = cls(data["sites"], complete)
            for stage in data["stages"]:
                matrix.add_stage(stage["trained_on"], stage["scores"], stage.get("label"))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: not a ContinualMatrix document ({err!r}).") from err
        return matrix

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the matrix as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> ContinualMatrix:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"R matrix file {str(path)!r} is unreadable: {err}") from err
        return cls.from_dict(data, source=f"R matrix file {str(path)!r}")

    def save_csv(self, path: str | os.PathLike) -> Path:
        """Write ``stage,label,trained_on,<site>...`` rows (``trained_on`` joined by ``+``), atomically."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["stage", "label", "trained_on", *self.sites])
        for i, stage in enumerate(self.stages):
            row = [stage["scores"].get(site, "") for site in self.sites]
            writer.writerow([i, stage["label"], "+".join(stage["trained_on"]), *row])
        return atomic_write_text(path, buffer.getvalue())

    @classmethod
    def load_csv(cls, path: str | os.PathLike) -> ContinualMatrix:
        path = Path(path)
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or rows[0][:3] != ["stage", "label", "trained_on"]:
            raise ValueError(f"R matrix file {str(path)!r}: missing the 'stage,label,trained_on,...' header.")
        sites = rows[0][3:]
        matrix = cls(sites)
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(rows[0]):
                raise ValueError(
                    f"R matrix file {str(path)!r}, line {line}: {len(row)} fields, expected {len(rows[0])}."
                )
            trained = [s for s in row[2].split("+") if s]
            scores = {site: float(v) for site, v in zip(sites, row[3:]) if v != ""}
            matrix.add_stage(trained, scores, row[1])
        return matrix

    def figure(self, title: str | None = None, vmin: float = 0.0, vmax: float = 1.0) -> Any:
        """The heatmap as a matplotlib (pyplot) figure: stages down, evaluation sites across, trained site(s)
        outlined."""
        import matplotlib.pyplot as plt

        return self._draw(plt.figure(), title, vmin, vmax)

    def _draw(self, fig: Any, title: str | None, vmin: float, vmax: float) -> Any:
        import matplotlib
        from matplotlib.patches import Rectangle

        # matplotlib's defaults, whatever style the process has set (nnU-Net's progress plot sets seaborn's)
        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            values = self.as_array()
            fig.set_size_inches(max(3.5, 0.9 * len(self.sites) + 2.5), max(2.5, 0.45 * len(self.stages) + 1.5))
            ax = fig.subplots()
            image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(self.sites)), self.sites, rotation=30, ha="right")
            ax.set_yticks(range(len(self.stages)), self.labels)
            ax.set_xlabel("evaluated on")
            ax.set_ylabel("after stage")
            for i, stage in enumerate(self.stages):
                for j, site in enumerate(self.sites):
                    if not np.isnan(values[i, j]):
                        colour = "white" if values[i, j] < (vmin + vmax) / 2 else "black"
                        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
                    if site in stage["trained_on"]:
                        ax.add_patch(
                            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)
                        )
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(title or "R matrix (red: site trained at that stage)")
        return fig

    def plot(self, path: str | os.PathLike, title: str | None = None, vmin: float = 0.0, vmax: float = 1.0) -> Path:
        """Save :meth:`figure` as a PNG, atomically (without pyplot: the process's backend is left as it is)."""
        from matplotlib.figure import Figure

        fig = self._draw(Figure(), title, vmin, vmax)
        with atomic_write(path) as tmp:  # "tight" fits long stage labels, which tight_layout() cannot
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        return Path(path)

    def __repr__(self) -> str:
        return f"ContinualMatrix(sites={self.sites}, stages={self.labels})"
