"""Readers bound what a header may make them allocate, and refuse headers that would give wrong answers.

Issue 18: items 2 (tiny files that exhaust the server), 5 (silent wrong answers) and 6
(crashes) at the depth of the reader. Every file here is made by code (tests/bad_inputs.py).
"""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest

import bad_inputs as bi
from liverseg.cli import main
from liverseg.errors import ArchiveError, CorruptFileError, DimensionError, NotCTError
from liverseg.io import ArchiveLimits, extract_zip, read_volume
from liverseg.io.archive import check_zip
from liverseg.io.limits import check_geometry


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    except Exception:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# --------------------------------------------------------------------------- item 2: bounded before allocating


def test_50_mm_voxels_are_refused_before_any_work(tmp_path):
    data = np.zeros((100, 100, 100), np.int16)
    p = bi.write(tmp_path / "big-voxels.nii.gz", bi.gz(bi.nifti_bytes(data, zooms=(50.0, 50.0, 50.0))))
    assert p.stat().st_size < 100_000
    t0 = time.perf_counter()
    with pytest.raises(DimensionError, match="larger than 30 mm"):
        read_volume(p)
    assert time.perf_counter() - t0 < 2.0


def test_extent_beyond_any_ct_is_refused(tmp_path):
    p = bi.write(tmp_path / "long.nii", bi.nifti_bytes(np.zeros((700, 16, 16), np.int16), zooms=(2.0, 2.0, 2.0)))
    with pytest.raises(DimensionError, match="1400 x 32 x 32|mm along x"):
        read_volume(p)


def test_87_bytes_claiming_17_gigabytes_is_refused_without_allocating(tmp_path):
    hdr = bi.header_only_nifti((1600, 1600, 800), datatype=64, bitpix=64)  # float64: 16.4 GB
    p = bi.write(tmp_path / "claim.nii.gz", bi.gz(hdr))
    assert p.stat().st_size < 200
    peak = _peak_mib(lambda: read_volume(p))
    with pytest.raises(DimensionError, match="GiB"):
        read_volume(p)
    assert peak < 50


def test_gzip_stream_longer_than_its_header_says_is_a_bomb(tmp_path):
    raw = bi.nifti_bytes(np.zeros((20, 20, 4), np.int16), tail=bytes(40 * 2**20))
    p = bi.write(tmp_path / "bomb.nii.gz", bi.gz(raw))
    assert p.stat().st_size < 100_000
    with pytest.raises(CorruptFileError, match="gzip bomb"):
        read_volume(p)


def test_truncated_gzip_is_refused_before_nibabel_allocates(tmp_path):
    hdr = bi.header_only_nifti((512, 512, 400))  # 200 MiB claimed, 352 bytes there
    p = bi.write(tmp_path / "short.nii.gz", bi.gz(hdr))
    peak = _peak_mib(lambda: read_volume(p))
    with pytest.raises(CorruptFileError, match="truncated"):
        read_volume(p)
    assert peak < 50


def test_png_claiming_12000_squared_pixels_is_refused_fast(tmp_path):
    p = bi.write(tmp_path / "bomb.png", bi.png_claiming(12000, 12000))
    t0 = time.perf_counter()
    peak = _peak_mib(lambda: read_volume(p))
    with pytest.raises(DimensionError, match="decompression bomb"):
        read_volume(p)
    assert time.perf_counter() - t0 < 2.0 and peak < 50
    # under Pillow's own limit but over liverseg's (4096 x 4096)
    with pytest.raises(DimensionError, match="million pixels"):
        read_volume(bi.write(tmp_path / "large.png", bi.png_claiming(6000, 6000)))


