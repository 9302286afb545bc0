"""A site scores the models it receives and publishes on its own evaluation data, and records only that cell."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai.utils import IgniteInfo, min_version, optional_import

from monai_continual.metrics.continual_matrix import ContinualMatrix
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.names import check_site_name
from monai_continual.utils.stage_files import parse_stage_file_name, stage_file_name

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["SiteScoreRecorder", "assemble_site_scores"]



class SiteScoreRecorder:
    """Runs the site's own evaluator on the model it received (training start) and on the model it published
    (training end), and writes each score as one R-matrix cell, ``<exchange_dir>/scores/stage####_<site>.json``.

    This is how a site that runs alone, with only its own data, takes part in the R matrix: nobody reads another
    site's data; each site records R[received stage, site] (forward transfer) and R[its own stage, site]; the matrix
    is assembled from the records (:func:`assemble_site_scores`). Only the score, the metric's name and the stage
    and site names are written.

    Args:
        evaluator: the site's evaluator (a bundle's ``validate#evaluator``); its key metric is the score.
        exchange_dir: the directory the sites share (where the transfer handler's store lives too).
        site: this site's name (``^[A-Za-z0-9_-]+$``, it becomes part of a file name).
        transfer: the handler that loads and publishes the model, with ``loaded`` and ``published`` entries that
            have ``stage`` and ``site`` (:class:`~monai_continual.handlers.WeightTransferHandler`,
            :class:`~monai_continual.handlers.BayesianSiteHandler`); attach it first.
        metric: the evaluator metric to record (default: its key metric).

    Example::

        >>> transfer = WeightTransferHandler("/exchange/weights", "hospital_a", net)
        >>> for handler in (transfer, SiteScoreRecorder(evaluator, "/exchange", "hospital_a", transfer)):
        ...     handler.attach(trainer)
    """

    def __init__(self, evaluator: Engine, exchange_dir: str | os.PathLike, site: str, transfer: Any,
                 metric: str | None = None) -> None:
        self.evaluator = evaluator
        self.directory = Path(exchange_dir) / "scores"
        self.site = check_site_name(site, "SiteScoreRecorder: site")
        self.transfer = transfer
        self.metric = metric

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.score_received)
        engine.add_event_handler(Events.COMPLETED, self.score_published)

    def _score(self) -> tuple[str, float]:
        self.evaluator.run()
        name = self.metric or getattr(self.evaluator.state, "key_metric_name", None)
        if name is None or name not in self.evaluator.state.metrics:
            raise KeyError(f"SiteScoreRecorder: site {self.site!r}: the evaluator has no metric {name!r}; it has "
                           f"{sorted(self.evaluator.state.metrics)}.")
        return name, float(self.evaluator.state.metrics[name])

    def _write(self, entry: Any, when: str) -> Path:
        name, score = self._score()
        site = check_site_name(self.site, "SiteScoreRecorder: site")  # here too: the name becomes a file name
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / stage_file_name(entry.stage, ".json", site=site)
        record = {"stage": int(entry.stage), "trained_on": str(entry.site), "site": self.site, "metric": name,
                  "score": score, "when": when, "model_sha256": getattr(entry, "sha256", None)}
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return path

    def score_received(self, engine: Engine | None = None) -> Path | None:
        """R[stage the site received, site]; nothing when the site starts the chain."""
        return None if self.transfer.loaded is None else self._write(self.transfer.loaded, "received")

    def score_published(self, engine: Engine | None = None) -> Path:
        """R[stage the site published, site]."""
        if self.transfer.published is None:
            raise RuntimeError(f"SiteScoreRecorder: site {self.site!r}: nothing was published; attach the transfer "
                               "handler before this one.")
        return self._write(self.transfer.published, "published")


def assemble_site_scores(exchange_dir: str | os.PathLike, *more: str | os.PathLike) -> ContinualMatrix:
    """The R matrix from the sites' records: one row per published stage, the cells the sites recorded.

    Args:
        exchange_dir: the directory whose ``scores/`` holds the records (the shared exchange directory).
        more: further such directories (e.g. each federated site's own, where the records stay at their site).

    Example::

        >>> matrix = assemble_site_scores("/exchange"); matrix.plot("R.png")
    """
    directories = [Path(d) / "scores" for d in (exchange_dir, *more)]
    directory = directories[0] if len(directories) == 1 else [str(d) for d in directories]
    records = []
    for path in sorted(p for d in directories for p in d.glob("stage*_*.json")):
        parsed = parse_stage_file_name(path.name, ".json")
        if parsed is None or parsed[1] is None:
            continue
        try:
            record = json.loads(path.read_text())
            records.append(
                (int(record["stage"]), str(record["trained_on"]), str(record["site"]), float(record["score"]))
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"score record {str(path)!r} is not a valid record: {err}") from err
    if not records:
        raise FileNotFoundError(f"no score records in {str(directory)!r}.")
    sites = list(dict.fromkeys(site for _, _, site, _ in sorted(records)))
    matrix = ContinualMatrix(sites)
    rows: dict[int, int] = {}
    for stage, trained_on, site, score in sorted(records):
        if stage not in rows:
            rows[stage] = matrix.add_stage(trained_on, None, f"{stage}:{trained_on}")
        matrix.record(rows[stage], site, score)
    return matrix
