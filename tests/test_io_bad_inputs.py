"""Every bad input gets its own LiversegError subclass and a message that says what to do."""

from __future__ import annotations

import gzip
import os
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from liverseg.errors import (
    ArchiveError,
    CorruptFileError,
    DimensionError,
    EmptyFileError,
    InputError,
    NoImagesError,
    NotCTError,
    UnsupportedFormatError,
)
from liverseg.io import ArchiveLimits, extract_zip, read_volume
from liverseg.testing import phantom, write_dicom_series


@pytest.fixture(scope="module")
def tiny_ct():
    ct, _ = phantom(shape=(5, 64, 64), spacing=(2.0, 1.0, 1.0), lesions=(), noise_hu=0.0)
    return ct


def _nifti(path, shape, dtype=np.int16):
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), str(path))
    return path


def test_all_errors_are_input_errors():
    for cls in (ArchiveError, CorruptFileError, DimensionError, EmptyFileError, NoImagesError, NotCTError):
        assert issubclass(cls, InputError)


def test_empty_file(tmp_path):
    p = tmp_path / "scan.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty"):
        read_volume(p)


def test_missing_path(tmp_path):
    from liverseg.io import PathNotFoundError

    with pytest.raises(PathNotFoundError, match="does not exist"):
        read_volume(tmp_path / "nope.nii")
    assert issubclass(PathNotFoundError, FileNotFoundError)


def test_truncated_nii_gz(tmp_path):
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16), np.eye(4)), str(full))
    data = full.read_bytes()
    p = tmp_path / "trunc.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_volume(p)


def test_truncated_uncompressed_nii(tmp_path):
    full = _nifti(tmp_path / "full.nii", (10, 10, 10))
    p = tmp_path / "trunc.nii"
    p.write_bytes(full.read_bytes()[:600])
    with pytest.raises(CorruptFileError, match="truncated"):
        read_volume(p)


def test_gzip_cut_inside_header(tmp_path):
    full = _nifti(tmp_path / "full.nii.gz", (10, 10, 10))
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(full.read_bytes()[:30])
    with pytest.raises(CorruptFileError, match="damaged|truncated"):
        read_volume(p)


def test_nifti_4d(tmp_path):
    p = _nifti(tmp_path / "fmri.nii.gz", (8, 8, 8, 3))
    with pytest.raises(DimensionError, match="4D image of size 8x8x8x3"):
        read_volume(p)


def test_nifti_4d_with_one_volume_is_read(tmp_path):
    p = _nifti(tmp_path / "one.nii.gz", (8, 9, 10, 1))
    assert read_volume(p).shape == (10, 9, 8)


def test_nifti_1d(tmp_path):
    p = _nifti(tmp_path / "line.nii", (7,))
    with pytest.raises(DimensionError, match="1D image"):
        read_volume(p)


def test_text_renamed_nii(tmp_path):
    p = tmp_path / "notes.nii"
    p.write_text("patient report: liver looks fine\n" * 20)
    with pytest.raises(CorruptFileError, match="is named like NIfTI but holds plain text"):
        read_volume(p)


def test_binary_junk_renamed_nii_gz(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CorruptFileError, match="content is not gzip-compressed NIfTI"):
        read_volume(p)


def test_unknown_format(tmp_path):
    p = tmp_path / "data.bin"
    p.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UnsupportedFormatError, match="unrecognised file format"):
        read_volume(p)


def test_absurd_dimensions_refused_before_allocating(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))  # 2.7e13 voxels, 54 TB of int16
    hdr.set_data_dtype(np.int16)
    p = tmp_path / "absurd.nii"
    p.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    with pytest.raises(DimensionError, match="claims 30000x30000x30000 voxels"):
        read_volume(p)


