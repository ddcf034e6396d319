"""Readers and writers on synthetic data: formats by content, geometry kept through round trips."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from liverseg.io import (
    Volume,
    describe,
    format_description,
    list_series,
    load_source_datasets,
    read_dicom_series,
    read_volume,
    sniff_format,
    write_mask,
    write_volume,
)
from liverseg.testing import phantom, phantom_2d, write_dicom_series

OBLIQUE = np.array(
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # sagittal-ish: columns are the x, y, z index axes
)


@pytest.fixture(scope="module")
def pair():
    ct, lab = phantom(shape=(8, 64, 64), spacing=(2.5, 1.25, 1.5), lesions=((3.0, None),), noise_hu=5.0)
    ct.origin = (-40.0, 12.5, 300.0)
    lab.origin = ct.origin
    return ct, lab


def _same_geometry(a: Volume, b: Volume) -> None:
    assert a.shape == b.shape
    assert np.allclose(a.spacing, b.spacing, atol=1e-5)
    assert np.allclose(a.origin, b.origin, atol=1e-4)
    assert np.allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_volume_round_trip(tmp_path, pair, suffix):
    ct, _ = pair
    p = write_volume(ct, tmp_path / f"ct{suffix}")
    back = read_volume(p)
    _same_geometry(ct, back)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, ct.array)
    assert back.metadata["format"] == sniff_format(p)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_mask_round_trip_with_sitk_and_nibabel(tmp_path, pair, suffix):
    ct, lab = pair
    ct = ct.with_array(ct.array, direction=OBLIQUE)
    p = write_mask(ct, lab.array, tmp_path / f"mask{suffix}")
    img = sitk.ReadImage(str(p))
    assert img.GetSize() == ct.shape[::-1]
    assert np.allclose(img.GetSpacing(), ct.spacing[::-1])
    assert np.allclose(img.GetOrigin(), ct.origin, atol=1e-4)
    assert np.allclose(np.reshape(img.GetDirection(), (3, 3)), ct.direction, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(img), lab.array)
    assert sitk.GetArrayFromImage(img).dtype == np.uint8
    if suffix == ".nii.gz":
        n = nib.load(str(p))
        assert np.allclose(n.affine, ct.affine_ras(), atol=1e-4)
        assert int(n.header["sform_code"]) == 1 and int(n.header["qform_code"]) == 1


def test_write_mask_checks_its_arguments(tmp_path, pair):
    ct, lab = pair
    with pytest.raises(ValueError, match="do not match"):
        write_mask(ct, lab.array[:-1], tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="0..255"):
        write_mask(ct, lab.array.astype(np.int16) - 5, tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="integers"):
        write_mask(ct, lab.array * 0.5, tmp_path / "m.nii.gz")
    with pytest.raises(ValueError, match="use .nii"):
        write_mask(ct, lab.array, tmp_path / "m.tif")
    with pytest.raises(ValueError, match="PNG holds one 2D slice"):
        write_mask(ct, lab.array, tmp_path / "m.png")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_nifti_geometry_matches_nibabel_header(tmp_path):
    """An affine written by nibabel (RAS, oblique) is read as the LPS geometry SimpleITK sees."""
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7, 0.8, 3.0])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    p = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(p))
    vol = read_volume(p)
    ref = sitk.ReadImage(str(p))
    assert vol.shape == (7, 6, 5) and np.array_equal(vol.array, data.transpose(2, 1, 0))
    assert np.allclose(vol.spacing, ref.GetSpacing()[::-1])
    assert np.allclose(vol.origin, ref.GetOrigin())
    assert np.allclose(vol.direction.ravel(), ref.GetDirection())
    assert np.allclose(vol.affine_ras(), aff)


def test_nifti_float_ct_becomes_int16_and_2d_nifti_is_a_slice(tmp_path):
    p = tmp_path / "f.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), -1000.0, np.float32), np.eye(4)), str(p))
    assert read_volume(p).array.dtype == np.int16
    p2 = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.int16), np.eye(4)), str(p2))
    assert read_volume(p2).shape == (1, 5, 4)


def test_dicom_series_sorted_by_position_with_rescale(tmp_path, pair):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "s", shuffle_names=True)
    vol = read_volume(tmp_path / "s")
    _same_geometry(ct, vol)
    assert vol.array.dtype == np.int16 and np.array_equal(vol.array, ct.array)
    assert vol.modality == "CT" and vol.is_hu and vol.metadata["format"] == "dicom-folder"
    assert vol.metadata["warnings"] == []


def test_oblique_dicom_series_geometry(tmp_path, pair):
    ct, _ = pair
    obl = ct.with_array(ct.array, direction=OBLIQUE)
    write_dicom_series(obl, tmp_path / "o")
    vol = read_volume(tmp_path / "o")
    _same_geometry(obl, vol)
    ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "o")))
    assert np.allclose(vol.direction.ravel(), ref.GetDirection(), atol=1e-6)
    assert np.allclose(vol.origin, ref.GetOrigin(), atol=1e-3)


def test_rle_compressed_series(tmp_path, pair):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "rle", transfer_syntax=pydicom.uid.RLELossless)
    vol = read_volume(tmp_path / "rle")
    assert vol.metadata["dicom"]["transfer_syntaxes"] == [pydicom.uid.RLELossless]
    assert np.array_equal(vol.array, ct.array)


def test_jpeg_lossless_slice():
    """pydicom's own JPEG lossless (process 14) test file decodes through the libjpeg plugin."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg_gdcm.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    vol = read_volume(path, force=True)  # secondary capture (OT), RGB
    assert vol.shape == (1, ds.Rows, ds.Columns) and not vol.is_hu
    rgb = ds.pixel_array.astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(vol.array[0], grey, atol=1e-3)


