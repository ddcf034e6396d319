"""A corpus of bad inputs, every one made by code, through the CLI and through the REST API (issue 18).

Each file kind in :data:`FILES` goes through ``liverseg info`` (or ``predict``) and through
``POST /api/studies``: the CLI must exit with the given code and say the given thing on
stderr; the API must refuse the upload with the given status and message, or accept it and
fail the job with that message. :data:`REQUESTS` are REST-only kinds (tokens, forms, ids),
:data:`COMMANDS` CLI-only ones (paths, options). Nothing may answer 500 or exit 1.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import pytest

import bad_inputs as bi
from liverseg.cli import main
from liverseg.web import create_app
from liverseg.web.auth import create_user, new_token

from test_web_hardening import FakePredictor

PASSWORD = "correct horse battery"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of bad input: ``make(folder)`` writes it and returns its path (a file or a folder)."""

    name: str
    make: Callable[[Path], Path]
    match: str  # regex the CLI's stderr and the API's message must contain
    api: str = "upload"  # "upload": refused at upload with ``status``; "job": accepted, the job fails
    status: int = 400
    cli: str = "info"  # the command that must refuse it ("info" or "predict")
    api_match: str | None = None  # when the API says it differently (another file name, etc.)


# ----------------------------------------------------------------------------- makers


def _nii(name: str, data: np.ndarray, *, gz: bool = False, **kw) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        raw = bi.nifti_bytes(data, **kw)
        return bi.write(d / name, bi.gz(raw) if gz else raw)

    return make


def _bytes(name: str, data: Callable[[], bytes] | bytes) -> Callable[[Path], Path]:
    return lambda d: bi.write(d / name, data() if callable(data) else data)


def _nib(name: str, arr: np.ndarray, affine=None) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(d / name))
        return d / name

    return make


def _mha(name: str, header: str, payload: bytes = b"") -> Callable[[Path], Path]:
    return lambda d: bi.write(d / name, header.encode() + payload)


def _mhd_pair(data_file: str, *, write_raw: bool = False) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        if write_raw:
            (d / "scan.raw").write_bytes(bytes(2 * 32 * 32 * 4))
        return bi.write(d / "scan.mhd", (
            "ObjectType = Image\nNDims = 3\nDimSize = 32 32 4\nElementSpacing = 1 1 2\nElementType = MET_SHORT\n"
            f"ElementDataFile = {data_file}\n").encode())

    return make


def _series(**kw) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        bi.dicom_series(d / "series", **kw)
        return d / "series"

    return make


def _edit(fn) -> Callable[[Path], Path]:
    return _series(edit=fn)


def _set(**tags):
    def edit(ds, k):
        for key, value in tags.items():
            setattr(ds, key, value)

    return edit


def _two_orientations(ds, k):
    if k == 0:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _mixed_sizes(ds, k):
    if k == 0:
        ds.Rows = 32
        ds.PixelData = bytes(32 * 64 * 2)


def _same_position(ds, k):
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]


def _cut_pixels(ds, k):
    ds.PixelData = ds.PixelData[:100]


def _seg(d: Path) -> Path:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SEG", pydicom.uid.generate_uid()
    ds.Rows = ds.Columns = 32
    ds.NumberOfFrames, ds.BitsAllocated, ds.PixelData = 1, 1, bytes(128)
    d.mkdir(parents=True, exist_ok=True)
    ds.save_as(d / "seg.dcm", enforce_file_format=True)
    return d / "seg.dcm"


def _zip(name: str, members: dict[str, bytes] | Callable[[], bytes]) -> Callable[[Path], Path]:
    return lambda d: bi.write(d / name, members() if callable(members) else bi.zip_of(members))


def _zip_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _zip_encrypted() -> bytes:
    data = bytearray(bi.zip_of({"a.dcm": b"x" * 100}, compression=zipfile.ZIP_STORED))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set bit 0 (encrypted) in the local and central headers
        at = data.find(sig)
        flag = at + (6 if sig == b"PK\x03\x04" else 8)
        data[flag] |= 1
    return bytes(data)


def _zip_series(edit=None) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        files = bi.dicom_series(d / "s", edit=edit)
        return bi.write(d / "series.zip", bi.zip_of({f"CT/{p.name}": p.read_bytes() for p in files}))

    return make


