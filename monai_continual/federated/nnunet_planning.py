"""Federated nnU-Net planning: fingerprints up, plans down, before a run's first stage.

Weights move between nnU-Net sites only when every site builds the same network from the same plans. With
``planning="fingerprints"`` the server asks every training site for its dataset fingerprint
(:func:`~monai_continual.nnunet.fingerprints.site_fingerprint`: aggregate statistics of its own raw cases, no case
names or paths), checks each on arrival (keys, types, finite numbers, sizes), merges them and runs nnU-Net's planner
(:func:`~monai_continual.nnunet.planning.plan_from_fingerprints`), then sends the plans (JSON) to every site, which
checks them as data (nnU-Net's keys; only nnU-Net's architectures and ``torch.nn`` layers may be named, the
identifier must be the run's) and preprocesses its own dataset with them
(:func:`~monai_continual.nnunet.planning.preprocess_with_plans`; a held-out site, with test cases only, keeps them to
be scored with). Every site answers with the hash of the plans it adopted; the run goes on only when each equals the
server's. No raw image, case name or path crosses a boundary.

A rerun is idempotent: the fingerprints are deterministic (nnU-Net seeds its intensity samples per case), so the
server plans the same again and a site already preprocessed with those plans skips the work. A site whose dataset
already has *other* plans under the run's identifier refuses them (the run stops with the site's reason): another
run, or a local ``plan``, may still need them; plan under another identifier (the ``plans`` setting) or remove them.

The server keeps what it received and made: ``<run_dir>/planning/<site>.json`` (the fingerprints) and
``<run_dir>/planning/plans.json``.

Example::

    >>> FederatedRun.nnunet(["Dataset501_site_a", "Dataset502_site_b"], "cyclic_weight_transfer", "out",
    ...                     planning="fingerprints").run()
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import StrEnum

from monai_continual.federated.payload import PayloadError, check_payload
from monai_continual.utils.atomic import atomic_write_text
from monai_continual.utils.names import check_site_name

__all__ = ["Planning", "FINGERPRINT_TASK", "PLANS_TASK", "PLANNING_DIR", "plan_over_sites", "PlanningSite"]

logger = logging.getLogger(__name__)

#: the task that asks a site for its fingerprint, and the one that sends it the plans
FINGERPRINT_TASK = "fingerprint"
PLANS_TASK = "plans"
#: the server's folder of received fingerprints and the plans made from them, inside the run directory
PLANNING_DIR = "planning"
#: the largest fingerprint a site may send, in characters of JSON (what a fingerprint file may hold)
_MAX_FINGERPRINT_CHARS = 64 * 2**20


class Planning(StrEnum):
    """How an nnU-Net run's sites come to share plans: ``shared`` (planned and preprocessed before the run, e.g. by
    ``plan`` on one machine) or ``fingerprints`` (planned by the server from the sites' fingerprints at the start)."""

    SHARED = "shared"
    FINGERPRINTS = "fingerprints"


Send = Callable[[str, str, dict, dict], "tuple[dict, dict, dict] | None"]


def plan_over_sites(send: Send, sites: Sequence[str], run_dir: str | Path, settings: Mapping[str, Any],
                    held_out: Sequence[str] = (), samples_per_case: int | None = None,
                    log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """The server's planning phase: fingerprints from every site, plans from their merge, every site preprocessed.

    Args:
        send: ``send(task, site, params, meta) -> (params, meta, metrics) | None`` (the controller's).
        sites: the training sites (nnU-Net datasets), in the order their cases are pooled.
        held_out: sites with test cases only: they send no fingerprint and take the plans to be scored with.
        run_dir: the server's run directory.
        settings: the run's nnU-Net settings (``plans``: the identifier the plans are made under).
        samples_per_case: foreground intensities every site samples per case (default: nnU-Net's per-case default).
        log: where a line goes when the sites hold the plans.

    Returns:
        the plans every site adopted.

    Raises:
        PayloadError: a fingerprint that fails its checks, or a site that reports other plans than the server's.
        RuntimeError: a site that did not answer or refused (its reason); both are written to ``error.txt`` first.

    Example::

        >>> plans = plan_over_sites(controller._send, ["Dataset501_site_a", "Dataset502_site_b"], "out/cwt", {})
    """
    from monai_continual.nnunet.fingerprints import DEFAULT_SAMPLES_PER_CASE
    from monai_continual.nnunet.planning import plan_from_fingerprints, plans_sha256
    from monai_continual.nnunet.settings import NnUNetSiteSettings

    folder = Path(run_dir) / PLANNING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    samples = int(samples_per_case or DEFAULT_SAMPLES_PER_CASE)
    try:
        files = [_receive_fingerprint(send, site, samples, folder) for site in sites]
        plans = plan_from_fingerprints(files, folder / "plans.json", plans=NnUNetSiteSettings.from_mapping(
            settings).plans)
        expected = plans_sha256(plans)
        for site in [*sites, *held_out]:
            reply = _answer(send, PLANS_TASK, site, {"task": PLANS_TASK, "plans": plans})
            if reply.get("plans_sha256") != expected:
                raise PayloadError(f"site {site!r} reports plans {reply.get('plans_sha256')!r}, not the server's "
                                   f"{expected}; its dataset was not preprocessed with them.")
    except Exception as err:  # the next submission (and FederatedRun.summary) reads why
        atomic_write_text(Path(run_dir) / "error.txt", f"{type(err).__name__}: {err}\n")
        raise
    if log:
        log(f"planning: {len(sites)} sites preprocessed with plans {expected[:12]} made from their fingerprints"
            + (f", {len(held_out)} held-out sites hold them" if held_out else ""))
    return plans


def _answer(send: Send, task: str, site: str, meta: dict) -> dict:
    reply = send(task, site, {}, meta)
    if reply is None:
        raise RuntimeError(f"site {site!r} did not answer the {task} task; the run stops before its first stage.")
    return reply[1]


def _receive_fingerprint(send: Send, site: str, samples: int, folder: Path) -> Path:
    """Ask ``site`` for its fingerprint, check it in memory, keep it as ``<folder>/<site>.json``."""
    from monai_continual.nnunet.fingerprints import FingerprintError, check_fingerprint, save_fingerprint

    document = _answer(send, FINGERPRINT_TASK, site, {"task": FINGERPRINT_TASK, "samples_per_case": samples}).get(
        "fingerprint")
    where = f"site {site!r}: its fingerprint"
    if len(json.dumps(document, default=str)) > _MAX_FINGERPRINT_CHARS:
        raise PayloadError(f"{where} is larger than {_MAX_FINGERPRINT_CHARS // 2**20} MiB of JSON.")
    try:
        fingerprint = check_fingerprint(document, where)
    except FingerprintError as err:
        raise PayloadError(str(err)) from None
    if fingerprint["samples_per_case"] != samples:
        raise PayloadError(f"{where} samples {fingerprint['samples_per_case']} intensities per case; the server "
                           f"asked for {samples}.")
    return save_fingerprint(fingerprint, folder / f"{check_site_name(site, 'nnU-Net site')}.json")


class PlanningSite:
    """An nnU-Net site's answers to the planning tasks; every other task goes to its
    :class:`~monai_continual.federated.site_worker.SiteWorker`.

    Args:
        worker: the site's worker (``handle(task, meta, params)``).
        dataset: this site's nnU-Net dataset (its NVFlare name).
        settings: the run's :class:`~monai_continual.nnunet.settings.NnUNetSiteSettings` (``plans``: the identifier
            received plans must carry; ``configuration``: what is preprocessed).
        workdir: this site's working directory (the received plans are kept there before they are adopted).

    Example::

        >>> serve(PlanningSite(SiteWorker(make_executor, site, workdir), site, settings, workdir))
    """

    def __init__(self, worker: Any, dataset: str, settings: Any, workdir: str | Path) -> None:
        self.worker = worker
        self.dataset = check_site_name(dataset, "nnU-Net dataset")
        self.settings = settings
        self.workdir = Path(workdir)

    def handle(self, task: str, meta: Mapping[str, Any], params: Mapping[str, Any] | None) -> tuple[dict, dict, dict]:
        from monai_continual.nnunet.fingerprints import FingerprintError
        from monai_continual.nnunet.planning import PlansFileError

        if task not in (FINGERPRINT_TASK, PLANS_TASK):
            return self.worker.handle(task, meta, params)
        try:
            check_payload(meta, params, None)
            answer = self.fingerprint(meta) if task == FINGERPRINT_TASK else self.adopt(meta)
        except (PayloadError, PlansFileError, FingerprintError, ValueError) as err:
            logger.error(f"site {self.dataset!r}: {err}")  # the whole message, paths included, stays here
            # the server learns why, without this site's paths
            return {}, {"error": f"site {self.dataset!r}: {_without_paths(str(err))}"}, {}
        return {}, answer, {}

    def fingerprint(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """This site's fingerprint (aggregates of its own cases), sampled as the server asked."""
        from monai_continual.nnunet.fingerprints import site_fingerprint

        samples = meta.get("samples_per_case")
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise PayloadError(f"the fingerprint task must name samples_per_case, a whole number, got {samples!r}.")
        return {"fingerprint": site_fingerprint(self.dataset, samples_per_case=samples)}

    def adopt(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Check the received plans as data, preprocess this site's dataset with them; their hash."""
        from monai_continual.nnunet.planning import PlansFileError, check_plans, plans_sha256, preprocess_with_plans

        plans = meta.get("plans")
        if not isinstance(plans, Mapping):
            raise PayloadError("the plans task carries no plans.")
        if plans.get("plans_name") != self.settings.plans:
            raise PlansFileError(f"the plans are named {plans.get('plans_name')!r}, but this run's plans are "
                                 f"{self.settings.plans!r}.")
        check_plans(plans, where="the received plans")  # in memory, before anything of them is stored
        received = self.workdir / PLANNING_DIR / "received_plans.json"  # the name is this site's, not the server's
        received.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(received, json.dumps(plans, indent=1))
        try:
            adopted = preprocess_with_plans(self.dataset, received, [self.settings.configuration], replace=False)
        except PlansFileError as err:
            raise PlansFileError(str(err).replace(f"plans file {received}", "the received plans")) from None
        return {"plans_sha256": plans_sha256(json.loads(adopted.read_text()))}


def _without_paths(message: str) -> str:
    """A refusal for the server: path separators replaced (a site's paths stay at the site)."""
    return message.replace("/", "|").replace("\\", "|")
