"""``read_volume``: one entry point for every input liverseg accepts, recognised by content."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from liverseg.errors import NotCTError
from liverseg.io.archive import ArchiveLimits, extract_zip
from liverseg.io.detect import sniff_format
from liverseg.io.dicom import read_series, scan_dicom, select_series, sort_datasets
from liverseg.io.nifti import read_itk_image, read_nifti
from liverseg.io.raster import read_raster
from liverseg.io.volume import Volume

__all__ = [
    "HeaderSummary",
    "peek_header",
    "read_volume",
    "read_volume_with_sources",
    "read_dicom_series",
    "load_source_datasets",
    "list_series",
    "describe",
    "format_description",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _dicom_root(path: Path, fmt: str, limits: ArchiveLimits) -> Iterator[Path]:
    """The folder (or file) to scan for DICOM; a zip is extracted safely to a temporary folder."""
    if fmt != "zip":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="liverseg-zip-") as tmp:
        extract_zip(path, tmp, limits=limits)
        yield Path(tmp)


def _read_dicom(
    path: Path, fmt: str, *, series_uid: str | None, force: bool, keep_datasets: bool, limits: ArchiveLimits
) -> tuple[Volume, list[Any]]:
    with _dicom_root(path, fmt, limits) as root:
        series, n_other = scan_dicom(root)
        if not series and fmt in ("zip", "folder"):
            # a zip or folder holding one NIfTI/MHA/NRRD file instead of DICOM
            single = _single_volume_file(root)
            if single is not None:
                vol = read_volume(single, force=force)
                vol.metadata["format"] = f"{fmt}/{vol.metadata.get('format')}"
                return vol, []
        where = f"the {'zip' if fmt == 'zip' else 'folder' if fmt == 'folder' else 'file'} {path.name}"
        chosen, others, warnings = select_series(series, series_uid=series_uid, force=force, source=where)
        vol, datasets = read_series(chosen.files, name=path.name, keep_datasets=keep_datasets)
        base = Path(root) if Path(root).is_dir() else Path(root).parent
        vol.metadata["dicom_files"] = [Path(f).relative_to(base).as_posix() for f in vol.metadata["dicom_files"]]
    if vol.modality != "CT" and not force:  # a series without a Modality tag but read by UID
        raise NotCTError(f"{path.name}: the series has modality {vol.modality}, not CT; use force=True to read it anyway")
    vol.metadata["format"] = {"zip": "dicom-zip", "folder": "dicom-folder"}.get(fmt, "dicom")
    vol.metadata["warnings"] = warnings + vol.metadata["warnings"]
    vol.metadata["series_uid"] = chosen.uid
    vol.metadata["series_folder"] = chosen.folder
    vol.metadata["other_series"] = [s.summary() for s in others]
    vol.metadata["non_dicom_files"] = n_other
    return vol, datasets


@contextlib.contextmanager
def _damaged_dicom_is_corrupt(path: Path) -> Iterator[None]:
    """pydicom parses elements lazily: a damaged one raises at first access (NotImplementedError for an
    unknown VR, ValueError/TypeError/OverflowError for a bad value). Any of those is a damaged file."""
    import struct

    try:
        yield
    except (NotImplementedError, ValueError, TypeError, KeyError, IndexError, OverflowError, struct.error) as exc:
        from liverseg.errors import CorruptFileError

        tb, in_pydicom = exc.__traceback__, False
        while tb is not None:  # only pydicom's own parsing errors; a bug of ours stays a bug
            in_pydicom |= "pydicom" in tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        if not in_pydicom:
            raise

        raise CorruptFileError(
            f"{path.name}: a DICOM header is damaged and cannot be parsed ({type(exc).__name__}: {str(exc)[:200]}); "
            "export the series again"
        ) from exc


def _single_volume_file(root: Path) -> Path | None:
    suffixes = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
    found = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)]
    return found[0] if len(found) == 1 else None


def read_volume(
    path: str | Path,
    *,
    series_uid: str | None = None,
    force: bool = False,
    limits: ArchiveLimits = ArchiveLimits(),
) -> Volume:
    """Read a CT scan (or a 2D slice) from any input liverseg accepts.

    The format is recognised by content: NIfTI (.nii, .nii.gz), MHA/NRRD, a DICOM
    folder (searched recursively), a .zip of DICOM (extracted safely under
    ``limits``), one DICOM file, or a PNG/JPEG slice.

    Args:
        path: file or folder.
        series_uid: SeriesInstanceUID to read when a folder/zip holds several series
            (default: the CT series with most images; the others are named in a warning
            and in ``metadata["other_series"]``).
        force: read a non-CT modality (MR, PET ...) instead of refusing it.
        limits: caps for zip archives.

    Returns:
        A :class:`Volume`: CT in int16 HU; ``metadata`` holds ``format``, ``warnings``
        (gaps, uneven spacing, several series ...), and for DICOM ``series_uid``,
        ``other_series``, ``dicom`` (UIDs, description, transfer syntaxes; no patient
        data) and ``dicom_files`` (paths relative to the folder/zip, in z order).

    Raises:
        liverseg.errors.InputError: any subclass, with what is wrong and what to do.

    >>> ct = read_volume("case/PATIENT_DICOM.zip")  # doctest: +SKIP
    >>> ct.shape, ct.spacing  # doctest: +SKIP
    ((119, 512, 512), (1.6, 0.743, 0.743))
    """
    return _read_any(Path(path), series_uid=series_uid, force=force, limits=limits, keep_datasets=False)[0]


def read_volume_with_sources(
    path: str | Path,
    *,
    series_uid: str | None = None,
    force: bool = False,
    limits: ArchiveLimits = ArchiveLimits(),
) -> tuple[Volume, list[Any]]:
    """:func:`read_volume`, and for DICOM input the series' headers too (pixel data removed, in z order).

    The headers are what a DICOM SEG needs as source images; taking them from this one read
    saves reading the series' files a second time (:func:`load_source_datasets`). For any
    other input the list is empty.
    """
    return _read_any(Path(path), series_uid=series_uid, force=force, limits=limits, keep_datasets=True)


def _read_any(
    path: Path, *, series_uid: str | None, force: bool, limits: ArchiveLimits, keep_datasets: bool
) -> tuple[Volume, list[Any]]:
    fmt = sniff_format(path)
    datasets: list[Any] = []
    if fmt in ("nifti", "nifti-gz"):
        vol = read_nifti(path)
    elif fmt in ("metaimage", "nrrd"):
        vol = read_itk_image(path, fmt=fmt)
    elif fmt in ("png", "jpeg"):
        vol = read_raster(path, fmt=fmt)
    else:  # dicom, folder, zip
        with _damaged_dicom_is_corrupt(path):
            vol, datasets = _read_dicom(path, fmt, series_uid=series_uid, force=force, keep_datasets=keep_datasets,
                                        limits=limits)
    vol.metadata.setdefault("warnings", [])
    vol.metadata["source"] = path.name
    for w in vol.metadata["warnings"]:
        log.warning("%s: %s", path.name, w)
    return vol, list(datasets or [])


@dataclasses.dataclass(frozen=True)
class HeaderSummary:
    """What a file's header claims, read without decoding a voxel (:func:`peek_header`).

    Attributes:
        format: as :func:`~liverseg.io.sniff_format` answers.
        shape_zyx: voxels (z, y, x); a 2D slice or one DICOM file has z = 1.
        spacing_mm_zyx: voxel size in mm, or None when the header gives none.
        decoded_bytes: bytes the voxels take once decoded (as stored: shape x bytes per voxel).
    """

    format: str
    shape_zyx: tuple[int, int, int]
    spacing_mm_zyx: tuple[float, float, float] | None
    decoded_bytes: int


def peek_header(path: str | Path) -> HeaderSummary:
    """Read only the header of a single image file (NIfTI, MHA/NRRD, PNG/JPEG, one DICOM file).

    Cheap (no voxel is decoded, no decompression beyond the header), so the web app can
    bound what an upload would make the server allocate before accepting it. The size
    and geometry are checked as the full readers check them.

    Raises:
        InputError: any subclass (unreadable header, absurd size or geometry, a detached
            voxel file outside the header's folder).
    """
    import math

    from liverseg.errors import CorruptFileError, UnsupportedFormatError
    from liverseg.io.detached import check_detached_data, check_header_fields
    from liverseg.io.limits import check_geometry, check_pixels
    from liverseg.io.nifti import check_dimensions

    path = Path(path)
    fmt = sniff_format(path)
    if fmt in ("nifti", "nifti-gz"):
        import gzip

        import nibabel as nib

        try:  # the header alone, whatever the file's name (nibabel's loader goes by the suffix)
            with (gzip.open(path, "rb") if fmt == "nifti-gz" else open(path, "rb")) as fh:
                head = fh.read(540)
            cls = nib.Nifti2Header if head[4:8] in (b"n+2\0", b"ni2\0") else nib.Nifti1Header
            hdr = cls.from_fileobj(io.BytesIO(head), check=False)
            shape_xyz = tuple(int(d) for d in hdr.get_data_shape())
            item = hdr.get_data_dtype().itemsize
            zooms = [float(z) for z in hdr.get_zooms()]
        except Exception as exc:
            raise CorruptFileError(
                f"{path.name}: the NIfTI header cannot be read ({type(exc).__name__}); the file is damaged"
            ) from exc
        size = check_dimensions(path.name, shape_xyz)
        zooms = zooms[: len(size)]
        shape = tuple((list(size) + [1])[:3][::-1])
        spacing = tuple((zooms + [1.0])[:3][::-1]) if len(size) == 3 and all(z > 0 for z in zooms) else None
    elif fmt in ("metaimage", "nrrd"):
        import SimpleITK as sitk

        check_detached_data(path, fmt=fmt)
        check_header_fields(path, fmt=fmt)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise CorruptFileError(f"{path.name}: the {fmt} header cannot be read") from exc
        size = check_dimensions(path.name, tuple(reader.GetSize()))
        if reader.GetNumberOfComponents() != 1:
            from liverseg.errors import DimensionError

            raise DimensionError(
                f"{path.name} has {reader.GetNumberOfComponents()} values per voxel (colour or vector data); "
                "liverseg needs a single-channel CT"
            )
        if any(not math.isfinite(s) or s <= 0 for s in list(reader.GetSpacing())[: len(size)]):
            raise CorruptFileError(
                f"{path.name}: the {fmt} header gives a voxel size of {list(reader.GetSpacing())} mm with a zero, "
                "negative or non-finite side; set the voxel size (ElementSpacing / space directions) in mm"
            )
        from liverseg.io.nifti import _itk_itemsizes

        item = _itk_itemsizes().get(reader.GetPixelID(), 8) * max(1, reader.GetNumberOfComponents())
        shape = tuple((list(size) + [1])[:3][::-1])
        sp = list(reader.GetSpacing())[: len(size)]
        spacing = tuple((sp + [1.0])[:3][::-1]) if len(size) == 3 and all(s > 0 for s in sp) else None
    elif fmt in ("png", "jpeg"):
        import warnings

        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_pixels says it below
                with Image.open(path) as img:
                    w, h = img.size
                    bands = len(img.getbands())
        except Image.DecompressionBombError as exc:
            from liverseg.errors import DimensionError

            raise DimensionError(f"{path.name}: refused as a decompression bomb ({exc}); a CT slice has about "
                                 "512 x 512 pixels") from exc
        except Exception as exc:
            raise CorruptFileError(f"{path.name}: the {fmt.upper()} image cannot be opened ({type(exc).__name__})") from exc
        check_pixels(path.name, w, h)
        shape, spacing, item = (1, h, w), None, 4 * bands
    elif fmt == "dicom":
        import pydicom

        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        except Exception as exc:
            raise CorruptFileError(f"{path.name} cannot be read as DICOM ({type(exc).__name__})") from exc
        from liverseg.io.dicom import header_int

        frames = header_int(ds, "NumberOfFrames", 1, where=path.name)
        shape = (frames, header_int(ds, "Rows", 0, where=path.name), header_int(ds, "Columns", 0, where=path.name))
        item = max(1, header_int(ds, "BitsAllocated", 16, where=path.name) // 8) * max(
            1, header_int(ds, "SamplesPerPixel", 1, where=path.name))
        spacing = None
    else:
        raise UnsupportedFormatError(f"{path.name}: {fmt} has no single image header to read")
    if min(shape) < 1:
        raise CorruptFileError(f"{path.name}: the header gives an image of {shape} voxels (z, y, x); it is damaged")
    check_geometry(path.name, shape, spacing, itemsize=item)
    return HeaderSummary(format=fmt, shape_zyx=shape, spacing_mm_zyx=spacing,  # type: ignore[arg-type]
                         decoded_bytes=int(math.prod(shape)) * int(item))


def read_dicom_series(
    path: str | Path, *, series_uid: str | None = None, force: bool = False, limits: ArchiveLimits = ArchiveLimits()
) -> tuple[Volume, list[Any]]:
    """Like :func:`read_volume` for DICOM input, also returning the series' pydicom datasets.

    The datasets are in the Volume's z order with their pixel data removed (headers
    only): what a DICOM SEG writer (highdicom) needs as source images.

    Raises:
        UnsupportedFormatError: ``path`` is not DICOM (a folder, zip or file of DICOM).
    """
    from liverseg.errors import UnsupportedFormatError

    path = Path(path)
    fmt = sniff_format(path)
    if fmt not in ("dicom", "folder", "zip"):
        raise UnsupportedFormatError(f"{path.name} is {fmt}, not DICOM; a DICOM SEG needs a DICOM source series")
    vol, datasets = _read_dicom(path, fmt, series_uid=series_uid, force=force, keep_datasets=True, limits=limits)
    vol.metadata["source"] = path.name
    return vol, datasets


def load_source_datasets(
    path: str | Path, *, series_uid: str | None = None, force: bool = False, limits: ArchiveLimits = ArchiveLimits()
) -> list[Any]:
    """The chosen series' DICOM headers (no pixel data) in z order, as :func:`read_volume` orders the slices.

    Cheaper than :func:`read_dicom_series`: no pixel is decoded. The same series is
    chosen as by :func:`read_volume` with the same arguments.
    """
    import pydicom

    path = Path(path)
    fmt = sniff_format(path)
    with _dicom_root(path, fmt, limits) as root:
        series, _ = scan_dicom(root)
        chosen, _, _ = select_series(series, series_uid=series_uid, force=force, source=path.name)
        datasets = [pydicom.dcmread(f, force=True, stop_before_pixels=True) for f in chosen.files]
    order, _ = sort_datasets(datasets)
    return [datasets[i] for i in order]


def list_series(path: str | Path, *, limits: ArchiveLimits = ArchiveLimits()) -> list[dict[str, Any]]:
    """Every DICOM series in a folder, zip or file: UID, modality, description, file count, folder, kind."""
    path = Path(path)
    fmt = sniff_format(path)
    with _dicom_root(path, fmt, limits) as root:
        series, _ = scan_dicom(root)
    return [s.summary() for s in series]


def _orientation_code(direction: np.ndarray) -> str | None:
    """Three letters naming where the x, y, z index axes point (ITK/DICOM 'LPS' style)."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    code = ""
    for col in np.asarray(direction).T:
        k = int(np.argmax(np.abs(col)))
        code += letters[k][0] if col[k] > 0 else letters[k][1]
    return code if len(set(code.replace("R", "L").replace("A", "P").replace("I", "S"))) == 3 else None


