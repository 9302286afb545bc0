"""An nnU-Net site's process in a federated run: its stages run with nnU-Net's own trainers on its own dataset.

Started by NVFlare's ``ScriptRunner``; the client name is the site's nnU-Net dataset (``Dataset501_site_a``),
planned and preprocessed with the shared plans, or planned by the server from the sites' fingerprints when it asks
(:mod:`~monai_continual.federated.nnunet_planning`); ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
are the site's own (its environment's, or ``--raw``, ``--preprocessed``, ``--results``)::

    python nnunet_client.py --workdir /data/site_a/federated --set iterations_per_epoch=50 --set device='"cuda"'
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare
    import torch

    from monai_continual.federated.nnunet_planning import PlanningSite
    from monai_continual.federated.overrides import NNUNET_SITE_KEYS, parse_overrides
    from monai_continual.federated.site_paths import WORKDIR_ENV, site_path
    from monai_continual.federated.site_worker import SiteWorker, serve
    from monai_continual.nnunet.environment import set_nnunet_paths
    from monai_continual.nnunet.evaluation import SiteEvaluator
    from monai_continual.nnunet.names import NNUNET_TRAINER
    from monai_continual.nnunet.settings import NnUNetSiteSettings
    from monai_continual.nnunet.sites import NnUNetStageExecutor
    from monai_continual.utils.names import check_site_name

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", help="this site's working directory, on its own disk (default: "
                        "$MONAI_CONTINUAL_WORKDIR)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="an nnU-Net setting, repeated")
    for key in ("raw", "preprocessed", "results"):
        parser.add_argument(f"--{key}", help=f"this site's nnUNet_{key} (default: the environment's)")
    args = parser.parse_args(argv)
    set_nnunet_paths(args.raw, args.preprocessed, args.results)
    overrides = parse_overrides(args.set, NNUNET_SITE_KEYS)
    settings = NnUNetSiteSettings.from_mapping(overrides)
    workdir = site_path(args.workdir, WORKDIR_ENV, "working directory")

    if overrides.get("threads"):  # CPU results depend on torch's thread count: match the run being compared with
        torch.set_num_threads(int(overrides["threads"]))
    flare.init()
    site = check_site_name(flare.get_site_name(), "NVFlare site")

    @functools.cache
    def evaluator() -> SiteEvaluator:  # after planning: it reads the site's plans
        return SiteEvaluator([site], settings.configuration, settings.plans, settings.torch_device(),
                             settings.mirroring, settings.mc_samples, settings.fold)

    def make_executor(stages, run_dir):
        return NnUNetStageExecutor(run_dir, stages, evaluator(), settings, NNUNET_TRAINER, first=site)

    site_dir = Path(workdir) / site
    serve(PlanningSite(SiteWorker(make_executor, site, site_dir), site, settings, site_dir))


if __name__ == "__main__":
    main()