def test_zip_of_many_members_each_under_the_ratio_threshold_is_refused_in_total(tmp_path):
    import zipfile

    p = bi.write(tmp_path / "bomb.zip", bi.zip_bomb(40, 2 * 2**20))  # 80 MiB of zeros in ~80 KiB
    limits = ArchiveLimits(ratio_min_bytes=16 * 2**20)  # each member (2 MiB) is below it
    with zipfile.ZipFile(p) as zf, pytest.raises(ArchiveError, match="in total"):
        check_zip(zf, limits=limits)
    with pytest.raises(ArchiveError, match="zip bomb"):
        extract_zip(p, tmp_path / "out", limits=limits)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_stage_grid_bound_refuses_before_resampling(tiny_bundle_3d, monkeypatch):
    import liverseg.inference.predictor as predictor_module
    from liverseg.inference import Predictor
    from liverseg.testing import phantom

    monkeypatch.setattr(predictor_module, "MAX_STAGE_VOXELS", 1000)
    ct, _ = phantom(shape=(10, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=())
    with pytest.raises(DimensionError, match="would resample this scan"):
        Predictor(tiny_bundle_3d, model_2d=None, threads=1).predict(ct)


# --------------------------------------------------------------------------- item 5: no silent wrong answers


def test_gzip_with_flipped_bytes_fails_its_crc(tmp_path):
    good = bi.gz(bi.nifti_bytes(bi.phantom_xyz()))
    assert read_volume(bi.write(tmp_path / "good.nii.gz", good)).shape == (8, 40, 40)
    p = bi.write(tmp_path / "flipped.nii.gz", bi.flip_bytes(good))
    with pytest.raises(CorruptFileError, match="integrity|damaged|truncated"):
        read_volume(p)


def test_uint16_holding_hu_plus_1024_is_shifted_with_a_warning(tmp_path):
    hu = bi.phantom_xyz()
    stored = (hu.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    vol = read_volume(bi.write(tmp_path / "u16.nii", bi.nifti_bytes(stored)))
    np.testing.assert_array_equal(vol.array, hu.clip(-1024).transpose(2, 1, 0))
    assert any("HU + 1024" in w for w in vol.metadata["warnings"])


@pytest.mark.parametrize("zooms", [(0.0, 1.0, 1.0), (1.0, 1.0, 0.0)])
def test_pixdim_zero_is_refused_not_taken_as_1_mm(tmp_path, zooms):
    raw = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16),
                         patch={bi.PIXDIM + 4: bi.f32(*zooms), bi.QFORM_CODE: bi.i16(0, 0)})
    with pytest.raises(CorruptFileError, match="pixdim"):
        read_volume(bi.write(tmp_path / "pixdim0.nii", raw))


def test_vox_offset_zero_is_refused(tmp_path):
    raw = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={bi.VOX_OFFSET: bi.f32(0.0)})
    with pytest.raises(CorruptFileError, match="vox_offset"):
        read_volume(bi.write(tmp_path / "off0.nii", raw))


def test_micrometre_voxels_are_refused(tmp_path):
    raw = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={bi.XYZT_UNITS: bytes([3])})  # micron
    with pytest.raises(DimensionError, match="smaller than 0.05 mm"):
        read_volume(bi.write(tmp_path / "micron.nii", raw))


def test_singular_sform_is_refused_or_replaced_by_the_qform(tmp_path):
    singular = {bi.SFORM_CODE: bi.i16(1), bi.SROW_X: bi.f32(2, 0, 0, 0), bi.SROW_Y: bi.f32(2, 0, 0, 0),
                bi.SROW_Z: bi.f32(0, 0, 4, 0)}
    only_sform = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={**singular, bi.QFORM_CODE: bi.i16(0)})
    with pytest.raises(CorruptFileError, match="singular or sheared"):
        read_volume(bi.write(tmp_path / "singular.nii", only_sform))
    with_qform = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={**singular, bi.QFORM_CODE: bi.i16(1)})
    vol = read_volume(bi.write(tmp_path / "singular-q.nii", with_qform))
    assert vol.spacing == pytest.approx((4.0, 2.0, 2.0))
    assert any("qform" in w for w in vol.metadata["warnings"])


@pytest.mark.parametrize("slope, match", [(1000.0, "beyond what a CT can hold"), (-1.0, "slope of zero or below"),
                                          (0.0, "slope of zero or below")])
def test_dicom_rescale_slope_that_clips_or_inverts_is_refused(tmp_path, slope, match):
    def edit(ds, k):
        ds.RescaleSlope = slope

    bi.dicom_series(tmp_path / "s", edit=edit)
    with pytest.raises(CorruptFileError, match=match):
        read_volume(tmp_path / "s")


