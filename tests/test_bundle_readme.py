"""The bundle README's commands run as written from the repository root: every fenced ``bash`` block not marked
``<!-- long: ... -->`` runs, on tiny data, with its outputs in a temporary folder instead of the bundle's."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_continual.consolidation import Posterior, consolidate_dwc

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bundles" / "multisite_segmentation" / "docs" / "README.md"
TINY = "--epochs 1 --channels 4 --mc_samples 2"  # the same for every command: the sites' models must fit each other


def _blocks() -> list[tuple[bool, str]]:
    """``(long, script)`` for every bash block, continuation lines joined."""
    found = []
    for match in re.finditer(r"(<!-- long:[^\n]*-->\n)?```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        found.append((match.group(1) is not None, match.group(2).replace("\\\n", " ")))
    return found


def _tiny(script: str, root: Path) -> str:
    lines = []
    for line in script.splitlines():
        if line.startswith("R="):
            line = f"R={shlex.quote(str(root))}"
        elif line.startswith("B=$R/configs"):
            line = f"B={shlex.quote(str(README.parents[1] / 'configs'))}"
        elif line.startswith("python -m monai.bundle run"):
            line = f"{line} {TINY}"
        lines.append(line.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1))
    return "\n".join(lines)


def test_every_block_is_marked_or_run():
    blocks = _blocks()
    assert len(blocks) >= 3 and any(not long for long, _ in blocks) and any(long for long, _ in blocks)


@pytest.mark.slow
@pytest.mark.parametrize("index", [i for i, (long, _) in enumerate(_blocks()) if not long])
def test_a_bundle_readme_block_runs_as_written(index, tmp_path):
    script = _tiny(_blocks()[index][1], tmp_path / "bundle")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, script + "\n" + result.stdout[-2000:] + result.stderr[-4000:]
    shared = tmp_path / "bundle" / "outputs" / "shared"
    merged = Posterior.load(shared / "consolidated.safetensors")  # McClure Eq. 17 over the sites' posteriors
    expected = consolidate_dwc(shared / "prior.safetensors", sorted((shared / "sites").glob("*.safetensors")))
    assert merged.metadata["sites"] == ["site_b", "site_c"]
    assert all(torch.equal(merged.mean[k], expected.mean[k]) and torch.equal(merged.std[k], expected.std[k])
               for k in merged.mean)
    scores = json.loads((tmp_path / "bundle" / "outputs" / "evaluation" / "scores.json").read_text())
    assert set(scores) == {"site_a", "site_b", "site_c", "site_d", "heldout_e"}
