"""notebooks/train_lits.ipynb runs end to end (here on CPU, tiny settings, no pip install)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lits_phantom import write_lits_phantom

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "train_lits.ipynb"


def test_train_lits_notebook_executes(tmp_path):
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    data = write_lits_phantom(tmp_path / "lits", n=3)
    overrides = {
        "INSTALL": False,
        "LITS_DIR": str(data),
        "OUT_DIR": str(tmp_path / "run"),
        "BUNDLE_DIR": str(tmp_path / "bundle"),
        "BUNDLE_NAME": "nb-tiny",
        "TIME_BUDGET_MIN": {"coarse": 5, "fine": 5},
        "EPOCHS": {"coarse": 1, "fine": 1},
        "ITERATIONS_PER_EPOCH": 1,
        "BATCH_SIZE": 1,
        "NUM_WORKERS": 0,
        "TINY": True,
    }
    source = "# injected by tests/test_notebook.py\nimport torch; torch.set_num_threads(1)\n" + "\n".join(
        f"{k} = {v!r}" for k, v in overrides.items()
    )
    nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(source))
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    bundle = tmp_path / "bundle"
    assert (bundle / "weights.safetensors").is_file() and (bundle / "MODEL_CARD.md").is_file()
    assert (tmp_path / "run" / "fine" / "curve.png").is_file()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "bundle:" in outputs and "fine:" in outputs
