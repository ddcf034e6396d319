"""DICOM series: discovery in a folder, choice of the CT series, sorting and HU decoding.

Compressed transfer syntaxes (JPEG 2000, JPEG lossless and baseline, RLE) are decoded
by pydicom's pixel backends and the pylibjpeg plugins (pylibjpeg-openjpeg,
pylibjpeg-libjpeg, pylibjpeg-rle).

Patient-identifying attributes are never logged nor copied into metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from liverseg.errors import CorruptFileError, DimensionError, NoImagesError, NotCTError, SeriesError, UnsupportedFormatError
from liverseg.io.limits import MAX_AXIS, MAX_VOXELS, check_geometry
from liverseg.io.volume import Volume

__all__ = ["SeriesInfo", "scan_dicom", "select_series", "read_series", "sort_datasets"]

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Modalities that are never an image to segment.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "AU", "ECG"}

_NOT_A_SCAN = {
    "SEG": "a DICOM SEG (a segmentation made on a scan), not the scan itself",
    "RTSTRUCT": "an RTSTRUCT (radiotherapy contours), not the scan itself",
}


@dataclasses.dataclass
class SeriesInfo:
    """One DICOM series found in a folder (headers only; no pixel data read)."""

    uid: str
    modality: str
    description: str
    sop_class_uid: str
    files: list[Path]
    n_with_pixels: int
    folder: str

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def kind(self) -> str:
        """'image', or the non-image kind ('SEG', 'RTSTRUCT', 'SR', ...)."""
        if self.sop_class_uid == SEG_SOP_CLASS or self.modality == "SEG":
            return "SEG"
        if self.sop_class_uid == RTSTRUCT_SOP_CLASS or self.modality == "RTSTRUCT":
            return "RTSTRUCT"
        if self.modality in NON_IMAGE_MODALITIES:
            return self.modality
        return "image"

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (no patient data)."""
        return {
            "series_uid": self.uid,
            "modality": self.modality,
            "description": self.description,
            "files": self.n_files,
            "folder": self.folder,
            "kind": self.kind,
        }


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8 or path.suffix.lower() in {".txt", ".png", ".jpg", ".jpeg", ".nii", ".gz", ".zip", ".json", ".xml", ".csv", ".md", ".pdf"}:
        return False
    # no preamble (ACR-NEMA style): group 0x0008 first, little endian
    return head[:2] == b"\x08\x00"


def _read_header(path: Path) -> Any:
    import pydicom

    # defer_size keeps PixelData unread (it is loaded on demand) while 'PixelData' in ds still works
    return pydicom.dcmread(path, force=True, defer_size="2 KB")


