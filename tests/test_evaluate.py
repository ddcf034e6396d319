"""liverseg.analysis.evaluate_folders and `liverseg evaluate` on tiny NIfTI folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from liverseg.analysis import evaluate_folders
from liverseg.analysis.evaluate import case_key
from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.io import Volume, write_mask

SPACING = (2.0, 1.0, 1.0)


def _case(tumor: bool) -> np.ndarray:
    a = np.zeros((8, 12, 12), np.uint8)
    a[1:7, 2:10, 2:10] = 1
    if tumor:
        a[3:5, 4:7, 4:7] = 2
    return a


def _write(folder: Path, name: str, arr: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    grid = Volume(array=np.zeros(arr.shape, np.int16), spacing=SPACING)
    return write_mask(grid, arr, folder / name)


@pytest.fixture()
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    # case 1: perfect; case 2: tumor missed and liver shifted; case 3: no tumor anywhere
    r1, r2, r3 = _case(True), _case(True), _case(False)
    p2 = np.roll(r2, 1, axis=2)
    p2[p2 == 2] = 1
    _write(ref, "segmentation-1.nii", r1)
    _write(ref, "segmentation-2.nii", r2)
    _write(ref, "segmentation-3.nii", r3)
    _write(ref, "segmentation-4.nii", r3)  # no prediction for this one
    _write(ref, "volume-1.nii", (r1 * 100).astype(np.uint8))  # LiTS keeps the CT beside the mask: ignored
    _write(pred, "segmentation-1.nii.gz", r1)
    _write(pred / "volume-2", "mask.nii.gz", p2)  # a `liverseg predict` output folder
    _write(pred, "segmentation-3.nii.gz", r3)
    return pred, ref, (r1, r2, r3, p2)


def test_case_keys():
    assert case_key(Path("segmentation-17.nii")) == "17"
    assert case_key(Path("out/volume-17/mask.nii.gz")) == "17"
    assert case_key(Path("liver_3_0000.nii.gz")) == "liver_3"


def test_evaluate_folders_known_answers(folders, tmp_path):
    pred, ref, (r1, r2, r3, p2) = folders
    res = evaluate_folders(pred, ref, out_dir=tmp_path / "eval", progress=False)
    assert [c["case"] for c in res["cases"]] == ["1", "2", "3"]
    assert res["missing_predictions"] == ["4"]
    c1, c2, c3 = res["cases"]
    assert c1["liver"]["dice"] == 1.0 and c1["tumor"]["dice"] == 1.0
    liver_dice_2 = 2 * ((p2 >= 1) & (r2 >= 1)).sum() / ((p2 >= 1).sum() + (r2 >= 1).sum())
    assert c2["liver"]["dice"] == pytest.approx(liver_dice_2)
    assert c2["liver"]["mssd_mm"] == pytest.approx(1.0)  # shifted 1 voxel along x (1 mm)
    assert c2["tumor"]["dice"] == 0.0 and c3["tumor"]["dice"] == 1.0  # LiTS: no tumor in both -> 1
    agg = res["aggregate"]
    assert agg["n_cases"] == 3
    assert agg["tumor"]["dice_per_case"] == pytest.approx(2 / 3)
    n_t = int((r1 == 2).sum())
    assert agg["tumor"]["dice_global"] == pytest.approx(2 * n_t / (n_t + 2 * n_t))
    assert agg["liver"]["dice_per_case"] == pytest.approx((2 + liver_dice_2) / 3)
    assert agg["detection"]["n_ref"] == 2 and agg["detection"]["recall_iou0"] == 0.5
    assert agg["detection"]["precision_iou50"] == 1.0
    burden = n_t / (r2 >= 1).sum()
    assert agg["tumor_burden"]["max_abs_error"] == pytest.approx(burden)
    assert agg["tumor_burden"]["rmse"] == pytest.approx(np.sqrt(burden**2 / 3))
    # files
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert data["aggregate"]["tumor"]["dice_per_case"] == pytest.approx(2 / 3)
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation_cases.csv").open()))
    assert [r["case"] for r in rows] == ["1", "2", "3"]
    assert float(rows[1]["tumor_dice"]) == 0.0 and rows[1]["tumor_assd_mm"] == ""


def test_cli_evaluate(folders, tmp_path, capsys):
    pred, ref, _ = folders
    rc = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "cases scored: 3" in out and "tumor" in out and "Dice per case 0.6667" in out
    assert (tmp_path / "e" / "evaluation_cases.csv").is_file()


def test_bad_inputs(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _write(ref, "segmentation-1.nii", _case(True))
    _write(pred, "other-1.nii", _case(True))
    with pytest.raises(InputError, match="matches"):
        evaluate_folders(pred, ref, progress=False)
    _write(pred, "segmentation-1.nii", np.full((8, 12, 12), 255, np.uint8))
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref)]) == 2
    assert "255" in capsys.readouterr().err
    _write(pred, "segmentation-1.nii", np.zeros((8, 12, 11), np.uint8))
    with pytest.raises(InputError, match="shape"):
        evaluate_folders(pred, ref, progress=False)
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(ref)]) == 2
