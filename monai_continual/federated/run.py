"""A federated run from a bundle config: build the NVFlare job, run it in the simulator or POC mode, or export it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.utils import StrEnum, look_up_option

from monai_continual.data import load_multisite_datalist
from monai_continual.federated.boundary import BoundaryPolicy
from monai_continual.federated.controller import StrategyController, refuse_data_transfer
from monai_continual.federated.network_spec import NETWORK_DEF_KEY, launcher_network_def
from monai_continual.federated.overrides import MONAI_SITE_KEYS, NNUNET_SITE_KEYS, check_overrides
from monai_continual.federated.result_filters import check_result_filters, result_filters
from monai_continual.report import summary_table
from monai_continual.strategies import make_options, strategy_of
from monai_continual.utils.choices import look_up_choice
from monai_continual.utils.flags import as_flag
from monai_continual.utils.names import check_site_name

__all__ = ["FederatedRun", "Engine", "ENGINES"]


class Engine(StrEnum):
    """Where a federated run's parties run: NVFlare's ``simulator`` (one machine) or ``poc`` (separate processes
    with mutual TLS, ``nvflare poc``)."""

    SIMULATOR = "simulator"
    POC = "poc"


ENGINES = tuple(e.value for e in Engine)
CLIENT_SCRIPT = Path(__file__).with_name("client.py")
NNUNET_CLIENT_SCRIPT = Path(__file__).with_name("nnunet_client.py")
BUNDLE_CLIENT_SCRIPT = Path(__file__).with_name("bundle_client.py")
#: the nnU-Net folders a site may be given on this machine (``FederatedRun.nnunet(site_folders=...)``)
_FOLDERS = ("raw", "preprocessed", "results")


class FederatedRun:
    """One strategy over the sites of a multi-site datalist as NVFlare clients.

    Args:
        config_file: the bundle config (``network``, ``site_runner``).
        strategy: a strategy name; its ``options`` are validated here, before any process starts.
        datalist: the multi-site datalist; every site becomes a client named after it.
        output_dir: the server's run directory (state, R matrix, summary) and the sites' working directories
            (``sites/<name>``, standing in for each hospital's own disk in the simulator and POC mode).
        overrides: config overrides every party applies (keys of
            :data:`~monai_continual.federated.overrides.MONAI_SITE_KEYS`, plain JSON values: never expressions);
            ``network_def``, the network the sites build, is its class and arguments as data
            (:func:`~monai_continual.federated.overrides.check_network_def`; its special keys are dropped here).
        engine: ``"simulator"`` (one machine, NVFlare's simulator) or ``"poc"`` (separate processes with mutual TLS:
            ``nvflare poc prepare/start``, ``nvflare job submit``).
        export: a directory to write the job folder to (for ``nvflare job submit`` in production) instead of running.
        epochs, seed: default stage length and the schedule's seed.
        min_clients: fewest answers a consolidation goes on with (default: every training site).
        task_timeout: seconds a site may take for one task before it counts as dead (0: forever).
        allow_data_to_leave_sites: required for strategies that move patient data (replay).
        payload_log: a JSON-lines audit of every payload the server received (keys and metrics only).
        boundary: the bounds on a site's influence (:class:`~monai_continual.federated.boundary.BoundaryPolicy`'s
            fields): FedAvg weighting, update-norm bound, robust aggregation, posterior screening.
        accept_margin: every site checks a received model on its own validation cases before training from it
            (:class:`~monai_continual.federated.SiteWorker`'s ``accept_margin``); ``None``: off.
        task_request_interval: seconds a site waits before asking the server for its next task (NVFlare's server
            setting ``task_request_interval``; ``None``: NVFlare's default, 2 s). Every task of a sequential strategy
            waits for it once; a shorter interval suits a run on one machine (simulator, POC).

    Example::

        >>> FederatedRun("configs/federated.json", "cyclic_weight_transfer", "sites/datalist.json", "out/cwt",
        ...              options={"cycles": 2}).run()
    """

    def __init__(self, config_file: str | os.PathLike, strategy: str, datalist: str | os.PathLike,
                 output_dir: str | os.PathLike, options: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, engine: str = "simulator", export: str = "",
                 epochs: int = 1, seed: int = 0, min_clients: int | None = None, task_timeout: int = 0,
                 allow_data_to_leave_sites: bool = False, payload_log: str = "",
                 boundary: Mapping[str, Any] | None = None, accept_margin: float | None = None,
                 task_request_interval: float | None = None) -> None:
        self.config_file = str(Path(config_file).resolve())
        self.datalist = str(Path(datalist).resolve())
        data = load_multisite_datalist(self.datalist)
        overrides = {**dict(overrides or {}), "datalist": self.datalist}
        if NETWORK_DEF_KEY in overrides:
            overrides[NETWORK_DEF_KEY] = launcher_network_def(overrides[NETWORK_DEF_KEY])
        self._setup(strategy, options, data.training_sites(), data.site_names, output_dir,
                    check_overrides(overrides, MONAI_SITE_KEYS),
                    CLIENT_SCRIPT, engine=engine, export=export, epochs=epochs, seed=seed, min_clients=min_clients,
                    task_timeout=task_timeout, allow=allow_data_to_leave_sites, payload_log=payload_log,
                    boundary=boundary, accept_margin=accept_margin, task_request_interval=task_request_interval)

    def _setup(self, strategy: str, options: Mapping[str, Any] | None, sites: Sequence[str],
               eval_sites: Sequence[str], output_dir: str | os.PathLike, overrides: dict[str, Any], script: Path, *,
               engine: str, export: str, epochs: int, seed: int, min_clients: int | None, task_timeout: int,
               allow: bool, payload_log: str, boundary: Mapping[str, Any] | None,
               accept_margin: float | None, task_request_interval: float | None) -> None:
        """What both backends' runs hold, checked before any process starts."""
        name = strategy_of(strategy)
        self.options = dict(options or {})
        make_options(name, **self.options)  # bad options fail here, not in a server process
        allow = as_flag(allow, "allow_data_to_leave_sites")  # "false" from a command line is not permission
        refuse_data_transfer(name.value, allow)
        if engine not in ENGINES:
            raise ValueError(f"FederatedRun: engine must be one of {ENGINES}, got {engine!r}.")
        engine = look_up_option(engine, Engine)
        self.strategy = name.value
        self.site_args: dict[str, list[str]] = {}  # a site's own arguments (a bundle site's bundle and data)
        self.planning = "shared"  # how nnU-Net sites come to share plans (FederatedRun.nnunet)
        self.identity: dict[str, Any] | None = None  # the run's settings when the sites get none of them
        self.result_filters: list[dict[str, Any]] = []
        self.sites, self.eval_sites = list(sites), list(eval_sites)
        self.output_dir = Path(output_dir).resolve()
        self.overrides = overrides
        self.script = script
        self.engine, self.export = engine, export
        self.epochs, self.seed = int(epochs), int(seed)
        self.min_clients = int(min_clients) if min_clients else len(self.sites)
        self.task_timeout = int(task_timeout)
        self.allow = allow
        self.payload_log = payload_log
        self.boundary = BoundaryPolicy.from_dict(boundary).to_dict()
        self.accept_margin = None if accept_margin is None else float(accept_margin)
        if task_request_interval is not None and not float(task_request_interval) > 0:
            raise ValueError(f"FederatedRun: task_request_interval must be > 0 seconds, got {task_request_interval!r}.")
        self.task_request_interval = None if task_request_interval is None else float(task_request_interval)

    @classmethod
    def nnunet(cls, datasets: Sequence[str], strategy: str, output_dir: str | os.PathLike,
               eval_datasets: Sequence[str] = (), options: Mapping[str, Any] | None = None,
               settings: Mapping[str, Any] | None = None, *, engine: str = "simulator", export: str = "",
               epochs: int = 1, seed: int = 0, min_clients: int | None = None, task_timeout: int = 0,
               payload_log: str = "", boundary: Mapping[str, Any] | None = None,
               task_request_interval: float | None = None, planning: str = "shared",
               site_folders: Mapping[str, Mapping[str, str | os.PathLike]] | None = None) -> FederatedRun:
        """The nnU-Net backend: one client per nnU-Net dataset, named after it.

        ``settings`` are :class:`~monai_continual.nnunet.settings.NnUNetSiteSettings`' fields (``configuration``,
        ``plans``, ``fold``, ``iterations_per_epoch``, ``val_iterations_per_epoch``, ``device``, ``mirroring``,
        ``mc_samples``, ``replay_capacity``, ``seed``) and ``threads`` (torch's CPU threads); each site needs its own
        ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``. The nnU-Net executor does not score
        validation cases, so sites do not check received models (``accept_margin``).

        ``planning="shared"``: every dataset was planned and preprocessed with the same plans beforehand (``plan``);
        ``"fingerprints"``: before the first stage the server plans from the training sites' fingerprints and every
        site preprocesses its own dataset with the plans, a held-out one keeps them to be scored with
        (:mod:`~monai_continual.federated.nnunet_planning`; the server needs nnU-Net installed). ``site_folders``
        gives a site its own nnU-Net folders on this machine (``{"Dataset501_site_a": {"raw": ..., "preprocessed":
        ..., "results": ...}}``; simulator and POC mode), passed to that site's process only; otherwise every site
        reads its environment's.

        Example::

            >>> FederatedRun.nnunet(["Dataset501_site_a", "Dataset502_site_b"], "cyclic_weight_transfer", "out",
            ...                     options={"cycles": 2}, settings={"iterations_per_epoch": 20},
            ...                     planning="fingerprints").run()
        """
        from monai_continual.federated.nnunet_planning import Planning
        from monai_continual.nnunet.settings import NnUNetSiteSettings  # the nnU-Net backend only

        overrides = check_overrides(dict(settings or {}), NNUNET_SITE_KEYS)
        NnUNetSiteSettings.from_mapping(overrides)  # a bad value fails here, not in the site processes
        run = cls.__new__(cls)
        run.config_file, run.datalist = "", ""
        sites = [check_site_name(d, "FederatedRun.nnunet: dataset") for d in datasets]
        held_out = [check_site_name(d, "FederatedRun.nnunet: dataset") for d in eval_datasets]
        run._setup(strategy, options, sites, [*sites, *held_out], output_dir,
                   overrides, NNUNET_CLIENT_SCRIPT, engine=engine,
                   export=export, epochs=epochs, seed=seed, min_clients=min_clients, task_timeout=task_timeout,
                   allow=False, payload_log=payload_log, boundary=boundary, accept_margin=None,
                   task_request_interval=task_request_interval)
        run.planning = look_up_choice(planning, Planning, "FederatedRun.nnunet: planning").value
        for site, folders in dict(site_folders or {}).items():
            if site not in run.eval_sites or not isinstance(folders, Mapping) or not set(folders) <= set(_FOLDERS):
                raise ValueError(f"FederatedRun.nnunet: site_folders[{site!r}] must be a dataset of the run mapped to "
                                 f"its folders ({', '.join(_FOLDERS)}), got {folders!r}.")
            if not export:  # an exported job names no path: each site sets its own
                run.site_args[site] = [a for key, folder in folders.items()
                                       for a in (f"--{key}", str(Path(folder).resolve()))]
        return run

    @classmethod
    def bundle(cls, bundle_root: str | os.PathLike, sites: Mapping[str, Mapping[str, Any]], strategy: str,
               output_dir: str | os.PathLike, eval_sites: Mapping[str, Mapping[str, Any]] | None = None,
               options: Mapping[str, Any] | None = None, *, train_config: str = "configs/train.json",
               evaluate_config: str | None = None, mc_samples: int = 3, engine: str = "simulator",
               export: str = "", epochs: int = 1, seed: int = 0, min_clients: int | None = None,
               task_timeout: int = 0, payload_log: str = "", boundary: Mapping[str, Any] | None = None,
               task_request_interval: float | None = None,
               result_filters: Sequence[Mapping[str, Any]] = ()) -> FederatedRun:
        """Hospitals' own MONAI bundles as the sites (:mod:`~monai_continual.federated.bundle_client`).

        Every site runs the same bundle (a run never mixes networks: a site whose network differs is refused at the
        first exchange, by name); ``sites`` maps each training site to its own config overrides (its data paths,
        plain JSON), ``eval_sites`` the held-out ones. On one machine (simulator, POC) each site gets ``bundle_root``,
        its overrides and ``output_dir/sites`` as arguments; an exported job names none of them, and each hospital
        sets ``MONAI_CONTINUAL_BUNDLE_ROOT``, ``MONAI_CONTINUAL_BUNDLE_OVERRIDES`` (a JSON file) and
        ``MONAI_CONTINUAL_WORKDIR`` in its client's environment. ``result_filters`` are NVIDIA FLARE task-result
        filters every site applies to its training results (:mod:`~monai_continual.federated.result_filters`:
        ``ExcludeVars``; the privacy filters that assume differences are refused, full weights travel).

        Example::

            >>> FederatedRun.bundle("bundles/spleen", {"hospital_1": {"dataset_dir": "/data/h1"},
            ...                                        "hospital_2": {"dataset_dir": "/data/h2"}},
            ...                     "cyclic_weight_transfer", "out", options={"cycles": 2}, epochs=3).run()
        """
        from monai_continual.federated.bundle_client import bundle_overrides

        held_out = dict(eval_sites or {})
        every = {**dict(sites), **held_out}
        names = [check_site_name(s, "FederatedRun.bundle: site") for s in every]
        run = cls.__new__(cls)
        run.config_file, run.datalist = "", ""
        settings = {"bundle_train_config": str(train_config), "bundle_evaluate_config": evaluate_config,
                    "mc_samples": int(mc_samples)}
        run._setup(strategy, options, list(sites), names, output_dir, settings, BUNDLE_CLIENT_SCRIPT,
                   engine=engine, export=export, epochs=epochs, seed=seed, min_clients=min_clients,
                   task_timeout=task_timeout, allow=False, payload_log=payload_log, boundary=boundary,
                   accept_margin=None, task_request_interval=task_request_interval)
        run.overrides = {}  # nothing of the bundle's config is chosen by the job: only the sites' own settings
        check_result_filters(result_filters, weight_diff=False, strategy=strategy)
        run.result_filters = [dict(f) for f in result_filters]
        common = ["--train-config", str(train_config), "--mc-samples", str(int(mc_samples))]
        if evaluate_config:
            common += ["--evaluate-config", str(evaluate_config)]
        for site, overrides in every.items():
            items = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in dict(overrides or {}).items()]
            bundle_overrides(items)  # refused here (expressions, references), before any process starts
            local = [] if export else ["--bundle-root", str(Path(bundle_root).resolve()),
                                       *[a for i in items for a in ("--set", i)]]
            run.site_args[site] = common + local
        run.identity = settings
        return run

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.strategy

    def job(self) -> Any:
        """The NVFlare job: our controller on the server, the client script at every site."""
        from nvflare.fuel.utils.constants import FrameworkType
        from nvflare.job_config.api import FedJob
        from nvflare.job_config.defs import FilterType

        from monai_continual.federated.script_runner import JobScriptRunner

        job = FedJob(name=f"monai_continual_{self.strategy}", min_clients=self.min_clients)
        job.set_app_packages(["monai_continual"])  # installed at every party: never copied into the job
        controller = StrategyController(
            self.strategy, self.options, self.sites, self.eval_sites, str(self.run_dir), settings=self._site_settings(),
            epochs=self.epochs, seed=self.seed, min_clients=self.min_clients, task_timeout=self.task_timeout,
            payload_log=self.payload_log, allow_data_to_leave_sites=self.allow, boundary=self.boundary,
            result_filters=self.result_filters, planning=self.planning,
        )
        job.to_server(controller)
        if self.task_request_interval is not None:  # the server app's system setting (config_fed_server.json)
            job.to_server({"server": {"task_request_interval": self.task_request_interval}})
        # an exported job names no path of this machine: each site sets its own (federated/site_paths.py)
        local = not self.export
        args = (["--workdir", str(self.output_dir / "sites")] if local else []) + (
            ["--config", self.config_file] if self.config_file and local else []
        )
        if self.accept_margin is not None:
            args += ["--accept-margin", repr(self.accept_margin)]
        spaced = [a for a in args if " " in a]
        if spaced:  # NVFlare splits a script's arguments on spaces, without quoting
            raise ValueError(f"FederatedRun: paths with spaces cannot be passed to the sites: {spaced}.")
        for key, value in self._flat_overrides():
            encoded = json.dumps(value, separators=(",", ":"))
            # NVFlare's job config reads "{...}" in an argument as an expression and splits arguments on spaces
            if "{" in encoded or " " in encoded:
                raise ValueError(f"FederatedRun: override {key!r} must be a number, a string or a list without spaces "
                                 f"or braces, got {value!r}.")
            args += ["--set", f"{key}={encoded}"]
        for site in self.eval_sites:
            site_args = args + self.site_args.get(site, [])
            spaced = [a for a in site_args if " " in a or "{" in a]
            if spaced:  # NVFlare splits a script's arguments on spaces and reads braces as expressions
                raise ValueError(f"FederatedRun: site {site!r}: arguments with spaces or braces cannot be passed: "
                                 f"{spaced}.")
            job.to(
                JobScriptRunner(script=str(self.script), script_args=" ".join(site_args),
                                framework=FrameworkType.NUMPY),
                site,
            )
            for task_filter in result_filters(self.result_filters, weight_diff=False):  # on training results only
                job.to(task_filter, site, filter_type=FilterType.TASK_RESULT, tasks=["train"])
        return job

    def _site_settings(self) -> dict[str, Any]:
        """The overrides every site applies; an exported job's sites read their datalist from their own setting."""
        return {k: v for k, v in self.overrides.items() if not (self.export and k == "datalist")}

    def _flat_overrides(self) -> list[tuple[str, Any]]:
        """The overrides as ``(key, value)``, a dict's entries as ``("key#entry", value)`` (read back by
        :func:`~monai_continual.federated.overrides.parse_overrides`)."""
        flat = []
        for key, value in self._site_settings().items():
            if isinstance(value, Mapping):
                flat += [(f"{key}#{entry}", item) for entry, item in value.items()]
            else:
                flat.append((key, value))
        return flat

    def run(self) -> dict[str, Any] | None:
        """Run (or resume) the job; return the summary (``None`` after an export)."""
        job = self.job()
        if self.export:
            job.export_job(str(self.export))
            print(
                f"job folder written to {self.export}; submit it with `nvflare job submit -j {self.export}/{job.name}`"
            )
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.engine == Engine.SIMULATOR:
            workspace = self.output_dir / "simulator"
            shutil.rmtree(workspace, ignore_errors=True)
            job.simulator_run(str(workspace), clients=list(self.eval_sites), threads=len(self.eval_sites))
        else:
            from monai_continual.federated.poc import PocDeployment

            with PocDeployment(self.output_dir / "poc", self.eval_sites, logs_dir=self.output_dir / "poc_logs") as poc:
                poc.submit_and_wait(job)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        error = self.run_dir / "error.txt"
        if error.exists():
            raise RuntimeError(f"the federated run stopped: {error.read_text().strip()} (run again to resume)")
        path = self.run_dir / "summary.json"
        if not path.exists():
            raise RuntimeError(f"the federated run ended without results in {self.run_dir}; see the NVFlare logs in "
                               f"{self.output_dir}.")
        summary = json.loads(path.read_text())
        print(summary_table(summary))
        return summary