def scan_dicom(root: str | Path, *, root_label: str | None = None) -> tuple[list[SeriesInfo], int]:
    """Find the DICOM series under ``root`` (a folder, searched recursively, or one file).

    Returns ``(series, n_other_files)``: series grouped by SeriesInstanceUID (files
    without one are grouped by folder and image size), and the number of files that
    are not DICOM. Reads headers only.
    """
    root = Path(root)
    if root.is_file():
        candidates = [root]
        base = root.parent
    else:
        candidates = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                p = Path(dirpath) / f
                if not f.startswith(".") and not p.is_symlink():
                    candidates.append(p)
        base = root
    groups: dict[str, SeriesInfo] = {}
    other = 0
    for p in candidates:
        if not _is_dicom_file(p):
            other += 1
            continue
        rel = p.parent.relative_to(base).as_posix() if p.parent != base else "."
        if root_label and rel == ".":
            rel = root_label
        try:
            ds = _read_header(p)
            # pydicom converts elements when first read: a damaged one (a 1-byte US value) raises here
            sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
            if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
                other += 1
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            key = uid or f"no-uid:{rel}:{ds.get('Rows', '')}x{ds.get('Columns', '')}"
            modality = str(ds.get("Modality", "") or "").upper()
            description = str(ds.get("SeriesDescription", "") or "")
        except Exception as exc:
            log.warning("skipping unreadable DICOM file %s (%s)", p.name, type(exc).__name__)
            other += 1
            continue
        info = groups.get(key)
        if info is None:
            info = groups[key] = SeriesInfo(
                uid=uid,
                modality=modality,
                description=description,
                sop_class_uid=sop,
                files=[],
                n_with_pixels=0,
                folder=rel,
            )
        info.files.append(p)
        info.n_with_pixels += int("PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
    return list(groups.values()), other


def _describe_list(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(
        f"{s.uid or '(no UID)'} [{s.modality or '?'}, {s.n_files} files"
        + (f", '{s.description}'" if s.description else "")
        + (f", in {s.folder}" if s.folder not in (".", "") else "")
        + "]"
        for s in series
    )


def select_series(
    series: Sequence[SeriesInfo], *, series_uid: str | None = None, force: bool = False, source: str = "input"
) -> tuple[SeriesInfo, list[SeriesInfo], list[str]]:
    """Pick the series to read: ``series_uid`` if given, else the CT series with most images.

    Returns ``(chosen, others, warnings)``.

    Raises:
        NoImagesError: no DICOM at all, or DICOM without pixel data.
        NotCTError: only SEG/RTSTRUCT/other non-images, or a non-CT modality without ``force``.
        SeriesError: ``series_uid`` is not among the series found.
    """
    warnings: list[str] = []
    if not series:
        raise NoImagesError(
            f"{source} holds no DICOM files; give a folder (or .zip) of DICOM slices, a NIfTI/MHA/NRRD file, "
            "or a single PNG/JPEG/DICOM slice"
        )
    if series_uid is not None:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            raise SeriesError(
                f"series {series_uid} is not in {source}; the series found are: {_describe_list(series)}"
            )
        chosen = match[0]
        _check_usable(chosen, force=force, source=source)
        return chosen, [s for s in series if s is not chosen], warnings
    images = [s for s in series if s.kind == "image" and s.n_with_pixels > 0]
    if not images:
        kinds = {s.kind for s in series}
        for k in ("SEG", "RTSTRUCT"):
            if k in kinds:
                raise NotCTError(
                    f"{source} is {_NOT_A_SCAN[k]}; give the CT series it was made on (liverseg segments the scan)"
                )
        non_image = [s for s in series if s.kind != "image"]
        if non_image:
            raise NotCTError(
                f"{source} holds only non-image DICOM objects ({', '.join(sorted(kinds))}); give a CT series"
            )
        raise NoImagesError(
            f"{source} holds DICOM headers but no pixel data (no PixelData element (7FE0,0010)): these files carry "
            "no image. Export the series again with its images"
        )
    ct = [s for s in images if s.modality == "CT"]
    pool = ct
    if not ct:
        pool = images
        mods = ", ".join(sorted({s.modality or "unknown" for s in images}))
        if not force:
            raise NotCTError(
                f"{source} holds no CT series (modality {mods}); liverseg's model is trained on CT only and its "
                "results on other modalities are meaningless. Use --force (force=True) to read it anyway"
            )
        warnings.append(f"no CT series: reading a {pool[0].modality or 'unknown'}-modality series because force=True")
    chosen = max(pool, key=lambda s: (s.n_with_pixels, s.uid))
    others = [s for s in series if s is not chosen]
    if others:
        msg = (
            f"{source} holds {len(series)} series; read the {chosen.modality or 'unknown'} series with most images "
            f"({chosen.uid or '(no UID)'}, {chosen.n_with_pixels} images); others: {_describe_list(others)}. "
            "Pick another with series_uid / --series-uid"
        )
        warnings.append(msg)
    return chosen, others, warnings


def _check_usable(s: SeriesInfo, *, force: bool, source: str) -> None:
    if s.kind in _NOT_A_SCAN:
        raise NotCTError(f"series {s.uid} in {source} is {_NOT_A_SCAN[s.kind]}; choose the CT series")
    if s.kind != "image":
        raise NotCTError(f"series {s.uid} in {source} is a non-image DICOM object ({s.kind}); choose a CT series")
    if s.n_with_pixels == 0:
        raise NoImagesError(
            f"series {s.uid} in {source} holds DICOM headers but no pixel data (no PixelData element); "
            "export it again with its images"
        )
    if s.modality != "CT" and not force:
        raise NotCTError(
            f"series {s.uid} has modality {s.modality or 'unknown'}, not CT; liverseg's model is trained on CT only. "
            "Use --force (force=True) to read it anyway"
        )


def _floats(ds: Any, name: str) -> list[float] | None:
    v = ds.get(name)
    if v is None or v == "":
        return None
    values = list(v) if (hasattr(v, "__iter__") and not isinstance(v, (str, bytes))) else [v]
    try:
        return [float(x) for x in values]
    except (TypeError, ValueError):
        return None


def header_int(ds: Any, name: str, default: int, *, where: str) -> int:
    """An integer header field that decoding depends on (NumberOfFrames, BitsStored ...), ``default`` when absent.

    Raises:
        CorruptFileError: the field holds something that is not an integer (a damaged IS value).
    """
    v = ds.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptFileError(
            f"{where}: the DICOM field {name} holds {str(v)[:40]!r}, not a number; the header is damaged: export the "
            "series again"
        ) from exc


def sort_datasets(datasets: Sequence[Any]) -> tuple[list[int], dict[str, Any]]:
    """Order slices along the slice normal; return (order, geometry).

    The geometry dict holds ``origin`` (x, y, z mm, LPS), ``direction`` (3x3, columns
    x, y, z index axes), ``spacing`` (z, y, x mm or None), ``positions`` (mm along the
    normal) and ``warnings`` (gaps, uneven spacing, missing geometry).

    Raises:
        SeriesError: slices of different sizes or orientations, or two slices at one position.
    """
    warnings: list[str] = []
    n = len(datasets)
    first = datasets[0]
    sizes = {(int(d.get("Rows", 0) or 0), int(d.get("Columns", 0) or 0)) for d in datasets}
    if len(sizes) > 1:
        raise SeriesError(
            f"the series mixes slices of different sizes ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))}); "
            "it is not one volume: choose a series of equal slices"
        )
    iop = _floats(first, "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        if n > 1:
            warnings.append("no ImageOrientationPatient: orientation unknown, assumed axial (identity)")
    else:
        row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
        nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
        if not (np.isfinite(nr) and np.isfinite(nc)) or nr < 1e-6 or nc < 1e-6 or abs(np.dot(row, col)) > 0.01 * nr * nc:
            warnings.append(
                f"ImageOrientationPatient {iop} is not two perpendicular directions (all zero or damaged): "
                "orientation unknown, assumed axial (identity)"
            )
            row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
            iop = None
        else:
            row, col = row / nr, col / nc
    normal = np.cross(row, col)
    for d in datasets[1:]:
        other = _floats(d, "ImageOrientationPatient")
        if iop is not None and other is not None and not np.allclose(other, iop, atol=1e-3):
            raise SeriesError(
                "the series mixes slices of different orientations (ImageOrientationPatient differs); "
                "it is not one volume: choose a single acquisition"
            )
    ipps = [_floats(d, "ImagePositionPatient") for d in datasets]
    if all(p is not None and len(p) == 3 for p in ipps):
        pos = np.array([np.dot(p, normal) for p in ipps])
        order = [int(i) for i in np.argsort(pos, kind="stable")]
        pos_sorted = pos[order]
        origin = tuple(float(x) for x in ipps[order[0]])
    else:
        numbers = [_floats(d, "InstanceNumber") for d in datasets]
        # a missing or unreadable InstanceNumber (a damaged IS value) keeps the slice's place in the files' order
        inst = [nums[0] if nums and np.isfinite(nums[0]) else float(i) for i, nums in enumerate(numbers)]
        if n > 1 and any(not nums for nums in numbers):
            warnings.append("InstanceNumber missing or unreadable on some slices: those keep their place in file order")
        order = [int(i) for i in np.argsort(inst, kind="stable")]
        pos_sorted = None
        origin = tuple(float(x) for x in (ipps[order[0]] or (0.0, 0.0, 0.0)))
        if n > 1:
            warnings.append("no ImagePositionPatient on every slice: slices ordered by InstanceNumber, z spacing from SliceThickness")
    ps = _floats(first, "PixelSpacing") or _floats(first, "ImagerPixelSpacing")
    thickness = _floats(first, "SpacingBetweenSlices") or _floats(first, "SliceThickness")
    dz: float | None = None
    if pos_sorted is not None and n > 1:
        diffs = np.diff(pos_sorted)
        if np.any(diffs < 1e-3):
            k = int(np.argmin(diffs))
            raise SeriesError(
                f"two slices of the series lie at the same position ({pos_sorted[k]:.2f} mm along the slice normal): "
                "it holds repeated or overlapping acquisitions. Choose one acquisition (or one series UID)"
            )
        dz = float(np.median(diffs))
        gaps = np.flatnonzero(diffs > 1.5 * dz)
        for k in gaps[:10]:
            missing = int(round(diffs[k] / dz)) - 1
            warnings.append(
                f"gap in the series: {diffs[k]:.2f} mm between slices {k} and {k + 1} "
                f"(at {pos_sorted[k]:.2f} and {pos_sorted[k + 1]:.2f} mm) where {dz:.2f} mm is usual; "
                f"about {missing} slice(s) missing. Volumes across the gap are wrong; re-export the complete series"
            )
        rest = np.delete(diffs, gaps)
        if rest.size and (rest.max() - rest.min()) > max(0.1 * dz, 0.01):
            warnings.append(
                f"inconsistent slice spacing: {rest.min():.3f} to {rest.max():.3f} mm (median {dz:.3f} mm used); "
                "measurements along z are approximate"
            )
    elif thickness:
        dz = float(thickness[0])
    spacing: tuple[float, float, float] | None
    if ps is None or len(ps) < 2 or min(ps[:2]) <= 0:
        spacing = None
        warnings.append("no PixelSpacing: spacing unknown, nothing can be reported in mm")
    else:
        spacing = (float(dz) if dz and dz > 0 else 1.0, float(ps[0]), float(ps[1]))
        if not dz:
            warnings.append("slice spacing unknown (one slice, no SliceThickness): 1 mm assumed along z")
    direction = np.stack([row, col, normal], axis=1)
    return order, {
        "origin": origin,
        "direction": direction,
        "spacing": spacing,
        "positions": None if pos_sorted is None else [float(x) for x in pos_sorted],
        "warnings": warnings,
    }


def _frame_pixels(ds: Any, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError for missing decoders
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        raise CorruptFileError(
            f"{name}: the pixel data cannot be decoded (transfer syntax {ts_name}; {type(exc).__name__}: {exc}). "
            "The file is damaged, or it uses a compression liverseg cannot decode: convert it to uncompressed "
            "DICOM (e.g. `gdcmconv --raw`)"
        ) from exc


def _to_grey(arr: np.ndarray, ds: Any, where: str) -> tuple[np.ndarray, bool]:
    """Colour slices to luminance; returns (array, was_colour)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if header_int(ds, "SamplesPerPixel", 1, where=where) > 1 or arr.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        rgb = arr.astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114, True
    if photometric == "MONOCHROME1":
        bits = header_int(ds, "BitsStored", 16, where=where)
        return (2**bits - 1) - arr.astype(np.float32), True
    return arr, False


def _rescale(ds: Any, name: str, k: int) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a slice; a zero, negative or non-finite slope is refused."""
    try:
        slope = float(ds.get("RescaleSlope", 1) if ds.get("RescaleSlope", "") != "" else 1)
        inter = float(ds.get("RescaleIntercept", 0) if ds.get("RescaleIntercept", "") != "" else 0)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{name}: slice {k + 1} has an unreadable RescaleSlope/RescaleIntercept ({exc})") from exc
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope <= 0:
        raise CorruptFileError(
            f"{name}: slice {k + 1} has RescaleSlope {slope:g} (and intercept {inter:g}); a slope of zero or below "
            "(it would erase or invert the image) or a non-finite value is not CT. Export the series again"
        )
    return slope, inter


def read_series(
    files: Sequence[Path], *, name: str = "series", keep_datasets: bool = False, progress: bool | None = None
) -> tuple[Volume, list[Any]]:
    """Decode the slices of one series into a Volume (int16 HU for CT).

    Returns ``(volume, datasets)`` where ``datasets`` are the headers in the
    volume's z order, pixel data dropped (empty unless ``keep_datasets``). ``progress``:
    a tqdm bar for long series; None (default) shows it only when stderr is a terminal.

    Raises:
        DimensionError: the series would be absurdly large.
        SeriesError: inconsistent slices; CorruptFileError: undecodable pixels.
    """
    import pydicom

    if not files:
        raise NoImagesError(f"{name} holds no DICOM images")
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=True, defer_size="2 KB")
        except Exception as exc:
            raise CorruptFileError(f"{name}: {Path(f).name} cannot be read as DICOM ({exc})") from exc
        if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise NoImagesError(f"{name} holds DICOM headers but no pixel data (no PixelData element)")
    frames = header_int(datasets[0], "NumberOfFrames", 1, where=name)
    if frames > 1:
        raise UnsupportedFormatError(
            f"{name} is a multi-frame (enhanced) DICOM object with {frames} frames; liverseg reads classic "
            "one-slice-per-file CT series: convert it (e.g. `dcm2niix` to NIfTI, or dcmtk's `dcmmkdir`/emf2sf)"
        )
    rows, cols = int(datasets[0].get("Rows", 0) or 0), int(datasets[0].get("Columns", 0) or 0)
    n = len(datasets)
    if rows < 1 or cols < 1 or max(rows, cols, n) > MAX_AXIS or float(rows) * cols * n > MAX_VOXELS:
        raise DimensionError(
            f"{name}: the headers claim {n} slices of {rows}x{cols} pixels, which liverseg cannot use "
            "(empty, or beyond any CT); the files are damaged"
        )
    bits = int(datasets[0].get("BitsAllocated", 16) or 16)
    check_geometry(name, (n, rows, cols), None, itemsize=max(2, bits // 8), what="DICOM headers")
    order, geo = sort_datasets(datasets)
    if geo["spacing"] is not None:
        check_geometry(name, (n, rows, cols), geo["spacing"], itemsize=max(2, bits // 8), what="DICOM headers")
    datasets = [datasets[i] for i in order]
    first = datasets[0]
    modality = str(first.get("Modality", "") or "").upper()
    out: np.ndarray | None = None
    colour = False
    it: Any = datasets
    if progress is not False and n > 50:
        from tqdm.auto import tqdm

        # None: a bar only on a terminal, never in a server's log (tqdm's disable=None rule)
        it = tqdm(datasets, desc="reading DICOM", unit="slice", leave=False, disable=None if progress is None else False)
    for k, ds in enumerate(it):
        arr = _frame_pixels(ds, name)
        if arr.shape[:2] != (rows, cols):
            raise SeriesError(f"{name}: slice {k} decodes to {arr.shape}, not {rows}x{cols}; the file is damaged")
        arr, was_colour = _to_grey(arr, ds, f"{name}: slice {k}")
        colour |= was_colour
        slope, inter = _rescale(ds, name, k)
        if out is None:
            out = np.empty((n, rows, cols), np.int16 if not colour or modality == "CT" else np.float32)
        vals = arr.astype(np.float32) * slope + inter if (slope != 1 or inter != 0 or arr.dtype.kind == "f") else arr
        if out.dtype == np.int16:
            lo, hi = float(np.min(vals)), float(np.max(vals))
            if lo < -32768 or hi > 32767:
                raise CorruptFileError(
                    f"{name}: slice {k + 1}'s RescaleSlope {slope:g} and RescaleIntercept {inter:g} give values "
                    f"{lo:.0f} to {hi:.0f}, beyond what a CT can hold (-32768 to 32767 HU); the rescale tags are "
                    "damaged. Export the series again"
                )
            out[k] = np.rint(vals)
        else:
            out[k] = vals
        if keep_datasets and "PixelData" in ds:
            del ds.PixelData  # the headers are kept (e.g. for a DICOM SEG writer), the pixels are in the Volume
    assert out is not None
    warnings = list(geo["warnings"])
    if colour:
        warnings.append("colour or inverted (MONOCHROME1) pixels were turned to grey: values are not HU")
    meta = {
        "format": "dicom",
        "warnings": warnings,
        "dicom": {
            "series_uid": str(first.get("SeriesInstanceUID", "") or ""),
            "study_uid": str(first.get("StudyInstanceUID", "") or ""),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "") or ""),
            "sop_class_uid": str(first.get("SOPClassUID", "") or ""),
            "modality": modality,
            "series_description": str(first.get("SeriesDescription", "") or ""),
            "manufacturer": str(first.get("Manufacturer", "") or ""),
            "transfer_syntaxes": sorted(
                {str(getattr(getattr(d, "file_meta", None), "TransferSyntaxUID", "") or "implicit") for d in datasets}
            ),
            "slice_thickness_mm": _floats(first, "SliceThickness")[0] if _floats(first, "SliceThickness") else None,
            "n_slices": n,
            "slice_positions_mm": geo["positions"],
        },
        "dicom_files": [str(Path(d.filename)) for d in datasets if getattr(d, "filename", None)],
    }
    vol = Volume(
        array=out,
        spacing=geo["spacing"],
        origin=geo["origin"],
        direction=geo["direction"],
        modality=modality or "unknown",
        is_hu=(modality == "CT" and not colour),
        metadata=meta,
    )
    return vol, (datasets if keep_datasets else [])
