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
    from monai_continual.federated.site_worker import SiteWorker, serve
    from monai_continual.nnunet.launcher import default_device
    from monai_continual.nnunet.sites import NnUNetStageExecutor, _Evaluator
    from monai_continual.utils.names import check_site_name

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True, help="this site's working directory (its own disk)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="an nnU-Net setting, repeated")
    args = parser.parse_args(argv)
    settings = parse_overrides(args.set, NNUNET_SITE_KEYS)

    if settings.get("threads"):  # CPU results depend on torch's thread count: match the run being compared with
        torch.set_num_threads(int(settings["threads"]))
    flare.init()
    site = check_site_name(flare.get_site_name(), "NVFlare site")
    configuration = settings.get("configuration", "3d_fullres")
    plans = settings.get("plans", "nnUNetPlans")
    device = torch.device(settings.get("device") or default_device())
    evaluator = _Evaluator([site], configuration, plans, device, bool(settings.get("mirroring", True)),
                           int(settings.get("mc_samples", 1)))
    iterations = {k: settings.get(k) for k in ("iterations_per_epoch", "val_iterations_per_epoch")}
    def make_executor(stages, run_dir):
        return NnUNetStageExecutor(run_dir, stages, evaluator, configuration, settings.get("fold", "all"), plans,
                                   device, iterations, "nnUNetTrainer", int(settings.get("replay_capacity", 5)),
                                   int(settings.get("seed", 0)), first=site)

    serve(SiteWorker(make_executor, site, Path(args.workdir) / site))


if __name__ == "__main__":
    main()