def test_several_series_pick_ct_with_most_slices(tmp_path, pair):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "study" / "big", series_description="big")
    small = Volume(array=ct.array[:3], spacing=ct.spacing)
    uid_small = pydicom.uid.generate_uid()
    write_dicom_series(small, tmp_path / "study" / "small", series_uid=uid_small, series_description="small")
    write_dicom_series(ct, tmp_path / "study" / "mr", modality="MR", series_description="mr")
    vol = read_volume(tmp_path / "study")
    assert vol.shape == ct.shape and vol.metadata["dicom"]["series_description"] == "big"
    others = {s["description"] for s in vol.metadata["other_series"]}
    assert others == {"small", "mr"}
    assert any("holds 3 series" in w and uid_small in w for w in vol.metadata["warnings"])
    chosen = read_volume(tmp_path / "study", series_uid=uid_small)
    assert chosen.shape == (3, 64, 64) and chosen.metadata["series_uid"] == uid_small
    assert {s["description"] for s in list_series(tmp_path / "study")} == {"big", "small", "mr"}


def test_zip_reads_like_folder(tmp_path, pair):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "s" / "series")
    z = shutil.make_archive(str(tmp_path / "s"), "zip", tmp_path / "s")
    a, b = read_volume(tmp_path / "s"), read_volume(z)
    _same_geometry(a, b)
    assert np.array_equal(a.array, b.array) and b.metadata["format"] == "dicom-zip"
    assert b.metadata["dicom_files"][0].startswith("series/")


def test_read_dicom_series_returns_ordered_headers(tmp_path, pair):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "s")
    vol, dsets = read_dicom_series(tmp_path / "s")
    assert len(dsets) == ct.shape[0] and "PixelData" not in dsets[0]
    z = [float(d.ImagePositionPatient[2]) for d in dsets]
    assert z == sorted(z)
    assert all(d.SeriesInstanceUID == vol.metadata["dicom"]["series_uid"] for d in dsets)
    heads = load_source_datasets(tmp_path / "s")
    assert [d.SOPInstanceUID for d in heads] == [d.SOPInstanceUID for d in dsets]


def test_no_patient_data_in_metadata_or_description(tmp_path, pair, caplog):
    ct, _ = pair
    write_dicom_series(ct, tmp_path / "s")
    with caplog.at_level("DEBUG"):
        info = describe(tmp_path / "s")
        text = format_description(info) + repr(read_volume(tmp_path / "s").metadata)
    for secret in ("Phantom^Liverseg", "PHANTOM-0001"):
        assert secret not in text and secret not in caplog.text


def test_single_dicom_slice_is_2d(tmp_path, pair):
    ct, _ = pair
    paths = write_dicom_series(ct, tmp_path / "s", shuffle_names=False)
    vol = read_volume(paths[2])
    assert vol.shape == (1, 64, 64) and vol.is_2d and vol.spacing == ct.spacing
    assert np.array_equal(vol.array[0], ct.array[2])


def test_png_and_jpeg_slices(tmp_path):
    from PIL import Image

    ct, lab = phantom_2d(shape=(64, 64), spacing=(2.0, 2.0), lesions=((5.0, None),))
    grey = np.clip((ct.array[0] + 160) / 400 * 255, 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(grey.astype(np.uint16) * 200).save(tmp_path / "g16.png")
    Image.fromarray(np.stack([grey, grey // 2, grey // 3], -1)).save(tmp_path / "colour.png")
    g = read_volume(tmp_path / "g.png")
    assert g.shape == (1, 64, 64) and g.spacing is None and not g.is_hu and np.array_equal(g.array[0], grey)
    j = read_volume(tmp_path / "rgb.jpg")
    assert j.array.dtype == np.uint8 and np.abs(j.array[0].astype(int) - grey).mean() < 3
    g16 = read_volume(tmp_path / "g16.png")
    assert g16.array.dtype == np.uint16 and np.array_equal(g16.array[0], grey.astype(np.uint16) * 200)
    c = read_volume(tmp_path / "colour.png")
    assert any("colour" in w for w in c.metadata["warnings"])
    # content, not the name, decides
    shutil.copy(tmp_path / "g.png", tmp_path / "misnamed.jpg")
    assert read_volume(tmp_path / "misnamed.jpg").metadata["format"] == "png"
    # a 2D mask goes back as PNG with the raw labels
    out = write_mask(g, lab.array[0], tmp_path / "mask.png")
    assert np.array_equal(np.array(Image.open(out)), lab.array[0])


def test_describe_and_text(tmp_path, pair):
    ct, _ = pair
    p = write_volume(ct, tmp_path / "ct.nii.gz")
    info = describe(p)
    assert info["shape_zyx"] == list(ct.shape) and info["spacing_mm_zyx"] == list(ct.spacing)
    assert info["orientation"] == "LPS" and info["is_hu"]
    assert info["intensity_min"] == ct.array.min() and info["intensity_max"] == ct.array.max()
    text = format_description(info)
    assert "8 x 64 x 64" in text and "2.5 x 1.25 x 1.5 mm" in text and "HU" in text
