"""Runs one strategy of the tiny runner; the resume test starts it, kills it and starts it again."""

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
    tiny_runner(Path(sites), Path(output)).run(strategy, **options)
