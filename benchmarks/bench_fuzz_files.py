"""A long fuzz run over the files that cross sites: posterior files, weight-store manifests and datalists.

Every mutated file must be read correctly or refused with its documented error type; any other exception stops the
run with its traceback. Prints the counts per target and outcome, and the cases per second.

Run: ``.venv/bin/python benchmarks/bench_fuzz_files.py [CASES] [SEED]`` (default 6000 cases, seed 0)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from file_fuzzing import fuzz  # noqa: E402
from runner_utils import tiny_sites  # noqa: E402


def main(cases: int = 6000, seed: int = 0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        datalist = tiny_sites(Path(tmp) / "sites")
        start = time.perf_counter()
        counts = fuzz(Path(tmp) / "fuzz", datalist, cases, seed)
        seconds = time.perf_counter() - start
    print(f"{cases} mutated files in {seconds:.1f} s ({cases / seconds:.0f}/s), no undocumented exception")
    for (target, outcome), count in sorted(counts.items()):
        print(f"  {target:<10} {outcome:<8} {count}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
