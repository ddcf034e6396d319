"""DICOM SEG export: loads back with highdicom and pydicom, frames land on the right slices."""

from __future__ import annotations

import dataclasses
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest

from liverseg.errors import SeriesError
from liverseg.io import read_dicom_series
from liverseg.reporting import write_dicom_seg
from liverseg.reporting.dicom_seg import frames_for_sources
from liverseg.testing import phantom
from liverseg.testing.dicom import write_dicom_series


def _labels_by_source(seg_path, datasets):
    seg = hd.seg.segread(seg_path)
    uids = [ds.SOPInstanceUID for ds in datasets]
    return seg, seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2], skip_overlap_checks=True)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0])])
def test_synthetic_series_round_trip(tmp_path, direction):
    ct, lab = phantom(shape=(6, 64, 64), spacing=(2.5, 1.5, 1.5), lesions=((4.0, None),), noise_hu=0)
    ct = ct.with_array(ct.array, direction=direction, origin=(10.0, -20.0, 300.0))
    write_dicom_series(ct, tmp_path / "dcm")
    vol, datasets = read_dicom_series(tmp_path / "dcm")
    # the reader's grid: same arrays as the phantom (it may order slices its own way)
    assert vol.shape == lab.shape and np.array_equal(vol.array, ct.array)
    labels = vol.with_array(lab.array, is_hu=False)
    out = write_dicom_seg(labels, datasets, tmp_path / "seg.dcm", model_name="tiny", model_version="0.1", sha256="cd" * 32)
    assert "PatientBirthDate" not in datasets[0]  # the caller's datasets are left as they were
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Liver", "Liver tumor"]
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SCT Neoplasm
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "tiny" and algo.AlgorithmVersion == "0.1"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    seg, back = _labels_by_source(out, datasets)
    # frame k of each source image equals the mask's slice k, tumor inside liver
    assert np.array_equal(back[..., 0], lab.array >= 1)
    assert np.array_equal(back[..., 1], lab.array == 2)
    # from the folder instead of datasets: the same frames
    run_info = {"model": {"name": "tiny", "sha256": "ef" * 32}}
    out2 = write_dicom_seg(labels, tmp_path / "dcm", tmp_path / "seg2.dcm", run_info=run_info)
    assert np.array_equal(_labels_by_source(out2, datasets)[1], back)
    algo2 = pydicom.dcmread(out2).SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algo2.AlgorithmName == "tiny" and algo2.AlgorithmVersion == "sha256:" + "ef" * 8


def test_mask_from_another_grid_is_refused(tmp_path):
    ct, lab = phantom(shape=(4, 64, 64), spacing=(2.5, 1.5, 1.5), lesions=(), noise_hu=0)
    write_dicom_series(ct, tmp_path / "dcm")
    vol, datasets = read_dicom_series(tmp_path / "dcm")
    shifted = vol.with_array(lab.array, origin=(5.3, 0.0, 0.0), is_hu=False)
    with pytest.raises(SeriesError, match="grid"):
        frames_for_sources(shifted, datasets)
    with pytest.raises(ValueError, match="model_name"):
        write_dicom_seg(vol.with_array(lab.array), datasets, tmp_path / "x.dcm", model_name="", model_version="1", sha256=None)


@pytest.mark.realdata
def test_dcmqi_three_slices_match_the_published_seg(shared_data, tmp_path):
    src = shared_data / "unlabeled" / "dcmqi-ct-3slice"
    for f in src.glob("ct-3slice_*.dcm"):
        shutil.copy(f, tmp_path)
    vol, datasets = read_dicom_series(tmp_path)
    uids = [ds.SOPInstanceUID for ds in datasets]
    ref = hd.seg.segread(src / "liver.dcm")
    liver = ref.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=True, skip_overlap_checks=True,
        ignore_spatial_locations=True,  # dcmqi's SEG does not declare it; the same 3 images
    )
    assert liver.any()
    labels = vol.with_array(liver.astype(np.uint8), is_hu=False)
    labels.array[1, 200:220, 200:220] = 2  # a tumor on the middle slice only
    out = write_dicom_seg(labels, datasets, tmp_path / "seg.dcm", model_name="m", model_version="1", sha256="00" * 32)
    _, back = _labels_by_source(out, datasets)
    assert np.array_equal(back[..., 0], labels.array >= 1)
    assert np.array_equal(back[..., 1], labels.array == 2)
    assert back[..., 1][[0, 2]].sum() == 0
    assert pydicom.dcmread(out).NumberOfFrames == 4  # 3 liver frames + 1 tumor frame (empty ones omitted)


