"""A MetaImage / NRRD header may name its voxel file; liverseg reads it only from inside the header's folder.

Issue 18, item 1: a ``.mhd`` whose ``ElementDataFile`` was an absolute path (``/etc/passwd``)
or ``../../secret_key`` made the server read and show any file it could read.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from liverseg.errors import CorruptFileError, InputError, UnsafeReferenceError
from liverseg.io import read_volume
from liverseg.io.detached import check_detached_data, detached_data_files

SHAPE = (3, 4, 5)  # z, y, x


def _voxels() -> np.ndarray:
    return (np.arange(np.prod(SHAPE), dtype=np.int16) - 30).reshape(SHAPE)


def _mhd(folder: Path, data_file: str, *, name: str = "scan.mhd", extra: str = "") -> Path:
    z, y, x = SHAPE
    text = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"DimSize = {x} {y} {z}\nElementSpacing = 1 1 2\nElementType = MET_SHORT\n"
        f"ElementDataFile = {data_file}\n{extra}"
    )
    path = folder / name
    path.write_text(text)
    return path


def _nhdr(folder: Path, data_file: str, *, name: str = "scan.nhdr") -> Path:
    z, y, x = SHAPE
    text = (
        "NRRD0004\ntype: short\ndimension: 3\n"
        f"sizes: {x} {y} {z}\nspacings: 1 1 2\nendian: little\nencoding: raw\ndata file: {data_file}\n\n"
    )
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture()
def secret(tmp_path) -> Path:
    """A file the server can read but no upload may reach, sized like the image's voxels."""
    p = tmp_path / "secret_key"
    p.write_bytes(_voxels().tobytes())
    return p


@pytest.mark.parametrize("make", [_mhd, _nhdr], ids=["mhd", "nhdr"])
def test_absolute_path_outside_the_folder_is_refused(tmp_path, secret, make):
    case = tmp_path / "upload"
    case.mkdir()
    header = make(case, str(secret))
    with pytest.raises(UnsafeReferenceError, match="outside the header's own folder"):
        read_volume(header)


@pytest.mark.parametrize("make", [_mhd, _nhdr], ids=["mhd", "nhdr"])
def test_relative_path_escaping_the_folder_is_refused(tmp_path, secret, make):
    case = tmp_path / "studies" / "x" / "input"
    case.mkdir(parents=True)
    header = make(case, "../../../secret_key")
    assert (case / "../../../secret_key").resolve() == secret.resolve()
    with pytest.raises(UnsafeReferenceError, match="outside"):
        read_volume(header)


def test_link_inside_the_folder_pointing_out_is_refused(tmp_path, secret):
    case = tmp_path / "upload"
    case.mkdir()
    (case / "scan.raw").symlink_to(secret)
    with pytest.raises(UnsafeReferenceError, match="outside"):
        read_volume(_mhd(case, "scan.raw"))


def test_missing_voxel_file_says_what_to_upload(tmp_path):
    with pytest.raises(UnsafeReferenceError, match="upload the header and its voxel file together"):
        read_volume(_mhd(tmp_path, "scan.raw"))


def test_the_header_itself_as_voxel_file_is_read_only_from_its_folder(tmp_path):
    # a header naming a folder ("." or "..") is not a file
    with pytest.raises(UnsafeReferenceError):
        read_volume(_mhd(tmp_path, "."))


def test_header_and_voxels_together_are_read(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "scan.raw").write_bytes(_voxels().tobytes())
    vol = read_volume(_mhd(tmp_path, "sub/scan.raw"))
    assert vol.shape == SHAPE and np.array_equal(vol.array, _voxels())
    (tmp_path / "scan.raw").write_bytes(_voxels().tobytes())
    vol = read_volume(_nhdr(tmp_path, "scan.raw"))
    assert vol.shape == SHAPE and np.array_equal(vol.array, _voxels())