def _finite(x: Any) -> float | None:
    """A float, or None for NaN/infinity (JSON has neither)."""
    v = float(x)
    return v if np.isfinite(v) else None


def describe(path: str | Path, *, series_uid: str | None = None, force: bool = False) -> dict[str, Any]:
    """What liverseg reads from ``path``: format, modality, geometry, intensity range, series, warnings.

    A JSON-friendly dict (lists, floats, strings; no patient data), printed by
    ``liverseg info``. Units: mm for spacing/origin/extent, HU for the range when
    ``is_hu`` (otherwise raw intensity).
    """
    vol = read_volume(path, series_uid=series_uid, force=force)
    a = vol.array
    fin = a[np.isfinite(a)] if a.dtype.kind == "f" else a.ravel()  # the range of the finite values
    meta = vol.metadata
    info: dict[str, Any] = {
        "path": str(path),
        "format": meta.get("format"),
        "modality": vol.modality,
        "is_hu": vol.is_hu,
        "dtype": str(a.dtype),
        "shape_zyx": list(vol.shape),
        "is_2d": vol.is_2d,
        "spacing_mm_zyx": None if vol.spacing is None else [round(s, 6) for s in vol.spacing],
        "extent_mm_zyx": None if vol.spacing is None else [round(n * s, 3) for n, s in zip(vol.shape, vol.spacing)],
        "origin_mm_xyz": [round(o, 4) for o in vol.origin],
        "direction": [[round(float(v), 6) for v in row] for row in vol.direction],
        "orientation": _orientation_code(vol.direction),
        "intensity_min": _finite(fin.min()) if fin.size else None,
        "intensity_max": _finite(fin.max()) if fin.size else None,
        "intensity_mean": _finite(round(float(fin.mean(dtype=np.float64)), 2)) if fin.size else None,
        "non_finite_voxels": int(a.size - fin.size),
        "warnings": list(meta.get("warnings", [])),
    }
    if "dicom" in meta:
        d = meta["dicom"]
        info["series_uid"] = meta.get("series_uid")
        info["series_folder"] = meta.get("series_folder")
        info["series_description"] = d.get("series_description")
        info["manufacturer"] = d.get("manufacturer")
        info["transfer_syntaxes"] = d.get("transfer_syntaxes")
        info["slice_thickness_mm"] = d.get("slice_thickness_mm")
        info["other_series"] = meta.get("other_series", [])
    return info