PHANTOM = bi.phantom_xyz()
Z = np.zeros((20, 20, 5), np.int16)
NOISE = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
_SMOOTH = (np.add.outer(np.arange(128), np.arange(128)) // 2 + np.random.default_rng(1).integers(0, 20, (128, 128)))
CUT_PNG = (lambda b: b[: len(b) // 2])(bi.png_of(_SMOOTH.clip(0, 255).astype(np.uint8)))
CUT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(50)
SINGULAR = {bi.SFORM_CODE: bi.i16(1), bi.QFORM_CODE: bi.i16(0), bi.SROW_X: bi.f32(2, 0, 0, 0),
            bi.SROW_Y: bi.f32(2, 0, 0, 0), bi.SROW_Z: bi.f32(0, 0, 4, 0)}
MHA_HEAD = "ObjectType = Image\nNDims = 3\nDimSize = 32 32 4\nElementSpacing = {sp}\nElementType = MET_SHORT\n" \
           "{extra}ElementDataFile = LOCAL\n"

FILES: list[Kind] = [
    # -- generic
    Kind("empty file", _bytes("scan.nii.gz", b""), r"empty \(0 bytes\)"),
    Kind("text named .nii", _bytes("scan.nii", b"hello, this is not a scan\n" * 20), "plain text"),
    Kind("text named .dcm", _bytes("slice.dcm", b"just some notes\n" * 10), "plain text"),
    Kind("binary junk named .nii.gz", _bytes("scan.nii.gz", bytes(range(256)) * 8), "named like"),
    Kind("unknown binary format", _bytes("scan.bin", b"\x00\x01\x02\x03" * 300), "unrecognised file format"),
    Kind("gzip of text", _bytes("scan.nii.gz", lambda: bi.gz(b"not a nifti" * 100)), "does not hold a NIfTI"),
    Kind("gzip cut in its header", _bytes("scan.nii.gz", lambda: bi.gz(bi.nifti_bytes(Z))[:12]), "damaged|truncated"),
    # -- NIfTI
    Kind("truncated .nii.gz", _bytes("cut.nii.gz", lambda: bi.gz(bi.nifti_bytes(PHANTOM))[:3000]), "truncated",
         api="job"),
    Kind("truncated .nii", _bytes("cut.nii", lambda: bi.nifti_bytes(PHANTOM)[:5000]), "truncated", api="job"),
    Kind("flipped bytes in .nii.gz", _bytes("flip.nii.gz", lambda: bi.flip_bytes(bi.gz(bi.nifti_bytes(PHANTOM)))),
         "integrity|damaged|truncated", api="job"),
    Kind("gzip bomb after the voxels", _nii("bomb.nii.gz", Z, gz=True, tail=bytes(40 * 2**20)), "gzip bomb", api="job"),
    Kind("4D with two volumes", _nib("t.nii", np.zeros((20, 20, 5, 2), np.int16)), "4D image"),
    Kind("1D", _nib("line.nii", np.zeros((50,), np.int16)), "1D image"),
    Kind("RGB voxels", _nib("rgb.nii", np.zeros((20, 20, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
         "colour", api="job"),
    Kind("complex voxels", _nib("c.nii", np.zeros((20, 20, 5), np.complex64)), "complex", api="job"),
    Kind("50 mm voxels", _nii("v.nii.gz", np.zeros((100, 100, 10), np.int16), gz=True, zooms=(50.0, 50.0, 50.0)),
         "larger than 30 mm"),
    Kind("micrometre voxels", _nii("um.nii", Z, patch={bi.XYZT_UNITS: bytes([3])}), "smaller than 0.05 mm",
         api="job"),
    Kind("metre units", _nii("m.nii", Z, patch={bi.XYZT_UNITS: bytes([1])}), "larger than 30 mm", api="job"),
    Kind("pixdim 0", _nii("p0.nii", Z, patch={bi.PIXDIM + 4: bi.f32(0.0, 1.0, 1.0), bi.QFORM_CODE: bi.i16(0, 0)}),
         "pixdim", api="job"),
    Kind("negative pixdim", _nii("pn.nii", Z, patch={bi.PIXDIM + 4: bi.f32(-1.0, 1.0, 1.0),
                                                      bi.QFORM_CODE: bi.i16(0, 0)}), "pixdim", api="job"),
    Kind("vox_offset 0", _nii("o0.nii", Z, patch={bi.VOX_OFFSET: bi.f32(0.0)}), "vox_offset", api="job"),
    Kind("singular sform", _nii("sf.nii", Z, patch=SINGULAR), "singular or sheared", api="job"),
    Kind("NaN in the sform", _nii("nan.nii", Z, patch={bi.SFORM_CODE: bi.i16(1), bi.QFORM_CODE: bi.i16(0),
                                                       bi.SROW_X: bi.f32(float("nan"), 0, 0, 0)}),
         "NaN|singular", api="job"),
    Kind("87 bytes claiming 16 GB", _bytes("claim.nii.gz", lambda: bi.gz(bi.header_only_nifti(
        (1600, 1600, 800), datatype=64, bitpix=64))), "GiB"),
    Kind("header claiming 200 MiB, 352 bytes there", _bytes("short.nii.gz", lambda: bi.gz(bi.header_only_nifti(
        (512, 512, 400)))), "decode to|truncated", status=413),
    Kind("axis longer than any CT", _nii("long.nii", np.zeros((16, 16, 1600), np.int16), zooms=(1.0, 1.0, 2.0)),
         "mm along z"),
    Kind("one voxel", _nii("one.nii", np.zeros((1, 1, 2), np.int16)), "too few to hold a liver", cli="predict"),
    Kind("a 4 x 4 thumbnail", _nii("thumb.nii", np.zeros((4, 4, 3), np.int16)), "too few to hold a liver",
         cli="predict"),
    # -- PNG / JPEG
    Kind("PNG claiming 12000 x 12000", _bytes("bomb.png", lambda: bi.png_claiming(12000, 12000)),
         "decompression bomb", api_match="12000 x 12000 pixels"),
    Kind("PNG claiming 6000 x 6000", _bytes("big.png", lambda: bi.png_claiming(6000, 6000)), "million pixels"),
    Kind("truncated PNG", _bytes("cut.png", CUT_PNG), "truncated or damaged|cannot be opened", api="job"),
    Kind("random-noise picture", _bytes("noise.png", lambda: bi.png_of(NOISE)), "random noise", api="job"),
    Kind("an 8 x 8 icon", _bytes("icon.png", lambda: bi.png_of(np.zeros((8, 8), np.uint8))),
         "too few to hold a liver", cli="predict"),
    Kind("truncated JPEG", _bytes("cut.jpg", CUT_JPEG), "damaged|cannot be opened|truncated"),
    # -- MetaImage / NRRD
    Kind("MHA with 2 values per voxel", _mha("v.mha", MHA_HEAD.format(sp="1 1 2", extra="ElementNumberOfChannels = 2\n"),
                                             bytes(2 * 2 * 32 * 32 * 4)), "values per voxel"),
    Kind("MHA with 50 mm voxels", _mha("v.mha", MHA_HEAD.format(sp="50 50 50", extra=""), bytes(2 * 32 * 32 * 4)),
         "larger than 30 mm"),
    Kind("MHA with 0 mm voxels", _mha("v.mha", MHA_HEAD.format(sp="0 1 1", extra=""), bytes(2 * 32 * 32 * 4)),
         "voxel size|cannot be read"),
    Kind("MHA with truncated voxels", _mha("v.mha", MHA_HEAD.format(sp="1 1 2", extra=""), bytes(100)),
         "cannot be read|truncated", api="job"),
    Kind("MHD naming /etc/passwd", _mhd_pair("/etc/passwd"), "outside the header's own folder"),
    Kind("MHD naming ../secret_key", _mhd_pair("../../secret_key"), "outside the header's own folder"),
    Kind("MHD without its voxel file", _mhd_pair("scan.raw"), "not beside it"),
    Kind("NRRD naming /etc/passwd", _bytes("x.nhdr", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32 4\n"
                                                      b"encoding: raw\ndata file: /etc/passwd\n\n"),
         "outside the header's own folder"),
    # -- DICOM
    Kind("DICOM without pixel data", _series(with_pixels=False), "no pixel data", api="job"),
    Kind("a DICOM SEG instead of the CT", _seg, "DICOM SEG", api="job"),
    Kind("an MR series", _series(modality="MR"), "no CT series|modality MR", api="job"),
    Kind("two slices at one position", _edit(_same_position), "same position", api="job"),
    Kind("slices of two sizes", _edit(_mixed_sizes), "different sizes", api="job"),
    Kind("slices of two orientations", _edit(_two_orientations), "different orientations", api="job"),
    Kind("RescaleSlope 1000", _edit(_set(RescaleSlope=1000)), "beyond what a CT can hold", api="job"),
    Kind("RescaleSlope -1", _edit(_set(RescaleSlope=-1)), "slope of zero or below", api="job"),
    Kind("PixelSpacing of 10 m", _edit(_set(PixelSpacing=[10000, 10000])), "larger than 30 mm", api="job"),
    Kind("PixelSpacing of 1 um", _edit(_set(PixelSpacing=[0.001, 0.001])), "smaller than 0.05 mm", api="job"),
    Kind("cut pixel data", _edit(_cut_pixels), "cannot be decoded|decodes to|damaged", api="job"),
    Kind("a folder with no images", lambda d: bi.write(d / "docs" / "readme.txt", b"hello").parent,
         "holds no DICOM|none of the", api_match="plain text, not an image"),
    # -- zip
    Kind("zip with ../", _zip("slip.zip", {"../../evil.dcm": b"x"}), "climbs out"),
    Kind("zip with an absolute path", _zip("abs.zip", {"/tmp/evil.dcm": b"x"}), "absolute path"),
    Kind("zip with a symbolic link", _zip("link.zip", _zip_symlink), "symbolic link"),
    Kind("zip with an encrypted member", _zip("enc.zip", _zip_encrypted), "encrypted"),
    Kind("zip bomb of many small members", _zip("bomb.zip", lambda: bi.zip_bomb(30, 3 * 2**20)), "zip bomb"),
    Kind("zip bomb of one member", _zip("one.zip", lambda: bi.zip_of({"z.dcm": bytes(80 * 2**20)})), "zip bomb"),
    Kind("corrupt zip", _bytes("broken.zip", b"PK\x03\x04" + bytes(40)), "not a readable zip"),
    Kind("zip of folders only", _zip("dirs.zip", {"a/": b"", "a/b/": b""}), "holds no files"),
    Kind("zip without DICOM", _zip("docs.zip", {"readme.txt": b"no images", "a.csv": b"1,2"}), "holds no DICOM"),
    Kind("zip with x beside x/", _zip("clash.zip", {"x": b"1", "x/y.dcm": b"2"}), "both as a file and as a folder"),
    Kind("zip 2,000 folders deep", _zip("deep.zip", {"/".join(["n"] * 2000) + "/a.dcm": b"1"}), "folders deep"),
    Kind("zip with a 300-character folder", _zip("long.zip", {"d" * 300 + "/a.dcm": b"1"}), "255 bytes per name"),
    Kind("zip of two NIfTI files", _zip("two.zip", lambda: bi.zip_of({"a.nii": bi.nifti_bytes(Z),
                                                                     "b.nii": bi.nifti_bytes(Z)})),
         "holds no DICOM"),
    Kind("zip of one bad NIfTI", _zip("bad.zip", lambda: bi.zip_of({"ct.nii": bi.nifti_bytes(
        Z, patch={bi.VOX_OFFSET: bi.f32(0.0)})})), "vox_offset", api="job"),
    Kind("zipped series with RescaleSlope -1", _zip_series(_set(RescaleSlope=-1)), "slope of zero or below",
         api="job"),
]


# ----------------------------------------------------------------------------- the API side


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-web")
    app = create_app(data_dir=root / "data", start_workers=False, predictor_factory=FakePredictor, TESTING=True)
    store = app.extensions["liverseg"].store
    for name in ("ada", "bob"):
        create_user(store, name=name, password=PASSWORD)
    tokens = {}
    for name in ("ada", "bob"):
        tokens[name] = new_token()
        store.add_token(store.user_by_name(name).id, tokens[name])
    return app, app.test_client(), {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}


def _files_of(path: Path) -> list[tuple[io.BytesIO, str]]:
    if path.is_dir():
        return [(io.BytesIO(p.read_bytes()), f"{path.name}/{p.relative_to(path).as_posix()}")
                for p in sorted(path.rglob("*")) if p.is_file()]
    return [(io.BytesIO(path.read_bytes()), path.name)]


@pytest.mark.parametrize("kind", FILES, ids=[k.name for k in FILES])
def test_api_refuses_each_bad_file(api, tmp_path, kind):
    app, c, tokens = api
    path = kind.make(tmp_path)
    r = c.post("/api/studies", headers=tokens["ada"], data={"files": _files_of(path)},
               content_type="multipart/form-data")
    match = kind.api_match or kind.match
    data_dir = str(app.extensions["liverseg"].data_dir)
    if kind.api == "upload":
        assert r.status_code == kind.status, r.text
        message = r.get_json()["error"]
    else:
        assert r.status_code == 202, r.text
        app.extensions["liverseg"].pool.run_pending()
        s = c.get(f"/api/studies/{r.get_json()['id']}", headers=tokens["ada"]).get_json()
        assert s["status"] == "failed", s
        message = s["error"]
    assert re.search(match, message), message
    assert data_dir not in message and "internal error" not in message


# ----------------------------------------------------------------------------- the CLI side


@pytest.mark.parametrize("kind", FILES, ids=[k.name for k in FILES])
def test_cli_refuses_each_bad_file(tmp_path, capsys, kind, request):
    import re

    path = kind.make(tmp_path)
    if kind.cli == "predict":
        bundle = request.getfixturevalue("tiny_bundle_3d")
        bundle_2d = request.getfixturevalue("tiny_bundle_2d")
        code = main(["predict", str(path), "-o", str(tmp_path / "out"), "--model", str(bundle),
                     "--model-2d", str(bundle_2d)])
        out = capsys.readouterr()
        text = out.out + out.err
    else:
        code = main(["info", str(path)])
        text = capsys.readouterr().err
    assert code == 2, text
    assert re.search(kind.match, text), text
    assert "internal error" not in text


# ----------------------------------------------------------------------------- REST-only kinds


def _study(api, tmp_path, user="ada") -> str:
    app, c, tokens = api
    data = bi.nifti_bytes(bi.phantom_xyz())
    r = c.post("/api/studies", headers=tokens[user], data={"files": [(io.BytesIO(data), "ct.nii")]},
               content_type="multipart/form-data")
    assert r.status_code == 202, r.text
    return r.get_json()["id"]


REQUESTS = [
    ("no files field", lambda c, h, sid: c.post("/api/studies", headers=h, data={}, content_type="multipart/form-data"),
     400, "no file was uploaded"),
    ("several files, none DICOM", lambda c, h, sid: c.post(
        "/api/studies", headers=h, content_type="multipart/form-data",
        data={"files": [(io.BytesIO(b"a" * 100), "a.txt"), (io.BytesIO(b"b" * 100), "b.txt")]}), 400, "none of the 2"),
    ("note of 5,000 characters", lambda c, h, sid: c.post(
        "/api/studies", headers=h, content_type="multipart/form-data",
        data={"files": [(io.BytesIO(bi.nifti_bytes(bi.phantom_xyz())), "ct.nii")], "note": "n" * 5000}), 400,
     "at most 2000"),
    ("a 1 MB form field", lambda c, h, sid: c.post(
        "/api/studies", headers=h, content_type="multipart/form-data",
        data={"files": [(io.BytesIO(b"x"), "ct.nii")], "note": "n" * 2**20}), 413, "text field"),
    ("no token", lambda c, h, sid: c.get("/api/studies"), 401, "Bearer"),
    ("a wrong token", lambda c, h, sid: c.get("/api/studies", headers={"Authorization": "Bearer lst_wrong"}), 401,
     "Bearer"),
    ("basic auth instead of a token", lambda c, h, sid: c.get("/api/studies", headers={"Authorization": "Basic YTpi"}),
     401, "Bearer"),
    ("another user's study", lambda c, h, sid: c.get(f"/api/studies/{sid}", headers=h["bob"]), 404, "not found"),
    ("another user's delete", lambda c, h, sid: c.delete(f"/api/studies/{sid}", headers=h["bob"]), 404, "not found"),
    ("an unknown study", lambda c, h, sid: c.get("/api/studies/0123456789abcdef", headers=h), 404, "not found"),
    ("a study id with symbols", lambda c, h, sid: c.get("/api/studies/..%2F..", headers=h), 404, "not found"),
    ("an output not on the list", lambda c, h, sid: c.get(f"/api/studies/{sid}/files/..%2Fsecret_key", headers=h),
     404, "not found"),
    ("an output before the job ran", lambda c, h, sid: c.get(f"/api/studies/{sid}/files/mask.nii.gz", headers=h),
     404, "not found"),
    ("a wrong method", lambda c, h, sid: c.put("/api/studies", headers=h), 405, ""),
]


@pytest.mark.parametrize("name, send, status, match", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_api_refuses_each_bad_request(api, tmp_path, name, send, status, match):
    app, c, tokens = api
    sid = _study(api, tmp_path)
    h = tokens if name.startswith("another user") else tokens["ada"]
    r = send(c, h, sid)
    assert r.status_code == status, r.text
    assert r.is_json and match in r.get_json()["error"]


def test_api_refuses_too_many_files_and_too_large_bodies(tmp_path):
    app = create_app(data_dir=tmp_path / "d", start_workers=False, predictor_factory=FakePredictor, TESTING=True,
                     max_files=3, max_upload_bytes=50_000)
    store = app.extensions["liverseg"].store
    token = new_token()
    store.add_token(create_user(store, name="ada", password=PASSWORD).id, token)
    c, h = app.test_client(), {"Authorization": f"Bearer {token}"}
    r = c.post("/api/studies", headers=h, content_type="multipart/form-data",
               data={"files": [(io.BytesIO(b"x"), f"{k}.dcm") for k in range(4)]})
    assert r.status_code == 413 and "more than the limit of 3" in r.get_json()["error"]
    r = c.post("/api/studies", headers=h, content_type="multipart/form-data",
               data={"files": [(io.BytesIO(bytes(80_000)), "big.nii")]})
    assert r.status_code == 413 and "per study" in r.get_json()["error"]


# ----------------------------------------------------------------------------- CLI-only kinds


def _bundle(request) -> str:
    return str(request.getfixturevalue("tiny_bundle_3d"))


COMMANDS = [
    ("a path that does not exist", lambda t, r: ["info", str(t / "nowhere.nii")], "does not exist"),
    ("predict --overlap nan", lambda t, r: ["predict", str(t), "-o", str(t / "o"), "--overlap", "nan"], "finite"),
    ("predict --threads 0", lambda t, r: ["predict", str(t), "-o", str(t / "o"), "--threads", "0"], "at least 1"),
    ("predict --overlap 1.5", lambda t, r: ["predict", str(t), "-o", str(t / "o"), "--overlap", "1.5"], "overlap"),
    ("predict --model nope", lambda t, r: ["predict", str(t), "-o", str(t / "o"), "--model", "nope"],
     "no model bundle"),
    ("predict --device tpu", lambda t, r: ["predict", str(t), "-o", str(t / "o"), "--device", "tpu"], "invalid choice"),
    ("predict into a file", lambda t, r: ["predict", str(_phantom_file(t)), "-o", str(bi.write(t / "f", b"x") / "o"),
                                          "--model", _bundle(r), "--model-2d", "none"], "cannot be written"),
    ("an unknown command", lambda t, r: ["segment", str(t)], "invalid choice"),
    ("users token for nobody", lambda t, r: ["users", "token", "nobody", "--data-dir", str(t / "d")], "no user named"),
    ("users add with a bad name", lambda t, r: ["users", "add", "bad name!", "--data-dir", str(t / "d")], "not valid"),
    ("serve --port 0", lambda t, r: ["serve", "--port", "0", "--data-dir", str(t / "d")], "at least 1"),
    ("serve --job-timeout-s -1", lambda t, r: ["serve", "--job-timeout-s", "-1", "--data-dir", str(t / "d")],
     "must be > 0"),
    ("evaluate a missing folder", lambda t, r: ["evaluate", "--pred", str(t / "p"), "--ref", str(t / "r")],
     "does not exist|not a folder|no such"),
    ("info on an empty folder", lambda t, r: ["info", str((t / "empty").mkdir() or t / "empty")], "holds no DICOM"),
]


def _phantom_file(t: Path) -> Path:
    return bi.write(t / "ct.nii", bi.nifti_bytes(bi.phantom_xyz()))


@pytest.mark.parametrize("name, argv, match", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_cli_refuses_each_bad_command(tmp_path, capsys, request, name, argv, match):
    import re

    try:
        code = main(argv(tmp_path, request))
    except SystemExit as exc:  # argparse refuses bad option values itself, with exit 2
        code = exc.code
    out = capsys.readouterr()
    assert code == 2, out
    assert re.search(match, out.err + out.out, re.I), out


def test_the_corpus_has_at_least_60_kinds():
    assert len(FILES) + len(REQUESTS) + len(COMMANDS) + 1 >= 60
    assert len({k.name for k in FILES}) == len(FILES)
