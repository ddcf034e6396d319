"""Every scan in ../shared/data reads with the geometry its own headers state.

Geometry is checked against the headers themselves (pydicom, nibabel) and against
SimpleITK/GDCM's independent reading; tissue HU against expert liver masks.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from liverseg.errors import NotCTError
from liverseg.io import extract_zip, read_volume, write_mask

pytestmark = pytest.mark.realdata


def _zip_headers(path: Path) -> list[pydicom.Dataset]:
    with zipfile.ZipFile(path) as zf:
        return [
            pydicom.dcmread(io.BytesIO(zf.read(i)), stop_before_pixels=True)
            for i in zf.infolist()
            if not i.is_dir()
        ]


def _check_against_headers(vol, headers) -> None:
    """shape, spacing, origin and direction as the DICOM headers state them."""
    iop = np.array(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    pos = sorted((float(np.dot(np.array(h.ImagePositionPatient, float), normal)), h) for h in headers)
    first = pos[0][1]
    assert vol.shape == (len(headers), int(first.Rows), int(first.Columns))
    dz = np.median(np.diff([p for p, _ in pos]))
    assert vol.spacing == pytest.approx((dz, float(first.PixelSpacing[0]), float(first.PixelSpacing[1])), abs=1e-4)
    assert vol.origin == pytest.approx([float(v) for v in first.ImagePositionPatient], abs=1e-4)
    assert np.allclose(vol.direction[:, 0], iop[:3]) and np.allclose(vol.direction[:, 1], iop[3:])


def _check_against_gdcm(vol, folder: Path) -> sitk.Image:
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    assert ref.GetSize() == vol.shape[::-1]
    assert np.allclose(ref.GetSpacing(), vol.spacing[::-1], atol=1e-3)
    assert np.allclose(ref.GetOrigin(), vol.origin, atol=1e-3)
    assert np.allclose(ref.GetDirection(), vol.direction.ravel(), atol=1e-6)
    return ref


# ---- 3D-IRCADb (DICOM zips); read once per session ----------------------------------------


@pytest.fixture(scope="session")
def ircad17(shared_data):
    return read_volume(shared_data / "labeled/3Dircadb1.17/PATIENT_DICOM.zip")


@pytest.fixture(scope="session")
def ircad17_masks(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ircad17-masks")
    extract_zip(shared_data / "labeled/3Dircadb1.17/MASKS_DICOM.zip", root)
    return {name: read_volume(root / "MASKS_DICOM" / name) for name in ("liver", "livertumor1", "livertumor2")}


def test_ircad17_geometry_from_headers(ircad17, shared_data):
    _check_against_headers(ircad17, _zip_headers(shared_data / "labeled/3Dircadb1.17/PATIENT_DICOM.zip"))
    assert ircad17.shape == (119, 512, 512) and ircad17.spacing == pytest.approx((1.6, 0.743, 0.743), abs=1e-3)
    assert ircad17.array.dtype == np.int16 and ircad17.is_hu and ircad17.metadata["format"] == "dicom-zip"
    assert ircad17.metadata["warnings"] == []


def test_ircad17_liver_hu_and_masks_on_the_same_grid(ircad17, ircad17_masks):
    liver = ircad17_masks["liver"]
    for m in ircad17_masks.values():
        assert m.shape == ircad17.shape and m.origin == ircad17.origin and m.spacing == ircad17.spacing
    inside = liver.array > 0
    assert inside.sum() > 100_000
    mean_hu = float(ircad17.array[inside].mean())
    assert 50 <= mean_hu <= 200, mean_hu
    assert float(ircad17.array[~inside].mean()) < mean_hu - 200  # mostly air and fat outside
    tumor = (ircad17_masks["livertumor1"].array > 0) | (ircad17_masks["livertumor2"].array > 0)
    assert tumor.any() and not (tumor & ~inside).any()  # README: every tumor voxel inside the liver


def test_ircad17_masks_zip_names_the_other_series(shared_data):
    vol = read_volume(shared_data / "labeled/3Dircadb1.17/MASKS_DICOM.zip")
    folders = {s["folder"] for s in vol.metadata["other_series"]} | {vol.metadata["series_folder"]}
    assert folders == {"MASKS_DICOM/liver", "MASKS_DICOM/livertumor1", "MASKS_DICOM/livertumor2"}
    assert any("holds 3 series" in w for w in vol.metadata["warnings"])


def test_ircad7_reads(shared_data):
    path = shared_data / "labeled/3Dircadb1.7/PATIENT_DICOM.zip"
    vol = read_volume(path)
    _check_against_headers(vol, _zip_headers(path))
    assert vol.shape == (151, 512, 512)


# ---- CHAOS (DICOM folder + PNG masks in file-name order) -----------------------------------


@pytest.fixture(scope="session")
def chaos(shared_data):
    return read_volume(shared_data / "labeled/chaos-ct-sample/DICOM_anon")


def test_chaos_geometry(chaos, shared_data):
    folder = shared_data / "labeled/chaos-ct-sample/DICOM_anon"
    _check_against_headers(chaos, [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())])
    ref = _check_against_gdcm(chaos, folder)
    assert np.array_equal(sitk.GetArrayFromImage(ref).astype(np.int16), chaos.array)
    assert chaos.shape == (78, 512, 512) and chaos.spacing[0] == pytest.approx(2.0)


def test_chaos_liver_hu_from_ground_truth(chaos, shared_data):
    from PIL import Image

    ground = sorted((shared_data / "labeled/chaos-ct-sample/Ground").glob("liver_GT_*.png"))
    by_name = sorted(chaos.metadata["dicom_files"])  # the organisers' rule: mask k <-> k-th file by name
    z_of = {f: z for z, f in enumerate(chaos.metadata["dicom_files"])}
    assert len(ground) == len(by_name) == chaos.shape[0]
    liver = np.zeros(chaos.shape, bool)
    for png, fname in zip(ground, by_name):
        liver[z_of[fname]] = np.array(Image.open(png)) > 0
    assert 50 <= float(chaos.array[liver].mean()) <= 200


def test_real_mask_round_trip_keeps_geometry(chaos, tmp_path):
    labels = (chaos.array > 0).astype(np.uint8)
    p = write_mask(chaos, labels, tmp_path / "mask.nii.gz")
    img = sitk.ReadImage(str(p))
    assert img.GetSize() == chaos.shape[::-1]
    assert np.allclose(img.GetSpacing(), chaos.spacing[::-1], atol=1e-5)
    assert np.allclose(img.GetOrigin(), chaos.origin, atol=1e-4)
    assert np.allclose(img.GetDirection(), chaos.direction.ravel(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(img), labels)
    back = read_volume(p)
    assert np.allclose(back.origin, chaos.origin, atol=1e-4) and np.allclose(back.spacing, chaos.spacing, atol=1e-5)


# ---- TotalSegmentator example (JPEG 2000 DICOM, NIfTI) -------------------------------------


def test_jpeg2000_series_decodes(shared_data):
    folder = shared_data / "unlabeled/totalsegmentator-example/example_ct_dicom"
    vol = read_volume(folder)
    files = sorted(folder.iterdir())
    headers = [pydicom.dcmread(p) for p in files]
    assert all(h.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless for h in headers)
    _check_against_headers(vol, headers)
    ref = _check_against_gdcm(vol, folder)
    assert np.array_equal(sitk.GetArrayFromImage(ref).astype(np.int16), vol.array)
    h = headers[0]
    z = vol.metadata["dicom_files"].index(files[0].name)
    assert np.array_equal(vol.array[z], (h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept)).astype(np.int16))
    assert vol.metadata["dicom"]["transfer_syntaxes"] == [pydicom.uid.JPEG2000Lossless]


def test_zip_built_from_folder_reads_identically(shared_data, tmp_path):
    folder = shared_data / "unlabeled/totalsegmentator-example/example_ct_dicom"
    z = shutil.make_archive(str(tmp_path / "example_ct_dicom"), "zip", folder.parent, folder.name)
    a, b = read_volume(folder), read_volume(z)
    assert np.array_equal(a.array, b.array)
    assert (a.spacing, a.origin) == (b.spacing, b.origin) and np.array_equal(a.direction, b.direction)


@pytest.mark.parametrize(
    "rel",
    [
        "unlabeled/totalsegmentator-example/example_ct.nii.gz",
        "unlabeled/totalsegmentator-example/example_ct_sm.nii.gz",
        "unlabeled/totalsegmentator-example/example_seg_totalsegmentator_prediction.nii.gz",
        "labeled/lits-117-crop/volume-117.nii.gz",
        "labeled/lits-117-crop/segmentation-117.nii.gz",
    ],
)
def test_nifti_geometry_from_header(shared_data, rel):
    path = shared_data / rel
    vol = read_volume(path)
    img = nib.load(str(path))
    assert vol.shape == tuple(img.shape[:3])[::-1]
    assert vol.spacing == pytest.approx(tuple(float(z) for z in img.header.get_zooms()[:3])[::-1], abs=1e-5)
    assert np.allclose(vol.affine_ras(), img.affine, atol=1e-4)
    ref = sitk.ReadImage(str(path))
    assert np.allclose(ref.GetOrigin(), vol.origin, atol=1e-3) and np.allclose(ref.GetDirection(), vol.direction.ravel(), atol=1e-5)
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)


def test_lits_crop_hu_in_liver(shared_data):
    ct = read_volume(shared_data / "labeled/lits-117-crop/volume-117.nii.gz")
    seg = read_volume(shared_data / "labeled/lits-117-crop/segmentation-117.nii.gz")
    assert set(np.unique(seg.array)) == {0, 1, 2}
    assert 50 <= float(ct.array[seg.array == 1].mean()) <= 200


# ---- dcmqi (CT + DICOM SEG in one folder, NRRD) ------------------------------------------


def test_dcmqi_folder_picks_ct_and_names_the_seg(shared_data):
    folder = shared_data / "unlabeled/dcmqi-ct-3slice"
    vol = read_volume(folder)
    assert vol.shape == (3, 512, 512) and vol.modality == "CT"
    assert [s["kind"] for s in vol.metadata["other_series"]] == ["SEG"]
    _check_against_headers(vol, [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("ct-*.dcm"))])
    nrrd = read_volume(folder / "liver_seg.nrrd")
    assert nrrd.shape == vol.shape and np.allclose(nrrd.origin, vol.origin, atol=1e-3)
    with pytest.raises(NotCTError, match="DICOM SEG"):
        read_volume(folder / "liver.dcm")


# ---- 2D JPEG slices -------------------------------------------------------------------------


def test_msd_jpeg_slices(shared_data):
    from PIL import Image

    root = shared_data / "slices2d/msd-liver-jpg"
    paths = sorted(root.glob("images/*.jpg")) + sorted(root.glob("masks/*.jpg"))
    assert len(paths) >= 2
    for p in paths:
        vol = read_volume(p)
        w, h = Image.open(p).size
        assert vol.shape == (1, h, w) and vol.spacing is None and not vol.is_hu and vol.array.dtype == np.uint8
