"""run_case / run_cases and ``liverseg predict`` on phantom files with tiny bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liverseg.cli import main
from liverseg.errors import InputError
from liverseg.inference import Predictor, case_name, find_cases, run_case
from liverseg.io import Volume, read_volume, write_volume
from liverseg.testing import phantom, phantom_2d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    ct, _ = phantom(shape=(11, 36, 40), spacing=(3.0, 2.0, 1.8), lesions=((5.0, None),))
    c, s = np.cos(0.2), np.sin(0.2)
    ct = Volume(array=ct.array, spacing=ct.spacing, origin=(-30.0, 12.0, 100.0),
                direction=np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]))
    write_volume(ct, root / "abdomen.nii.gz")
    sl, _ = phantom_2d(shape=(48, 40), spacing=(1.6, 1.6))
    pixels = np.clip((sl.array.astype(np.float32) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    write_volume(Volume(array=pixels, spacing=None, is_hu=False), root / "slice.png")
    return {"nifti": root / "abdomen.nii.gz", "png": root / "slice.png", "root": root}


def test_case_name_and_find_cases(inputs, tmp_path):
    assert case_name("x/volume-17.nii.gz") == "volume-17"
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "dicom").mkdir()
    cases, bad = find_cases([inputs["root"], tmp_path / "dicom", tmp_path / "missing.nii.gz"])
    assert cases == [inputs["nifti"], inputs["png"], tmp_path / "dicom"]
    assert bad and "missing.nii.gz" in bad[0][0]


@pytest.mark.slow
def test_run_case_writes_every_output_on_the_input_grid(inputs, tmp_path, tiny_bundle_3d, tiny_bundle_2d):
    predictor = Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d)
    steps: list[str] = []
    doc = run_case(inputs["nifti"], tmp_path / "out" / "abdomen", predictor=predictor, save_probabilities=True,
                   progress=lambda s, f: steps.append(s), note="test run")
    out = tmp_path / "out" / "abdomen"
    for name in ("mask.nii.gz", "probabilities.nii.gz", "report.json", "lesions.csv", "overlay.png", "report.html",
                 "report.pdf"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == doc
    run = doc["run"]
    assert run["model"]["sha256"] == predictor.bundle("3d").sha256 and run["note"] == "test run"
    assert {"read", "localize", "segment", "postprocess", "analyze", "write", "total"} <= set(run["timings_s"])
    assert run["liverseg_version"] and run["torch_version"] and run["device"] == "cpu"
    assert doc["files"]["mask"] == "mask.nii.gz"
    ct, mask = read_volume(inputs["nifti"]), read_volume(out / "mask.nii.gz")
    assert mask.shape == ct.shape
    np.testing.assert_allclose(mask.spacing, ct.spacing, rtol=1e-5)
    np.testing.assert_allclose(mask.origin, ct.origin, atol=1e-4)
    np.testing.assert_allclose(mask.direction, ct.direction, atol=1e-5)
    assert steps[0] == "read" and steps[-1] == "done"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["abdomen"]  # no temporary folder left


def test_run_case_for_a_png_slice_writes_mask_png(inputs, tmp_path, tiny_bundle_3d, tiny_bundle_2d):
    doc = run_case(inputs["png"], tmp_path / "slice", predictor=Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d))
    mask = read_volume(tmp_path / "slice" / "mask.png")
    assert mask.shape == (1, 48, 40) and doc["files"]["mask_png"] == "mask.png"
    assert doc["run"]["model"]["kind"] == "2d"
    assert any("pseudo-HU" in w for w in doc["run"]["warnings"])


@pytest.mark.slow
def test_a_failed_case_leaves_nothing_behind(inputs, tmp_path, tiny_bundle_3d):
    def cancel(step: str, fraction: float) -> None:
        if step == "write":
            raise RuntimeError("cancelled by the caller")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="cancelled"):
        run_case(inputs["nifti"], out / "abdomen", predictor=Predictor(tiny_bundle_3d, model_2d=None), progress=cancel)
    assert not out.exists() or list(out.iterdir()) == []
    with pytest.raises(InputError, match="2D model"):
        run_case(inputs["png"], out / "slice", predictor=Predictor(tiny_bundle_3d, model_2d=None))
    assert not out.exists() or list(out.iterdir()) == []


def test_existing_output_needs_overwrite(inputs, tmp_path, tiny_bundle_3d):
    out = tmp_path / "abdomen"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        run_case(inputs["nifti"], out, predictor=Predictor(tiny_bundle_3d, model_2d=None))
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_predict_many_inputs_skip_and_overwrite(inputs, tmp_path, tiny_bundle_3d, tiny_bundle_2d, capsys):
    out = tmp_path / "out"
    args = ["predict", str(inputs["nifti"]), str(inputs["png"]), str(tmp_path / "missing.nii.gz"),
            "-o", str(out), "--model", str(tiny_bundle_3d), "--model-2d", str(tiny_bundle_2d)]
    assert main(args) == 2  # the missing input is bad; the others are done
    text = capsys.readouterr().out
    assert "2 done" in text and "missing.nii.gz" in text
    assert (out / "abdomen" / "report.json").is_file() and (out / "slice" / "mask.png").is_file()
    before = (out / "abdomen" / "report.json").stat().st_mtime_ns
    assert main(args[:3] + args[4:]) == 0  # again without the bad input: both skipped
    assert "2 skipped" in capsys.readouterr().out
    assert (out / "abdomen" / "report.json").stat().st_mtime_ns == before
    assert main(args[:2] + args[4:] + ["--overwrite"]) == 0
    assert (out / "abdomen" / "report.json").stat().st_mtime_ns != before


def test_cli_predict_bad_arguments_and_models(inputs, tmp_path, tiny_bundle_3d, capsys):
    assert main(["predict", str(inputs["nifti"]), "-o", str(tmp_path), "--overlap", "1.5"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["predict", str(inputs["nifti"]), "-o", str(tmp_path), "--model", str(tmp_path / "nope")]) == 2  # a model that does not exist is bad input
    assert "no model bundle" in capsys.readouterr().err
    # a corrupt input is a bad input (exit 2); the case is listed
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 10)
    assert main(["predict", str(bad), "-o", str(tmp_path / "o"), "--model", str(tiny_bundle_3d),
                 "--model-2d", "none"]) == 2
    assert "broken.nii.gz" in capsys.readouterr().out


@pytest.mark.slow
def test_run_case_on_a_dicom_series_writes_a_dicom_seg(tmp_path, tiny_bundle_3d):
    import highdicom as hd
    import pydicom

    from liverseg.testing import write_dicom_series

    ct, _ = phantom(shape=(8, 40, 36), spacing=(2.5, 1.8, 1.8), lesions=())
    write_dicom_series(ct, tmp_path / "series")
    doc = run_case(tmp_path / "series", tmp_path / "out", predictor=Predictor(tiny_bundle_3d, model_2d=None))
    assert doc["files"]["dicom_seg"] == "seg.dcm"
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert seg.Modality == "SEG"
    assert pydicom.dcmread(tmp_path / "out" / "seg.dcm").SeriesDescription
    mask = read_volume(tmp_path / "out" / "mask.nii.gz")
    assert mask.shape == ct.shape


@pytest.mark.realdata
@pytest.mark.slow
def test_cli_predict_on_real_dicom_and_jpeg(shared_data, tmp_path, tiny_bundle_3d, tiny_bundle_2d, capsys):
    import highdicom as hd

    dicom = shared_data / "unlabeled" / "dcmqi-ct-3slice"  # 3 CT slices + a SEG + an NRRD: one DICOM case
    jpeg = sorted((shared_data / "slices2d" / "msd-liver-jpg" / "images").glob("*.jpg"))[0]
    assert find_cases([dicom])[0] == [dicom]
    out = tmp_path / "out"
    code = main(["predict", str(dicom), str(jpeg), "-o", str(out), "--model", str(tiny_bundle_3d),
                 "--model-2d", str(tiny_bundle_2d), "--overlap", "0"])  # tiny patches: few windows
    assert code == 0, capsys.readouterr()
    ct = read_volume(dicom)
    assert read_volume(out / "dcmqi-ct-3slice" / "mask.nii.gz").shape == ct.shape
    seg = hd.seg.segread(out / "dcmqi-ct-3slice" / "seg.dcm")
    assert seg.Modality == "SEG"
    assert read_volume(out / jpeg.stem / "mask.png").shape == read_volume(jpeg).shape
