"""examples/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient), as a user runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    import nbclient  # test extras: installed wherever the suite runs, so the notebook always runs in CI
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert "".join(notebook.cells[3].source).count("SOUPConfig(") == 1  # the README's snippet is in it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The kernel is this interpreter (ipykernel's own spec): the notebook sees the installed trl_soup.
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = {
        i: "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    summary = outputs[5]
    assert "reward " in summary and "relay batches of 16" in summary, summary
    first, last = (float(x.split()[0]) for x in summary.split("reward ")[1].split(" -> "))
    assert 0.0 <= first <= 1.0 and 0.0 <= last <= 1.0
    relay = int(summary.split("\n")[1].split()[0])
    assert relay == 14, summary  # T = 8 over 16 batches: batches 0 and 8 are on-policy
    assert "kept as prefix    :" in outputs[7]
    assert os.path.isdir(tmp_path / "quickstart-soup")  # the run wrote where the notebook runs
