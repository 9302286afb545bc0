"""Runs one strategy of the tiny runner; the resume tests start it, kill it (or let it crash) and start it again.

``python resume_worker.py SITES OUTPUT STRATEGY OPTIONS_JSON [LR [SETTINGS_JSON]]``, or :func:`main` in a forked
worker (``forked.py``); SETTINGS_JSON adds runner settings (e.g. ``{"patch_size": [12, 12, 12]}``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from runner_utils import tiny_runner  # noqa: E402


def main(argv: Sequence[str]) -> None:
    torch.set_num_threads(1)
    sites, output, strategy, options = argv[0], argv[1], argv[2], json.loads(argv[3])
    lr = float(argv[4]) if len(argv) > 4 else 1e-3
    settings = json.loads(argv[5]) if len(argv) > 5 else {}
    runner = tiny_runner(Path(sites), Path(output), optimizer_state="site",
                         optimizer=lambda p: torch.optim.Adam(p, lr=lr),
                         bayes_optimizer=lambda p: torch.optim.Adam(p, lr=lr), **settings)
    runner.run(strategy, **options)


if __name__ == "__main__":
    main(sys.argv[1:])