def format_description(info: dict[str, Any]) -> str:
    """Human-readable text of a :func:`describe` dict."""

    def fmt_vec(v: Any, unit: str = "") -> str:
        return "unknown" if v is None else " x ".join(f"{x:g}" for x in v) + unit

    unit = "HU" if info.get("is_hu") else "(raw intensity, not HU)"

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:g}"

    lines = [
        f"file:        {info['path']}",
        f"format:      {info['format']}",
        f"modality:    {info['modality']}" + ("" if info.get("is_hu") else "  (values are not Hounsfield units)"),
        f"shape:       {fmt_vec(info['shape_zyx'])} (z, y, x)" + ("  [single 2D slice]" if info.get("is_2d") else ""),
        f"spacing:     {fmt_vec(info['spacing_mm_zyx'], ' mm')} (z, y, x)",
        f"extent:      {fmt_vec(info['extent_mm_zyx'], ' mm')} (z, y, x)",
        f"origin:      {fmt_vec(info['origin_mm_xyz'], ' mm')} (x, y, z, LPS)",
        f"orientation: {info.get('orientation') or 'oblique'} (index axes x, y, z point to)",
        f"direction:   {info['direction']}",
        f"range:       {num(info['intensity_min'])} .. {num(info['intensity_max'])} {unit}, "
        f"mean {num(info['intensity_mean'])}"
        + (f"  ({info['non_finite_voxels']} voxels NaN or infinite)" if info.get("non_finite_voxels") else ""),
        f"dtype:       {info['dtype']}",
    ]
    if "series_uid" in info:
        lines.append(
            f"series:      {info['series_uid'] or '(no UID)'}"
            + (f"  '{info['series_description']}'" if info.get("series_description") else "")
            + (f"  in {info['series_folder']}" if info.get("series_folder") not in (None, ".", "") else "")
        )
        if info.get("transfer_syntaxes"):
            lines.append(f"encoding:    {', '.join(info['transfer_syntaxes'])}")
        others = info.get("other_series") or []
        lines.append(f"other series: {len(others)}")
        for s in others:
            lines.append(
                f"  - {s['series_uid'] or '(no UID)'}  {s['modality'] or '?'}  {s['files']} files"
                + (f"  '{s['description']}'" if s.get("description") else "")
                + (f"  in {s['folder']}" if s.get("folder") not in (None, ".", "") else "")
                + ("" if s.get("kind") == "image" else f"  ({s['kind']})")
            )
    warnings = info.get("warnings") or []
    lines.append(f"warnings:    {len(warnings) or 'none'}")
    lines.extend(f"  ! {w}" for w in warnings)
    return "\n".join(lines)
