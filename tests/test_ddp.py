"""Multi-process training: 2 CPU processes (Gloo) launched by torchrun train a few iterations."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from lits_phantom import write_lits_phantom
from test_trainer import TINY_NET, case_ids

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes(tmp_path):
    data = write_lits_phantom(tmp_path / "lits", n=3)
    ids = case_ids(data)
    recipe = {
        "name": "ddp-tiny",
        "validation_cases": [ids[-1]],
        "epochs": 2,
        "iterations_per_epoch": 2,
        "val_every": 1,
        "device": "cpu",
        "num_threads": 1,
        "stages": [{"name": "net", "architecture": "nnformer-liver-3d", "model_kwargs": TINY_NET, "augment": False,
                    "plan": {"spacing_mm": [3.0, 3.0, 3.0], "patch_size": [16, 32, 32], "batch_size": 1}}],
    }
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "liverseg.cli", "train", "--data", str(data), "--config", str(cfg), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage = json.loads((out / "net" / "stage.json").read_text())
    assert stage["world_size"] == 2 and stage["epochs_done"] == 2
    # each process ran 2 steps per epoch on its own share of the patches
    assert stage["iterations_done"] == 4
    rows = list(csv.DictReader(open(out / "net" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[-1]["val_liver_dice"] != ""
    assert (out / "net" / "checkpoint.pt").is_file() and (out / "net" / "curve.png").is_file()
    # rank 0 alone wrote: no stray temporary files from a second writer
    assert not [p.name for p in (out / "net").iterdir() if p.name.startswith(".")]
