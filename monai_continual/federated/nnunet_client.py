"""An nnU-Net site's process in a federated run: its stages run with nnU-Net's own trainers on its own dataset.

Started by NVFlare's ``ScriptRunner``; the client name is the site's nnU-Net dataset (``Dataset501_site_a``), planned
and preprocessed with the shared plans; ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` are the
site's own::

    python nnunet_client.py --workdir /data/site_a/federated --set iterations_per_epoch=50 --set device='"cuda"'
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare
    import torch

    from monai_continual.federated.overrides import NNUNET_SITE_KEYS, parse_overrides
    from monai_continual.federated.site_paths import WORKDIR_ENV, site_path
    from monai_continual.federated.site_worker import SiteWorker, serve
    from monai_continual.nnunet.evaluation import SiteEvaluator
    from monai_continual.nnunet.names import NNUNET_TRAINER
    from monai_continual.nnunet.settings import NnUNetSiteSettings
    from monai_continual.nnunet.sites import NnUNetStageExecutor
    from monai_continual.utils.names import check_site_name

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", help="this site's working directory, on its own disk (default: "
                        "$MONAI_CONTINUAL_WORKDIR)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="an nnU-Net setting, repeated")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set, NNUNET_SITE_KEYS)
    settings = NnUNetSiteSettings.from_mapping(overrides)
    workdir = site_path(args.workdir, WORKDIR_ENV, "working directory")

    if overrides.get("threads"):  # CPU results depend on torch's thread count: match the run being compared with
        torch.set_num_threads(int(overrides["threads"]))
    flare.init()
    site = check_site_name(flare.get_site_name(), "NVFlare site")
    evaluator = SiteEvaluator([site], settings.configuration, settings.plans, settings.torch_device(),
                              settings.mirroring, settings.mc_samples, settings.fold)

    def make_executor(stages, run_dir):
        return NnUNetStageExecutor(run_dir, stages, evaluator, settings, NNUNET_TRAINER, first=site)

    serve(SiteWorker(make_executor, site, Path(workdir) / site))


if __name__ == "__main__":
    main()
