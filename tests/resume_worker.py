"""Runs one strategy of the tiny runner; the resume tests start it, kill it (or let it crash) and start it again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from runner_utils import tiny_runner  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    sites, output, strategy, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    lr = float(sys.argv[5]) if len(sys.argv) > 5 else 1e-3
    runner = tiny_runner(Path(sites), Path(output), optimizer_state="site",
                         optimizer=lambda p: torch.optim.Adam(p, lr=lr),
                         bayes_optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    runner.run(strategy, **options)
