"""NIfTI (.nii / .nii.gz) through nibabel, and MHA / NRRD through SimpleITK.

Headers are checked before any voxel is read, so a header that claims absurd
dimensions is refused before memory is allocated.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.errors import CorruptFileError, DimensionError
from liverseg.io.detached import check_detached_data, check_header_fields
from liverseg.io.limits import MAX_AXIS, MAX_VOXELS, check_geometry
from liverseg.io.volume import Volume

__all__ = ["read_nifti", "read_itk_image", "MAX_VOXELS", "MAX_AXIS"]

log = logging.getLogger(__name__)

#: Bytes a .nii.gz may hold beyond what its header needs (NIfTI extensions, padding).
_GZIP_SLACK_BYTES = 16 * 2**20


def check_dimensions(name: str, size_xyz: tuple[int, ...], *, what: str = "header") -> tuple[int, ...]:
    """Squeeze trailing length-1 axes and refuse shapes liverseg cannot use.

    ``size_xyz`` is in file order (x, y, z, t, ...). Returns the 2- or 3-axis size.

    Raises:
        DimensionError: 1 axis, 4 or more non-trivial axes, zero-length or absurd sizes.
    """
    size = tuple(int(s) for s in size_xyz)
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) > 3:
        raise DimensionError(
            f"{name} holds a {len(size)}D image of size {'x'.join(map(str, size))} (a time series or several "
            "channels); liverseg needs one 3D CT volume: extract the volume you want (e.g. with "
            "`fslroi` or nibabel's `image.slicer[..., 0]`)"
        )
    if len(size) < 2:
        raise DimensionError(
            f"{name} holds a {len(size)}D image (size {size}); liverseg needs a 3D CT volume or a 2D slice"
        )
    if any(s < 1 for s in size):
        raise DimensionError(f"{name}: the {what} gives an image size of {size} with an empty axis; the file is damaged")
    n = int(np.prod(size, dtype=np.float64))
    if max(size) > MAX_AXIS or n > MAX_VOXELS:
        raise DimensionError(
            f"{name}: the {what} claims {'x'.join(map(str, size))} voxels ({n:.3g}), far beyond any CT "
            f"(limit {MAX_VOXELS:.3g} voxels, {MAX_AXIS} per axis); the header is damaged. Refusing to allocate it"
        )
    return size


def _to_int16_if_integral(arr: np.ndarray) -> np.ndarray:
    """Integral-valued floats become int16 (CT HU convention); other data keep their dtype."""
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if finite.all() and arr.size and arr.min() >= -32768 and arr.max() <= 32767 and np.array_equal(arr, np.rint(arr)):
            return arr.astype(np.int16)
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 2 and arr.size and arr.min() >= -32768 and arr.max() <= 32767:
        return arr.astype(np.int16)
    return arr


def _check_gzip_stream(path: Path, need: int) -> None:
    """Decompress a .nii.gz once without keeping it: its CRC and length are verified, its size bounded.

    nibabel reads only the bytes it needs, so a damaged stream (flipped bytes) was read
    silently, and a stream longer than its header says was never noticed.

    Raises:
        CorruptFileError: CRC or length mismatch, a truncated stream, or more data than
            the header needs plus :data:`_GZIP_SLACK_BYTES`.
    """
    got = 0
    limit = need + _GZIP_SLACK_BYTES
    try:
        with gzip.open(path, "rb") as gz:
            while chunk := gz.read(4 * 2**20):
                got += len(chunk)
                if got > limit:
                    raise CorruptFileError(
                        f"{path.name} decompresses to more than {limit / 2**20:.0f} MiB although its header needs "
                        f"{need / 2**20:.1f} MiB (a gzip bomb, or a damaged file); refusing it"
                    )
    except EOFError as exc:
        raise CorruptFileError(
            f"{path.name} is truncated: its gzip stream ends early ({exc}) after {got} of the {need} bytes its "
            "header needs; copy or download it again"
        ) from exc
    except (OSError, zlib.error) as exc:
        raise CorruptFileError(
            f"{path.name} is damaged: its gzip stream fails its integrity check ({exc}); the voxels cannot be "
            "trusted. Copy or download the file again"
        ) from exc
    if got < need:
        raise CorruptFileError(
            f"{path.name} is truncated: its header needs {need} bytes of image but the file decompresses to {got}; "
            "copy or download it again"
        )


def _hu_offset_warning(data: np.ndarray, hdr: Any, warnings: list[str]) -> np.ndarray:
    """Unsigned CT without a rescale intercept cannot hold HU (air is -1000): detect HU + 1024 and shift it."""
    slope, inter = hdr.get_slope_inter()
    if data.dtype.kind != "u" or (inter not in (None, 0) and np.isfinite(inter)) or data.size == 0:
        return data
    if slope not in (None, 1) and np.isfinite(slope):
        return data
    sample = data.ravel()[:: max(1, data.size // 200_000)]
    p5, p50, top = np.percentile(sample, [5, 50, 100])
    if data.dtype.itemsize >= 2 and p5 < 300 and 700 <= p50 <= 1400 and top <= 1024 + 4000:
        warnings.append(
            f"the image is stored unsigned ({data.dtype}) with no rescale intercept, and its values (median {p50:.0f}) "
            "look like HU + 1024: 1024 was subtracted to get Hounsfield units. If this is wrong, set the header's "
            "scl_inter (e.g. -1024) explicitly"
        )
        return (data.astype(np.int32) - 1024).astype(np.int16)
    warnings.append(
        f"the image is stored unsigned ({data.dtype}) with no rescale intercept, so it holds no negative values and "
        "is probably not in Hounsfield units (air is -1000 HU); measurements of HU are unreliable"
    )
    return data


def _raw_pixdim(path: Path, n: int) -> list[float] | None:
    """pixdim[1..n] as written in the file (nibabel silently turns a 0 into 1); None if unreadable."""
    import struct

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:  # type: ignore[operator]
            head = fh.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", head[:4])[0] in (348, 540):
            if struct.unpack(order + "i", head[:4])[0] == 540:  # NIfTI-2: pixdim are float64 at byte 104
                return list(struct.unpack(order + "8d", head[104:168])[1: n + 1])
            return list(struct.unpack(order + "8f", head[76:108])[1: n + 1])
    return None


def _orthogonal(m: np.ndarray) -> bool:
    """True when the 3x3 matrix has non-zero, mutually orthogonal columns (a rotation times a scaling)."""
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms <= 1e-12):
        return False
    d = m / norms
    return bool(np.allclose(d.T @ d, np.eye(3), atol=1e-2))


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI-1/2 file (.nii or .nii.gz) as a :class:`Volume` (LPS geometry).

    Scaling (scl_slope/scl_inter) is applied; integral CT data end up int16 HU. A
    2D image becomes a one-slice Volume; a trailing axis of length 1 is dropped.
    Before any voxel is allocated the header is checked (size, bytes, voxel size,
    extent: :func:`liverseg.io.limits.check_geometry`; data offset; orientation) and a
    .nii.gz is decompressed once to verify its CRC. Unsigned data that look like
    HU + 1024 are shifted back, with a warning.

    Raises:
        DimensionError: 1D, 4D (with more than one volume), colour, absurd sizes or voxel sizes.
        CorruptFileError: the file is truncated, fails its gzip CRC, has a voxel size of 0,
            a data offset inside the header, or a singular orientation.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError ...
        raise CorruptFileError(f"{path.name}: the NIfTI header cannot be read ({exc}); the file is damaged") from exc
    hdr = img.header
    size = check_dimensions(path.name, tuple(img.shape))
    dtype = hdr.get_data_dtype()
    if dtype.fields is not None or dtype.kind == "c":
        raise DimensionError(
            f"{path.name} holds {'colour (RGB)' if dtype.fields else 'complex'} voxels ({dtype}); liverseg needs a "
            "single-channel CT in HU: convert it to one grey value per voxel"
        )
    offset = int(getattr(img.dataobj, "offset", hdr.get_data_offset()))  # the header copy resets vox_offset
    single_file = bytes(hdr["magic"]).rstrip(b"\0") in (b"n+1", b"n+2")
    min_offset = int(hdr.sizeof_hdr) + 4
    if single_file and offset < min_offset:
        raise CorruptFileError(
            f"{path.name}: the header puts the voxels at byte {offset} (vox_offset), inside the header itself "
            f"(a single-file NIfTI stores them from byte {min_offset} on); the header is damaged: set vox_offset"
        )
    need = offset + int(np.prod(img.shape, dtype=np.float64)) * dtype.itemsize
    zooms = _raw_pixdim(path, len(size)) or [float(z) for z in hdr.get_zooms()[:3]]
    if any(not np.isfinite(z) or z <= 0 for z in zooms[: len(size)]):
        raise CorruptFileError(
            f"{path.name}: the header gives a voxel size (pixdim) of {zooms[: len(size)]}, with a zero, negative or "
            "non-finite side; the size of the voxels is unknown, so no volume could be measured. Set pixdim in mm"
        )
    try:
        unit = hdr.get_xyzt_units()[0]
    except KeyError as exc:  # a unit code NIfTI does not define
        raise CorruptFileError(
            f"{path.name}: the header's unit code (xyzt_units {int(hdr['xyzt_units'])}) is not a NIfTI unit, so the "
            "voxel size is unknown; set xyzt_units (e.g. 2 for mm)"
        ) from exc
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    spacing_zyx = [zooms[i] * scale if i < len(zooms) else 1.0 for i in range(3)][::-1]
    shape_zyx = (list(size) + [1])[:3][::-1]
    check_geometry(path.name, shape_zyx, spacing_zyx if len(size) == 3 else None, itemsize=dtype.itemsize)
    if not path.name.lower().endswith(".gz"):
        have = path.stat().st_size
        if have < need:
            raise CorruptFileError(
                f"{path.name} is truncated: its header needs {need} bytes but the file has {have}; "
                "copy or download it again"
            )
    else:
        _check_gzip_stream(path, need)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise CorruptFileError(
            f"{path.name} is truncated or corrupt: its voxel data cannot be read ({type(exc).__name__}: {exc}); "
            "copy or download it again"
        ) from exc
    data = data.reshape(size)
    if data.ndim == 2:
        data = data[:, :, None]
    warnings: list[str] = []
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise CorruptFileError(f"{path.name}: the NIfTI orientation (affine) holds NaN or infinity; the header is damaged")
    m = affine[:3, :3]
    if len(size) == 2 and np.linalg.norm(m[:, 2]) <= 1e-12:  # a 2D file may leave its third axis at 0
        normal = np.cross(m[:, 0], m[:, 1])
        m = m.copy()
        m[:, 2] = normal / np.linalg.norm(normal) if np.linalg.norm(normal) > 0 else (0.0, 0.0, 1.0)
        affine = affine.copy()
        affine[:3, :3] = m
    if not _orthogonal(m) and int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0:
        q = np.asarray(hdr.get_qform(), dtype=float)[:3, :3]
        if _orthogonal(q):
            warnings.append(
                "the NIfTI sform is singular or sheared; the qform's orientation was used instead (check the mask's "
                "placement)"
            )
            affine = np.asarray(hdr.get_qform(), dtype=float)
            m = q
    if not _orthogonal(m):
        raise CorruptFileError(
            f"{path.name}: the NIfTI orientation matrix ({'sform' if int(hdr['sform_code']) > 0 else 'qform'}) is "
            "singular or sheared, so voxel positions and sizes cannot be trusted; the header is damaged. Rewrite it "
            "with a valid sform/qform (e.g. from the DICOM with dcm2niix)"
        )
    spacing_xyz = np.linalg.norm(m, axis=0)
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        warnings.append("the NIfTI header sets no orientation (qform and sform codes are 0): orientation unknown")
    flip = np.diag([-1.0, -1.0, 1.0])
    direction = flip @ m / spacing_xyz
    origin = flip @ affine[:3, 3] * scale
    check_geometry(path.name, data.shape[::-1], tuple(float(v) * scale for v in spacing_xyz[::-1]),
                   itemsize=dtype.itemsize)
    data = _hu_offset_warning(data, hdr, warnings)
    arr = _to_int16_if_integral(np.ascontiguousarray(data.transpose(2, 1, 0)))
    meta: dict[str, Any] = {
        "format": "nifti-gz" if path.name.lower().endswith(".gz") else "nifti",
        "warnings": warnings,
        "nifti": {
            "qform_code": int(hdr["qform_code"]),
            "sform_code": int(hdr["sform_code"]),
            "file_dtype": str(hdr.get_data_dtype()),
            "description": hdr["descrip"].tobytes().split(b"\0")[0].decode("latin-1"),
        },
    }
    return Volume(
        array=arr,
        spacing=tuple(float(s) * scale for s in spacing_xyz[::-1]),
        origin=tuple(origin),
        direction=direction,
        modality="CT",
        is_hu=True,
        metadata=meta,
    )


def _itk_itemsizes() -> dict[int, int]:
    import SimpleITK as sitk

    return {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
            sitk.sitkInt32: 4, sitk.sitkFloat32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat64: 8}


def read_itk_image(path: str | Path, *, fmt: str) -> Volume:
    """Read an MHA/MHD or NRRD file through SimpleITK (size checked before reading voxels).

    A detached voxel file (``ElementDataFile``, NRRD ``data file``) is read only when it lies
    inside the header's own folder (:func:`liverseg.io.detached.check_detached_data`).

    Raises:
        UnsafeReferenceError: the header names a voxel file outside its folder, or a missing one.
        DimensionError: 1D, 4D or absurd sizes, or more than one component per voxel.
        CorruptFileError: the file cannot be read.
    """
    import SimpleITK as sitk

    path = Path(path)
    check_detached_data(path, fmt=fmt)  # before SimpleITK follows a header's path anywhere
    check_header_fields(path, fmt=fmt)  # before SimpleITK trusts its counts (NDims = -5 hangs MetaIO)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptFileError(f"{path.name}: the {fmt} header cannot be read ({str(exc).strip().splitlines()[-1]})") from exc
    size = check_dimensions(path.name, tuple(reader.GetSize()))
    if reader.GetNumberOfComponents() != 1:
        raise DimensionError(
            f"{path.name} has {reader.GetNumberOfComponents()} values per voxel (colour or vector data); "
            "liverseg needs a single-channel CT"
        )
    spacing_xyz = list(reader.GetSpacing())[: len(size)]
    if any(not np.isfinite(s) or s <= 0 for s in spacing_xyz):
        raise CorruptFileError(
            f"{path.name}: the {fmt} header gives a voxel size of {spacing_xyz} mm with a zero, negative or "
            "non-finite side; set the voxel size (ElementSpacing / space directions) in mm"
        )
    itemsize = _itk_itemsizes().get(reader.GetPixelID(), 8)
    shape_zyx = (list(size) + [1])[:3][::-1]
    check_geometry(path.name, shape_zyx, (spacing_xyz + [1.0])[:3][::-1] if len(size) == 3 else None, itemsize=itemsize)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise CorruptFileError(
            f"{path.name}: the {fmt} voxel data cannot be read ({str(exc).strip().splitlines()[-1]}); "
            "the file is truncated or damaged"
        ) from exc
    if img.GetDimension() > 3:
        img = sitk.Extract(img, list(size) + [0] * (img.GetDimension() - len(size)), [0] * img.GetDimension())
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    vol = Volume.from_sitk(img, modality="CT", is_hu=True, metadata={"format": fmt, "warnings": []})
    vol.array = _to_int16_if_integral(vol.array)
    return vol