def test_noise_picture_is_refused_as_not_a_ct_slice(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    with pytest.raises(NotCTError, match="random noise"):
        read_volume(bi.write(tmp_path / "noise.png", bi.png_of(noise)))


def test_one_voxel_image_is_refused_before_segmenting(tmp_path, tiny_bundle_3d):
    from liverseg.inference import Predictor

    vol = read_volume(bi.write(tmp_path / "one.nii", bi.nifti_bytes(np.zeros((1, 1, 2), np.int16))))
    with pytest.raises(DimensionError, match="too few to hold a liver"):
        Predictor(tiny_bundle_3d, model_2d=None).predict(vol)


def test_zero_image_orientation_gives_valid_json_not_nan(tmp_path, capsys):
    def edit(ds, k):
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]

    bi.dicom_series(tmp_path / "s", edit=edit)
    assert main(["info", "--json", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    info = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert any("ImageOrientationPatient" in w for w in info["warnings"])


# --------------------------------------------------------------------------- item 6: refusals, not crashes


def test_rgb_nifti_is_refused_with_a_reason(tmp_path):
    import nibabel as nib

    rgb = np.zeros((20, 20, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    p = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(p))
    with pytest.raises(DimensionError, match="colour"):
        read_volume(p)
    assert main(["info", str(p)]) == 2


def test_ten_metre_voxels_are_bad_input_not_internal(tmp_path):
    def edit(ds, k):
        ds.PixelSpacing = [10000, 10000]

    bi.dicom_series(tmp_path / "s", edit=edit)
    assert main(["info", str(tmp_path / "s")]) == 2


def test_check_geometry_accepts_real_ct_sizes():
    check_geometry("ct", (987, 512, 512), (1.0, 0.7, 0.7))
    check_geometry("ct", (1, 512, 512), None)
    with pytest.raises(DimensionError):
        check_geometry("ct", (10, 512, 512), (float("nan"), 1, 1))


# --------------------------------------------------------------------------- found by tests/test_fuzz_readers.py


def test_unknown_nifti_unit_code_is_a_corrupt_file_not_a_key_error(tmp_path):
    raw = bi.nifti_bytes(np.zeros((20, 20, 5), np.int16), patch={bi.XYZT_UNITS: bytes([59])})
    with pytest.raises(CorruptFileError, match="xyzt_units 59"):
        read_volume(bi.write(tmp_path / "units.nii", raw))


def test_metaimage_with_negative_ndims_is_refused_before_simpleitk_hangs(tmp_path):
    header = ("ObjectType = Image\nNDims = -5\nDimSize = 3\nElementType = MET_SHORT\n"
              "ElementDataFile = LOCAL\n").encode()
    t0 = time.perf_counter()
    with pytest.raises(CorruptFileError, match="NDims"):
        read_volume(bi.write(tmp_path / "neg.mha", header + bytes(10)))
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("field, value", [("DimSize", "32 32"), ("DimSize", "32 -1 4"), ("DimSize", "a b c"),
                                          ("ElementNumberOfChannels", "0")])
def test_metaimage_counts_are_checked(tmp_path, field, value):
    fields = {"NDims": "3", "DimSize": "32 32 4", "ElementNumberOfChannels": "1"}
    fields[field] = value
    header = "ObjectType = Image\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
    header += "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    with pytest.raises(CorruptFileError, match=field):
        read_volume(bi.write(tmp_path / "x.mha", header.encode() + bytes(2 * 32 * 32 * 4)))


def test_list_of_data_files_with_binary_names_is_refused(tmp_path):
    header = ("ObjectType = Image\nNDims = 3\nDimSize = 4 4 1\nElementType = MET_SHORT\n"
              "ElementDataFile = LIST\n").encode() + b"\x00\x00slice.raw\n"
    with pytest.raises(CorruptFileError, match="binary bytes"):
        read_volume(bi.write(tmp_path / "list.mhd", header))


def test_damaged_dicom_element_is_a_corrupt_file(tmp_path):
    path = bi.dicom_series(tmp_path / "s", n=1)[0]
    import pydicom

    raw = bytearray(path.read_bytes())
    at = raw.find(b"\x18\x00\x50\x00")  # (0018,0050) SliceThickness: give it an unknown VR
    assert at > 0
    raw[at + 4: at + 6] = b"D\x00"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="DICOM header is damaged"):
        read_volume(path)
    del pydicom


def test_info_json_of_an_image_with_nan_is_valid_json(tmp_path, capsys):
    data = np.full((20, 20, 5), 40.0, np.float32)
    data[0, 0, 0] = np.nan
    data[1, 0, 0] = np.inf
    p = bi.write(tmp_path / "nan.nii", bi.nifti_bytes(data))
    assert main(["info", "--json", str(p)]) == 0
    info = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert info["intensity_max"] == 40.0 and info["non_finite_voxels"] == 2
    assert main(["info", str(p)]) == 0 and "2 voxels NaN or infinite" in capsys.readouterr().out
