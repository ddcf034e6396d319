"""DICOM SEG export of a label mask (highdicom), referencing the source CT series.

Two overlapping BINARY segments: 1 "Liver" (labels 1 + 2: the whole organ, tumor included,
as the reported liver volume) and 2 "Liver tumor" (label 2), with SNOMED CT codes and the
model as the segmentation algorithm. Each source CT image gets the frame of the mask voxels
that lie on it: the mapping goes through world coordinates (the Volume's origin, spacing and
direction against each image's ImagePositionPatient / ImageOrientationPatient / PixelSpacing),
so it holds whatever order or orientation the reader gave the Volume. Empty frames are
omitted (highdicom's default).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg import __version__
from liverseg.errors import InputError, SeriesError
from liverseg.io.volume import Volume

__all__ = ["write_dicom_seg", "frames_for_sources", "SEGMENTS"]

log = logging.getLogger(__name__)

#: Segment number → (label, which labels it covers).
SEGMENTS = {1: ("Liver", (1, 2)), 2: ("Liver tumor", (2,))}

_POS_TOL_MM = 0.05


def _load_sources(source: Any, labels: Volume) -> list[Any]:
    import pydicom

    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir() or (root.is_file() and root.suffix.lower() == ".zip"):
            from liverseg.io import load_source_datasets

            return list(load_source_datasets(root, series_uid=labels.metadata.get("series_uid")))
        if root.is_file():
            return [pydicom.dcmread(root, stop_before_pixels=True)]
        raise InputError(f"{root} is neither a DICOM folder, a .zip nor a DICOM file: pass the CT series the mask was made on")
    datasets = list(source)
    if not datasets:
        raise InputError("no source DICOM images given: a DICOM SEG must reference the CT series it segments")
    return datasets


#: Type 2 attributes highdicom copies from the source (empty is valid; absent is not).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _complete_type2(datasets: Sequence[Any]) -> list[Any]:
    """Copies of the datasets that lack a Type 2 attribute, with it present and empty.

    A series without FrameOfReferenceUID (some old exports, e.g. 3D-IRCADb) gets one derived
    from its SeriesInstanceUID: the SEG needs one, and its frames still reference the source
    images by SOPInstanceUID.
    """
    import pydicom
    from pydicom.uid import generate_uid

    out = []
    for_uid = None
    for ds in datasets:
        missing = [k for k in _TYPE2 if k not in ds]
        need_for = not str(ds.get("FrameOfReferenceUID", "") or "")
        # some exporters leave SOPClassUID / SOPInstanceUID empty in the dataset and keep them in
        # the file meta only (e.g. TotalSegmentator's example series): take them from there
        meta = getattr(ds, "file_meta", None)
        fill_uids = {
            k: str(meta.get(m, "") or "")
            for k, m in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID"))
            if meta is not None and not str(ds.get(k, "") or "") and str(meta.get(m, "") or "")
        }
        if missing or need_for or fill_uids:
            # a new element dict (the caller's dataset stays as it was); elements are shared, not
            # converted: copying element by element took ~0.5 s for a 119-slice series
            new = pydicom.Dataset(dict(ds.items()))
            if hasattr(ds, "file_meta"):
                new.file_meta = ds.file_meta
            ds = new
            for k in missing:
                setattr(ds, k, "")
            for k, v in fill_uids.items():
                if k in ds:
                    del ds[k]  # a new element: the shared one belongs to the caller's dataset
                setattr(ds, k, v)
            if need_for:
                if for_uid is None:
                    for_uid = generate_uid(entropy_srcs=["liverseg-frame-of-reference", str(ds.get("SeriesInstanceUID", ""))])
                    log.warning(
                        "the source series has no FrameOfReferenceUID; the DICOM SEG uses %s (derived from the series UID)",
                        for_uid,
                    )
                ds.FrameOfReferenceUID = for_uid
        out.append(ds)
    return out


def _geometry(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    try:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ps = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(
            f"source image {getattr(ds, 'SOPInstanceUID', '?')} lacks its position, orientation or pixel spacing "
            f"({exc}); a DICOM SEG needs a CT series with full geometry"
        ) from exc
    return ipp, iop[:3], iop[3:], (ps[0], ps[1])  # row spacing (between rows), column spacing


def frames_for_sources(labels: Volume, datasets: Sequence[Any]) -> np.ndarray:
    """The label values on each source image: array (n_images, rows, cols) of uint8.

    Raises:
        SeriesError: a source image does not lie on the mask's grid (another series, a
            different size, or a mask resampled elsewhere).
    """
    if labels.spacing is None:
        raise InputError("the mask has no spacing (a PNG/JPEG slice): a DICOM SEG needs a DICOM source series")
    lab = np.asarray(labels.array)
    m = np.asarray(labels.direction) @ np.diag(np.asarray(labels.spacing)[::-1])  # index (i, j, k) -> mm
    m_inv = np.linalg.inv(m)
    origin = np.asarray(labels.origin)
    frames = []
    for ds in datasets:
        ipp, row_dir, col_dir, (dr, dc) = _geometry(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        idx0 = m_inv @ (ipp - origin)  # (i, j, k) of pixel (0, 0)
        step_c = m_inv @ (row_dir * dc)  # moving one column along the image row
        step_r = m_inv @ (col_dir * dr)  # moving one row
        ok = True
        for step in (step_c, step_r):
            ok &= bool(np.isclose(np.abs(step).max(), 1.0, atol=1e-3) and np.sum(np.abs(step) > 1e-3) == 1)
        ok &= bool(np.allclose(idx0, np.round(idx0), atol=_POS_TOL_MM / min(labels.spacing)))
        if not ok:
            raise SeriesError(
                f"source image {getattr(ds, 'SOPInstanceUID', '?')} does not lie on the mask's grid "
                "(different position, orientation or pixel size): pass the DICOM series the mask was predicted on"
            )
        # each image axis follows one index axis (checked above): index vectors, then one gather
        ax_c, ax_r = int(np.argmax(np.abs(step_c))), int(np.argmax(np.abs(step_r)))
        start = np.rint(idx0).astype(int)
        along_c = start[ax_c] + int(np.rint(step_c[ax_c])) * np.arange(cols)
        along_r = start[ax_r] + int(np.rint(step_r[ax_r])) * np.arange(rows)
        sizes = (lab.shape[2], lab.shape[1], lab.shape[0])  # along i (x), j (y), k (z)
        fixed = 3 - ax_c - ax_r
        inside = ax_c != ax_r and 0 <= start[fixed] < sizes[fixed]
        for along, ax in ((along_c, ax_c), (along_r, ax_r)):
            inside = inside and 0 <= min(along[0], along[-1]) and max(along[0], along[-1]) < sizes[ax]
        if not inside:
            raise SeriesError(
                f"source image {getattr(ds, 'SOPInstanceUID', '?')} ({rows}x{cols}) reaches outside the mask's grid "
                f"{lab.shape} (z, y, x): pass the DICOM series the mask was predicted on"
            )
        # each image axis steps by ±1 along one index axis: a strided view of the mask, no gather
        ijk: list[Any] = [int(start[0]), int(start[1]), int(start[2])]  # i (x), j (y), k (z)
        for along, ax in ((along_c, ax_c), (along_r, ax_r)):
            step = int(along[1] - along[0]) if len(along) > 1 else 1
            stop = int(along[-1]) + step
            ijk[ax] = slice(int(along[0]), stop if stop >= 0 else None, step)
        frame = lab[ijk[2], ijk[1], ijk[0]]  # two slices and one index: a (rows or cols, ...) view
        if ax_r < ax_c:  # the view's axes keep the mask's order (k, j, i): rows first only when ax_r > ax_c
            frame = frame.T
        frames.append(frame)
    return np.stack(frames).astype(np.uint8, copy=False)


def _segment_descriptions(model_name: str, model_version: str, sha256: str | None) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(
        name=model_name,
        version=model_version,
        family=codes.cid7162.ArtificialIntelligence,
        source="liverseg",
        parameters={"weights_sha256": sha256} if sha256 else None,
    )
    liver = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENTS[1][0],
        segmented_property_category=codes.cid7150.AnatomicalStructure,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
        tracking_uid=hd.UID(),
        tracking_id="liver (including tumor)",
    )
    tumor = hd.seg.SegmentDescription(
        segment_number=2,
        segment_label=SEGMENTS[2][0],
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
        tracking_uid=hd.UID(),
        tracking_id="liver tumor",
        anatomic_regions=[codes.SCT.Liver],
    )
    return [liver, tumor]


def write_dicom_seg(
    labels: Volume,
    source_datasets: Sequence[Any] | str | Path,
    path: str | Path,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    sha256: str | None = None,
    run_info: dict[str, Any] | None = None,
    series_description: str = "liverseg liver/tumor",
    series_number: int = 901,
) -> Path:
    """Write ``labels`` (0/1/2) as a DICOM SEG referencing its source CT series.

    Args:
        labels: label Volume on the source series' grid (as :func:`liverseg.io.read_volume`
            returned the CT).
        source_datasets: the source CT images: pydicom Datasets (headers suffice, e.g. from
            :func:`liverseg.io.read_dicom_series` or ``load_source_datasets``), or the DICOM
            folder / .zip / file they come from (``labels.metadata["series_uid"]`` picks
            the series when a folder holds several).
        path: the file to write (``seg.dcm``).
        model_name, model_version, sha256: the model, recorded as the segmentation algorithm.
        run_info: a ``run_case`` run record; its ``model`` (name, version, sha256) fills
            whichever of the three above is not given. Without a version the first 16 hex
            digits of the sha256 stand in (``sha256:0123...``).

    Returns:
        ``path``. The file loads with ``highdicom.seg.segread`` and ``pydicom.dcmread``.

    Raises:
        InputError / SeriesError: no usable source images, or they do not match the mask's grid.
    """
    import highdicom as hd

    if run_info:
        from liverseg.reporting.report import model_info

        m = model_info(run_info)
        model_name = model_name or m.get("name")
        model_version = model_version or (str(m["version"]) if m.get("version") is not None else None)
        sha256 = sha256 or m.get("sha256")
    if not model_version and sha256:
        model_version = f"sha256:{sha256[:16]}"  # a bundle without a version: its weights identify it
    if not model_name or not model_version:
        raise ValueError(
            "model_name and model_version are required (they identify the algorithm in the SEG); "
            "pass them or a run_info with model name and version"
        )
    datasets = _complete_type2(_load_sources(source_datasets, labels))
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1:
        raise SeriesError(f"the source images belong to {len(uids)} series; pass the one series the mask was made on")
    frames = frames_for_sources(labels, datasets)
    pixel = np.empty((*frames.shape, len(SEGMENTS)), np.uint8)  # (frames, rows, cols, segs)
    for n, (_, values) in sorted(SEGMENTS.items()):
        pixel[..., n - 1] = frames >= 1 if values == (1, 2) else np.isin(frames, values)
    if not pixel.any():
        # highdicom cannot write a SEG without any frame; an empty mask still deserves a file
        log.warning("the mask is empty: the DICOM SEG holds one empty frame")
    charset = datasets[0].get("SpecificCharacterSet") or "ISO_IR 100"  # empty = default repertoire (ASCII)
    # only the images with some segment are framed (empty frames would be omitted anyway); the
    # others are still referenced (further source images), and highdicom's checks of the pixel
    # array, which cost seconds on a whole CT, run on the framed images only
    framed = np.flatnonzero(pixel.any(axis=(1, 2, 3))) if pixel.any() else np.arange(len(datasets))
    others = [datasets[i] for i in sorted(set(range(len(datasets))) - set(framed.tolist()))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = _build(hd, [datasets[i] for i in framed], pixel[framed], model_name, model_version, sha256,
                     series_description, series_number, charset, further=others)
    for w in caught:  # e.g. odd person names copied from the source: not ours to fix
        log.debug("highdicom: %s", w.message)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    seg.save_as(tmp)
    tmp.replace(path)
    return path


def _segmentation_class(hd: Any) -> Any:
    """highdicom's ``Segmentation``, without its scan of the pixel array where that can be skipped.

    ``write_dicom_seg`` builds the array itself: uint8, values 0/1, shape (frames, rows, cols, 2),
    segment 2 (tumor) inside segment 1 (liver). highdicom's checks of such an array (binary
    values, overlapping segments: a sum over the segment axis into a uint64 copy) took more time
    than the rest of the SEG on a whole CT (``docs/speed_profile.md``). The subclass answers them
    from what is known: the segments overlap exactly when there is tumor. Should a highdicom
    release rename that private classmethod, the stock class is used (slower, same file).
    """
    base = hd.seg.Segmentation
    if not isinstance(vars(base).get("_check_and_cast_pixel_array"), classmethod):
        return base

    class _LiverTumorSegmentation(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):  # type: ignore[override]
            known = (isinstance(pixel_array, np.ndarray) and pixel_array.dtype == np.uint8 and pixel_array.ndim == 4
                     and pixel_array.shape[-1] == 2 and list(segment_numbers) == [1, 2]
                     and segmentation_type == hd.seg.SegmentationTypeValues.BINARY)
            if not known:
                return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)
            overlap = hd.seg.SegmentsOverlapValues.YES if pixel_array[..., 1].any() else hd.seg.SegmentsOverlapValues.NO
            return pixel_array, overlap

    return _LiverTumorSegmentation


def _build(
    hd: Any,
    datasets: Sequence[Any],
    pixel: np.ndarray,
    model_name: str,
    model_version: str,
    sha256: str | None,
    series_description: str,
    series_number: int,
    charset: Any,
    further: Sequence[Any] = (),
) -> Any:
    return _segmentation_class(hd)(
        source_images=datasets,
        pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(model_name, model_version, sha256),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="liverseg",
        manufacturer_model_name=f"{model_name}",
        software_versions=f"liverseg {__version__}",
        device_serial_number="none",
        series_description=series_description,
        content_label="LIVERSEG",
        content_description=f"Liver and liver tumor, {model_name} {model_version}",
        omit_empty_frames=bool(pixel.any()),
        specific_character_set=charset,
        further_source_images=list(further) or None,
    )
