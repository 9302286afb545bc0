"""The monai-continual command line: consolidate posterior files and report on an R matrix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from monai_continual.consolidation import Posterior, consolidate_dwc
from monai_continual.metrics import ContinualMatrix


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "monai-continual"
    return [str(script)] if script.exists() else [sys.executable, "-m", "monai_continual"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli() + list(args), capture_output=True, text=True, timeout=300)


def test_consolidate_command_equals_the_function(tmp_path):
    g = torch.Generator().manual_seed(0)
    prior = Posterior({"w": torch.zeros(5)}, {"w": torch.ones(5)})
    prior_path = prior.save(tmp_path / "prior.safetensors")
    sites = []
    for i in range(4):
        post = Posterior(
            {"w": torch.randn(5, generator=g)},
            {"w": 0.2 + 0.5 * torch.rand(5, generator=g)},
            metadata={"num_examples": i + 1, "site": f"s{i}"},
        )
        sites.append(str(post.save(tmp_path / f"s{i}.safetensors")))
    out = tmp_path / "merged.safetensors"
    result = _run("consolidate", "--prior", str(prior_path), "--out", str(out), *sites)
    assert result.returncode == 0, result.stderr
    assert "consolidated 4 site posterior(s)" in result.stdout
    assert "consolidating sites" in result.stderr  # progress bar
    merged = Posterior.load(out)
    expected = consolidate_dwc(prior, sites)
    assert torch.equal(merged.mean["w"], expected.mean["w"]) and torch.equal(merged.std["w"], expected.std["w"])


def test_consolidate_command_reports_bad_files_without_writing(tmp_path):
    prior_path = Posterior({"w": torch.zeros(5)}, {"w": torch.ones(5)}).save(tmp_path / "prior.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a file at all")
    out = tmp_path / "merged.safetensors"
    result = _run("consolidate", "--prior", str(prior_path), "--out", str(out), str(tmp_path / "broken.safetensors"))
    assert result.returncode == 2 and "broken.safetensors" in result.stderr
    assert not out.exists()


def test_report_command(tmp_path):
    R = ContinualMatrix.from_array([[0.8, 0.4, 0.1], [0.9, 0.7, 0.2], [0.5, 0.6, 0.9]], ["A", "B", "C"])
    path = R.save_json(tmp_path / "R.json")
    (tmp_path / "base.json").write_text('{"A": 0.1, "B": 0.2, "C": 0.3}')
    result = _run("report", str(path), "--baseline", str(tmp_path / "base.json"))
    assert result.returncode == 0, result.stderr
    assert (
        "bwt: -0.2000" in result.stdout and "fwt: +0.0500" in result.stdout and "forgetting: +0.2500" in result.stdout
    )
    assert (tmp_path / "R.png").stat().st_size > 0
