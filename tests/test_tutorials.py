"""Every tutorial notebook runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))
#: what each notebook prints when its checks have run (its cells assert the claims they make)
EXPECTED = {
    "01_bayesian_layers_and_dwc.ipynb": "max difference:",
    "02_forgetting_replay_and_cyclic_transfer.ipynb": "every visit starts from the previous one's weights: True",
    "03_nnunet_across_sites.ipynb": "each visit started from the previous one's weights: True",
    "04_federated_sites_in_the_simulator.ipynb": "largest difference between the federated and the in-process "
                                                 "R matrix:",
    "05_continual_learning_in_your_own_bundle.ipynb": "hospital 2 started from hospital 1's model:",
    "06_your_bundle_as_a_federated_site.ipynb": "consolidated posterior equals Eq. 17 of the hospitals' posteriors: "
                                                "True",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    assert EXPECTED[path.name] in outputs