def test_a_zip_of_header_and_voxels_is_read(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("case/scan.mhd", _mhd(tmp_path, "scan.raw").read_text())
        zf.writestr("case/scan.raw", _voxels().tobytes())
    (tmp_path / "case.zip").write_bytes(buf.getvalue())
    vol = read_volume(tmp_path / "case.zip")
    assert vol.shape == SHAPE and np.array_equal(vol.array, _voxels())


def test_list_and_pattern_forms_are_checked_file_by_file(tmp_path, secret):
    tmp_path = tmp_path / "case"
    tmp_path.mkdir()
    slices = _voxels()
    for k in range(SHAPE[0]):
        (tmp_path / f"s{k:02d}.raw").write_bytes(slices[k].tobytes())
    pattern = _mhd(tmp_path, "s%02d.raw 0 2 1", name="pattern.mhd")
    assert detached_data_files(pattern, fmt="metaimage") == ["s00.raw", "s01.raw", "s02.raw"]
    assert len(check_detached_data(pattern, fmt="metaimage")) == 3
    listed = _mhd(tmp_path, "LIST", name="list.mhd", extra=f"s00.raw\n{secret}\ns02.raw\n")
    assert detached_data_files(listed, fmt="metaimage") == ["s00.raw", str(secret), "s02.raw"]
    with pytest.raises(UnsafeReferenceError, match="outside"):
        check_detached_data(listed, fmt="metaimage")
    with pytest.raises(CorruptFileError, match="unusable range"):
        check_detached_data(_mhd(tmp_path, "s%02d.raw 0 100000 1", name="huge.mhd"), fmt="metaimage")


def test_local_and_attached_data_need_no_file(tmp_path):
    mha = _mhd(tmp_path, "LOCAL", name="x.mha")
    assert detached_data_files(mha, fmt="metaimage") is None
    nrrd = tmp_path / "x.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nencoding: raw\nendian: little\n\n"
                     + _voxels().tobytes())
    assert detached_data_files(nrrd, fmt="nrrd") is None
    assert np.array_equal(read_volume(nrrd).array, _voxels())


def test_cli_info_refuses_with_exit_code_2(tmp_path, secret):
    header = _mhd(tmp_path, "/etc/passwd")
    res = subprocess.run([sys.executable, "-m", "liverseg.cli", "info", str(header)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "outside the header's own folder" in res.stderr and "root:" not in res.stdout + res.stderr


def test_web_upload_of_a_header_pointing_at_the_secret_key_fails_the_job(tmp_path, tiny_bundle_3d, tiny_bundle_2d):
    from liverseg.inference import Predictor
    from liverseg.web import create_app
    from liverseg.web.auth import create_user
    from liverseg.web.jobs import shared_factory

    from test_web import login, upload

    factory = shared_factory(lambda: Predictor(tiny_bundle_3d, model_2d=tiny_bundle_2d, threads=1))
    data = tmp_path / "data"
    app = create_app(data_dir=data, start_workers=False, predictor_factory=factory, TESTING=True)
    create_user(app.extensions["liverseg"].store, name="ada", password="correct horse battery")
    c = app.test_client()
    login(c)
    key = (data / "secret_key").read_bytes()
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\n"
        f"DimSize = {len(key)} 1 1\nElementType = MET_UCHAR\nElementDataFile = ../../../secret_key\n"
    )
    r = upload(c, [(io.BytesIO(header.encode()), "evil.mhd")])
    if r.status_code == 400:  # refused at upload: just as good
        assert "outside" in r.get_json()["error"]
        return
    sid = r.get_json()["id"]
    app.extensions["liverseg"].pool.run_pending()
    s = c.get(f"/studies/{sid}/status.json").get_json()
    assert s["status"] == "failed" and "outside the header's own folder" in s["error"], s
    assert c.get(f"/studies/{sid}/slice/0.png").status_code in (404, 409)
    assert json.dumps(s).find(key.hex()) == -1