@pytest.mark.realdata
def test_series_with_empty_sop_class_uid_in_the_dataset(shared_data, tmp_path):
    """TotalSegmentator's JPEG 2000 example keeps SOPClassUID only in its file meta."""
    folder = shared_data / "unlabeled" / "totalsegmentator-example" / "example_ct_dicom"
    vol, sources = read_dicom_series(folder)
    assert not str(sources[0].get("SOPClassUID", ""))  # the quirk this test is about
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:10, 100:200, 100:200] = 1
    lab[6:8, 120:140, 120:140] = 2
    seg = hd.seg.segread(write_dicom_seg(vol.with_array(lab), sources, tmp_path / "seg.dcm", model_name="m", model_version="1"))
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID) for ds in sources}
    assert not str(sources[0].get("SOPClassUID", ""))  # the caller's datasets are not changed


def test_frames_follow_world_coordinates_whatever_the_mask_grids_axis_order(tmp_path):
    """The same labels on grids with flipped or swapped in-plane axes (and reversed slices) give the same frames."""
    ct, lab = phantom(shape=(6, 64, 72), spacing=(2.5, 1.5, 1.2), lesions=((3.0, None),), noise_hu=0)
    write_dicom_series(ct, tmp_path / "dcm")
    vol, datasets = read_dicom_series(tmp_path / "dcm")
    labels = vol.with_array(lab.array, is_hu=False)
    expected = frames_for_sources(labels, datasets)
    assert np.array_equal(expected, lab.array)  # identity grid: frame k is slice k
    d, o, (sz, sy, sx) = np.asarray(vol.direction), np.asarray(vol.origin), vol.spacing
    nz, ny, nx = lab.shape
    variants = {
        "x flipped": (lab.array[:, :, ::-1], o + d[:, 0] * sx * (nx - 1), d * [-1, 1, 1], vol.spacing),
        "y flipped": (lab.array[:, ::-1, :], o + d[:, 1] * sy * (ny - 1), d * [1, -1, 1], vol.spacing),
        "z reversed": (lab.array[::-1], o + d[:, 2] * sz * (nz - 1), d * [1, 1, -1], vol.spacing),
        "x and y swapped": (lab.array.transpose(0, 2, 1), o, d[:, [1, 0, 2]], (sz, sx, sy)),
        "swapped and flipped": (lab.array.transpose(0, 2, 1)[:, ::-1], o + d[:, 0] * sx * (nx - 1),
                                d[:, [1, 0, 2]] * [1, -1, 1], (sz, sx, sy)),
    }
    for name, (arr, origin, direction, spacing) in variants.items():
        other = dataclasses.replace(labels, array=np.ascontiguousarray(arr), origin=tuple(origin), direction=direction,
                                    spacing=spacing)
        np.testing.assert_array_equal(frames_for_sources(other, datasets), expected, err_msg=name)


def test_segments_overlap_is_recorded_without_highdicoms_pixel_scan(tmp_path):
    from liverseg.reporting.dicom_seg import _segmentation_class

    assert _segmentation_class(hd) is not hd.seg.Segmentation  # the installed highdicom still has the checked hook
    ct, lab = phantom(shape=(6, 64, 72), spacing=(2.5, 1.5, 1.2), lesions=((3.0, None),), noise_hu=0)
    write_dicom_series(ct, tmp_path / "dcm")
    vol, datasets = read_dicom_series(tmp_path / "dcm")
    with_tumor = write_dicom_seg(vol.with_array(lab.array), datasets, tmp_path / "a.dcm", model_name="m", model_version="1")
    liver_only = np.where(lab.array == 2, 1, lab.array).astype(np.uint8)
    without = write_dicom_seg(vol.with_array(liver_only), datasets, tmp_path / "b.dcm", model_name="m", model_version="1")
    assert pydicom.dcmread(with_tumor).SegmentsOverlap == "YES"
    assert pydicom.dcmread(without).SegmentsOverlap == "NO"
