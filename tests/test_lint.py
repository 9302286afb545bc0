"""The lint configuration of ``pyproject.toml`` (``[tool.ruff]``: line length 120, pyflakes, pycodestyle, import order)
holds on the whole tree: ``ruff check monai_continual tests benchmarks`` reports nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("monai_continual", "tests", "benchmarks")


def test_ruff_reports_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    # run from the repository root so that ruff reads the project's pyproject.toml; no cache written into the tree
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *CHECKED],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check {' '.join(CHECKED)} reported:\n{done.stdout}{done.stderr}"