def test_absurd_dimensions_in_gz(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((20000, 20000, 20000))
    hdr.set_data_dtype(np.int16)
    p = tmp_path / "absurd.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000))
    with pytest.raises(DimensionError, match="far beyond any CT"):
        read_volume(p)


def test_dicom_without_pixel_data(tmp_path, tiny_ct):
    write_dicom_series(tiny_ct, tmp_path / "hdr", with_pixels=False)
    with pytest.raises(NoImagesError, match="no pixel data"):
        read_volume(tmp_path / "hdr")
    # a single such file too
    one = sorted((tmp_path / "hdr").iterdir())[0]
    with pytest.raises(NoImagesError, match="no pixel data"):
        read_volume(one)


def _seg_like(path, modality, sop_class):
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    if modality == "SEG":
        ds.Rows = ds.Columns = 4
        ds.NumberOfFrames = 1
        ds.BitsAllocated = 1
        ds.PixelData = b"\0\0"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_seg_given_as_scan(tmp_path):
    p = _seg_like(tmp_path / "seg.dcm", "SEG", "1.2.840.10008.5.1.4.1.1.66.4")
    with pytest.raises(NotCTError, match="DICOM SEG .* not the scan itself"):
        read_volume(p)


def test_rtstruct_given_as_scan(tmp_path):
    p = _seg_like(tmp_path / "rt.dcm", "RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3")
    with pytest.raises(NotCTError, match="RTSTRUCT"):
        read_volume(p)


def test_mr_refused_unless_forced(tmp_path, tiny_ct):
    write_dicom_series(tiny_ct, tmp_path / "mr", modality="MR")
    with pytest.raises(NotCTError, match="modality MR.*force"):
        read_volume(tmp_path / "mr")
    vol = read_volume(tmp_path / "mr", force=True)
    assert vol.modality == "MR" and not vol.is_hu and vol.shape == tiny_ct.shape
    assert any("force" in w for w in vol.metadata["warnings"])


def test_missing_slice_warns_with_the_gap(tmp_path, tiny_ct):
    write_dicom_series(tiny_ct, tmp_path / "gap", skip_slices=[2])
    vol = read_volume(tmp_path / "gap")
    assert vol.shape[0] == 4
    gap = [w for w in vol.metadata["warnings"] if w.startswith("gap")]
    assert len(gap) == 1 and "4.00 mm between slices 1 and 2" in gap[0] and "about 1 slice(s) missing" in gap[0]


def test_inconsistent_spacing_warns(tmp_path, tiny_ct):
    paths = write_dicom_series(tiny_ct, tmp_path / "uneven", shuffle_names=False)
    ds = pydicom.dcmread(paths[-1])
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], float(ds.ImagePositionPatient[2]) + 0.6]
    ds.save_as(paths[-1])
    vol = read_volume(tmp_path / "uneven")
    assert any("inconsistent slice spacing" in w and "2.600" in w for w in vol.metadata["warnings"])


