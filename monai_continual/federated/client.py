"""The site's process in a federated run (NVFlare Client API): receive a stage, run it on this site's data, answer.

Started by NVFlare's ``ScriptRunner`` at every site::

    python client.py --config federated.json --workdir /data/site_b/federated --set epochs=4 --set seed=0

The site's name is its NVFlare client name; its data are the site's entry of the datalist named in the config.
An exported job passes no path: the site's config, datalist and working directory come from its own environment
(:mod:`~monai_continual.federated.site_paths`).
A job's network comes as ``--set network_def#_target_='"monai.networks.nets.UNet"' --set network_def#channels=[4,8]``
and replaces the config's ``network_def``, which keeps its own ``_requires_`` (threads, seeding).
Nothing but the published model, its hash and counts, and per-volume scores is sent back.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from monai_continual.federated.config import parse_config
    from monai_continual.federated.overrides import MONAI_SITE_KEYS, parse_overrides
    from monai_continual.federated.site_paths import CONFIG_ENV, DATALIST_ENV, WORKDIR_ENV, site_path
    from monai_continual.federated.site_worker import SiteWorker, serve
    from monai_continual.utils.names import check_site_name

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="the bundle config of the run (default: $MONAI_CONTINUAL_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a config override (the server's, one of MONAI_SITE_KEYS, a plain JSON value; "
                             "network_def#ARG for the network's class and arguments), repeated")
    parser.add_argument("--workdir", help="this site's working directory, on its own disk (default: "
                        "$MONAI_CONTINUAL_WORKDIR)")
    parser.add_argument("--accept-margin", type=float, default=None,
                        help="check every received model on this site's validation cases before training from it")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set, MONAI_SITE_KEYS)  # data, never expressions: refused before anything runs
    config_file = site_path(args.config, CONFIG_ENV, "bundle config")
    workdir = site_path(args.workdir, WORKDIR_ENV, "working directory")
    overrides["datalist"] = site_path(overrides.get("datalist"), DATALIST_ENV, "datalist")

    flare.init()
    site = check_site_name(flare.get_site_name(), "NVFlare site")
    site_dir = Path(workdir) / site
    config = parse_config(config_file, {**overrides, "site": site, "site_dir": str(site_dir / "runner")})
    runner = config.get_parsed_content("site_runner")
    serve(SiteWorker(lambda stages, run_dir: runner.executor(run_dir, stages), site, site_dir,
                     accept_margin=args.accept_margin))


if __name__ == "__main__":
    main()
