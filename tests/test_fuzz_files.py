"""About 200 seeded mutations of posterior files, weight-store manifests and datalists: each is read or refused with
its documented error type (PosteriorFileError, TensorFileError, DatalistError), never another exception."""

from __future__ import annotations

from file_fuzzing import fuzz
from runner_utils import tiny_sites


def test_mutated_files_are_read_or_refused_with_the_documented_error(tmp_path):
    datalist = tiny_sites(tmp_path / "sites")
    counts = fuzz(tmp_path / "fuzz", datalist, cases=210, seed=0)
    assert sum(counts.values()) == 210
    # the harness really mutates: most mutations of each target are refused
    for target in ("posterior", "manifest", "datalist"):
        refused, read = counts[(target, "refused")], counts[(target, "read")]
        assert refused + read == 70 and refused >= 35, (target, counts)