def test_duplicate_slice_positions(tmp_path, tiny_ct):
    from liverseg.errors import SeriesError

    paths = write_dicom_series(tiny_ct, tmp_path / "dup", shuffle_names=False)
    ds = pydicom.dcmread(paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(paths[0]).ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(SeriesError, match="same position"):
        read_volume(tmp_path / "dup")


def test_damaged_instance_number_keeps_file_order(tmp_path, tiny_ct):
    """No positions, so slices are ordered by InstanceNumber; a slice whose IS value is junk (found by the
    fuzzer: a control byte where digits belong) keeps its place instead of crashing the reader."""
    paths = write_dicom_series(tiny_ct, tmp_path / "s", shuffle_names=False)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    raw = bytearray(paths[2].read_bytes())
    at = raw.find(b"\x20\x00\x13\x00IS")
    assert at > 0, "the writer no longer stores InstanceNumber as explicit-VR IS"
    length = int.from_bytes(raw[at + 6 : at + 8], "little")
    raw[at + 8 : at + 8 + length] = b"\x01" * length
    paths[2].write_bytes(bytes(raw))
    vol = read_volume(tmp_path / "s")
    assert vol.shape == tiny_ct.array.shape
    assert any("InstanceNumber missing or unreadable" in w for w in vol.metadata["warnings"])
    np.testing.assert_array_equal(vol.array[[0, 1, 3, 4]], tiny_ct.array[[0, 1, 3, 4]])


def test_damaged_number_of_frames_is_a_corrupt_file(tmp_path, tiny_ct):
    """A field that decoding depends on holding junk is a damaged header, said as such (not a ValueError)."""
    paths = write_dicom_series(tiny_ct, tmp_path / "s", shuffle_names=False)
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 1
    ds.save_as(paths[0])
    raw = bytearray(paths[0].read_bytes())
    at = raw.find(b"\x28\x00\x08\x00IS")
    length = int.from_bytes(raw[at + 6 : at + 8], "little")
    raw[at + 8 : at + 8 + length] = b"\x01" * length
    paths[0].write_bytes(bytes(raw))
    for target in (paths[0], tmp_path / "s"):
        with pytest.raises(CorruptFileError, match="NumberOfFrames holds"):
            read_volume(target)


def test_folder_with_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="holds no DICOM files"):
        read_volume(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("nothing here")
    with pytest.raises(NoImagesError, match="holds no DICOM files"):
        read_volume(tmp_path / "docs")


def test_unknown_series_uid(tmp_path, tiny_ct):
    from liverseg.errors import SeriesError

    write_dicom_series(tiny_ct, tmp_path / "s")
    with pytest.raises(SeriesError, match="series 1.2.3 is not in .*found are"):
        read_volume(tmp_path / "s", series_uid="1.2.3")


# ---- zip archives -------------------------------------------------------------------------


def test_zip_with_parent_paths(tmp_path):
    p = tmp_path / "evil.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("series/IM0001", b"x" * 10)
        zf.writestr("../../etc/evil", b"pwned")
    with pytest.raises(ArchiveError, match="climbs out"):
        read_volume(p)
    assert not (tmp_path.parent / "etc").exists()


def test_zip_with_absolute_path(tmp_path):
    p = tmp_path / "abs.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("/tmp/evil", b"pwned")
    with pytest.raises(ArchiveError, match="absolute path"):
        extract_zip(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_with_symlink(tmp_path):
    p = tmp_path / "link.zip"
    with zipfile.ZipFile(p, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        read_volume(p)


def test_zip_bomb_by_ratio(tmp_path):
    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros", "w") as fh:
            chunk = b"\0" * (1 << 20)
            for _ in range(24):
                fh.write(chunk)
    assert os.path.getsize(p) < 100_000
    with pytest.raises(ArchiveError, match="zip bomb"):
        read_volume(p)


def test_zip_bomb_by_declared_size(tmp_path):
    """A central directory that claims terabytes is refused before anything is extracted."""
    p = tmp_path / "liar.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for k in range(3):
            zf.writestr(f"f{k}", b"\0" * 1000)
        for info in zf.filelist:
            info.file_size = 2 * 1024**4  # the central directory (written at close) now lies
    with pytest.raises(ArchiveError, match="zip bomb"):
        read_volume(p)


def test_zip_limits_on_count_and_size(tmp_path):
    p = tmp_path / "many.zip"
    with zipfile.ZipFile(p, "w") as zf:
        for k in range(12):
            zf.writestr(f"f{k}", b"a" * 100)
    with pytest.raises(ArchiveError, match="12 entries, more than the limit of 10"):
        extract_zip(p, tmp_path / "o1", limits=ArchiveLimits(max_files=10))
    with pytest.raises(ArchiveError, match="expands to more than"):
        extract_zip(p, tmp_path / "o2", limits=ArchiveLimits(max_total_bytes=1000))
    assert len(extract_zip(p, tmp_path / "o3")) == 12
    with pytest.raises(ValueError, match="max_files"):
        ArchiveLimits(max_files=0)


def test_corrupt_zip(tmp_path):
    p = tmp_path / "broken.zip"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(CorruptFileError, match="not a readable zip"):
        read_volume(p)


def test_zip_without_dicom(tmp_path):
    p = tmp_path / "docs.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "no images here")
    with pytest.raises(NoImagesError, match="holds no DICOM"):
        read_volume(p)


def test_truncated_png(tmp_path):
    from PIL import Image

    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(full)
    p = tmp_path / "cut.png"
    p.write_bytes(full.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="truncated or damaged"):
        read_volume(p)
