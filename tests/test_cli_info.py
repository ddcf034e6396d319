"""`liverseg info`: prints what was read (exit 0), or a clear message with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest

from liverseg.cli import main
from liverseg.io import write_volume
from liverseg.testing import phantom, write_dicom_series


@pytest.fixture(scope="module")
def ct():
    vol, _ = phantom(shape=(6, 64, 64), spacing=(2.5, 1.25, 1.5), lesions=(), noise_hu=0.0)
    return vol


def test_info_on_nifti(tmp_path, ct, capsys):
    p = write_volume(ct, tmp_path / "ct.nii.gz")
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "format:      nifti-gz" in out
    assert "6 x 64 x 64 (z, y, x)" in out and "2.5 x 1.25 x 1.5 mm" in out and "LPS" in out
    assert f"{ct.array.min()} .. {ct.array.max()} HU" in out


def test_info_json_on_dicom_with_several_series(tmp_path, ct, capsys):
    write_dicom_series(ct, tmp_path / "d" / "a", series_description="first")
    write_dicom_series(type(ct)(array=ct.array[:3], spacing=ct.spacing), tmp_path / "d" / "b")
    assert main(["info", "--json", str(tmp_path / "d")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape_zyx"] == [6, 64, 64] and info["series_description"] == "first"
    assert len(info["other_series"]) == 1 and info["warnings"]


def _empty(d):
    (d / "empty.nii.gz").write_bytes(b"")
    return d / "empty.nii.gz"


def _text(d):
    (d / "t.nii").write_text("not an image\n" * 10)
    return d / "t.nii"


def _no_images(d):
    (d / "nothing").mkdir()
    return d / "nothing"


@pytest.mark.parametrize(
    "make, message",
    [
        (_empty, "is empty"),
        (_text, "holds plain text"),
        (_no_images, "holds no DICOM files"),
        (lambda d: d / "missing.nii.gz", "does not exist"),
    ],
)
def test_info_bad_input_exit_2(tmp_path, capsys, make, message):
    assert main(["info", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("liverseg: error: ") and message in err


def test_info_4d_and_zip_slip_exit_2(tmp_path, capsys):
    p = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), str(p))
    assert main(["info", str(p)]) == 2
    assert "4D image" in capsys.readouterr().err
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil", b"x")
    assert main(["info", str(z)]) == 2
    assert "climbs out" in capsys.readouterr().err


def test_info_mr_needs_force(tmp_path, ct, capsys):
    write_dicom_series(ct, tmp_path / "mr", modality="MR")
    assert main(["info", str(tmp_path / "mr")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["info", "--force", str(tmp_path / "mr")]) == 0
    assert "modality:    MR" in capsys.readouterr().out


def test_console_script_runs(tmp_path, ct):
    p = write_volume(ct, tmp_path / "ct.mha")
    res = subprocess.run([sys.executable, "-m", "liverseg.cli", "info", str(p)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "format:      metaimage" in res.stdout


@pytest.mark.realdata
@pytest.mark.parametrize(
    "rel, shape, spacing",
    [
        ("unlabeled/totalsegmentator-example/example_ct_dicom", "20 x 512 x 512", "2 x 0.976562 x 0.976562 mm"),
        ("labeled/3Dircadb1.17/PATIENT_DICOM.zip", "119 x 512 x 512", "1.6 x 0.743 x 0.743 mm"),
        ("labeled/chaos-ct-sample/DICOM_anon", "78 x 512 x 512", "2 x 0.726562 x 0.726562 mm"),
        ("unlabeled/totalsegmentator-example/example_ct.nii.gz", "112 x 101 x 122", "3 x 3 x 3 mm"),
    ],
)
def test_info_on_real_scans(shared_data, capsys, rel, shape, spacing):
    assert main(["info", str(shared_data / rel)]) == 0
    out = capsys.readouterr().out
    assert f"shape:       {shape} (z, y, x)" in out and f"spacing:     {spacing} (z, y, x)" in out


@pytest.mark.realdata
def test_info_on_real_seg_exit_2(shared_data, capsys):
    assert main(["info", str(shared_data / "unlabeled/dcmqi-ct-3slice/liver.dcm")]) == 2
    assert "DICOM SEG" in capsys.readouterr().err
