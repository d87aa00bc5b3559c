from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name,outputs", [
    ("latency_results.ipynb", ["nb_speedup.png", "nb_overhead.png"]),
    ("accuracy_vs_speedup.ipynb", ["nb_accuracy_speedup.png", "nb_accuracy_sparsity.png", "nb_sensitivity_0.png",
                                   "nb_layer_times_0.png"]),
], ids=["latency", "accuracy"])
def test_notebook_executes(name, outputs, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TSA_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    for out in outputs:
        assert (tmp_path / out).stat().st_size > 1000
