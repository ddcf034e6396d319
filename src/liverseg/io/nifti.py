"""NIfTI (.nii / .nii.gz) through nibabel, and MHA / NRRD through SimpleITK.

Headers are checked before any voxel is read, so a header that claims absurd
dimensions is refused before memory is allocated.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.errors import CorruptFileError, DimensionError
from liverseg.io.detached import check_detached_data
from liverseg.io.volume import Volume

__all__ = ["read_nifti", "read_itk_image", "MAX_VOXELS", "MAX_AXIS"]

log = logging.getLogger(__name__)

#: Most voxels liverseg will allocate for one image (a 1024 x 1024 x 2000 CT is 2.1e9).
MAX_VOXELS = 2**31
#: Longest axis liverseg accepts (voxels).
MAX_AXIS = 65535


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


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI-1/2 file (.nii or .nii.gz) as a :class:`Volume` (LPS geometry).

    Scaling (scl_slope/scl_inter) is applied; integral CT data end up int16 HU. A
    2D image becomes a one-slice Volume; a trailing axis of length 1 is dropped.

    Raises:
        DimensionError: 1D, 4D (with more than one volume) or absurd sizes.
        CorruptFileError: the file is truncated or unreadable.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, ValueError ...
        raise CorruptFileError(f"{path.name}: the NIfTI header cannot be read ({exc}); the file is damaged") from exc
    hdr = img.header
    size = check_dimensions(path.name, tuple(img.shape))
    if not path.name.lower().endswith(".gz"):
        need = int(hdr.get_data_offset()) + int(np.prod(img.shape)) * hdr.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < need:
            raise CorruptFileError(
                f"{path.name} is truncated: its header needs {need} bytes but the file has {have}; "
                "copy or download it again"
            )
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
    spacing_xyz = np.linalg.norm(m, axis=0)
    unit = hdr.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
    if np.any(spacing_xyz <= 0):
        warnings.append("the NIfTI affine has a zero-length axis; spacing set to 1 mm there")
        bad = spacing_xyz <= 0
        m = m.copy()
        m[:, bad] = np.eye(3)[:, bad]
        spacing_xyz = np.where(bad, 1.0, spacing_xyz)
    if int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        warnings.append("the NIfTI header sets no orientation (qform and sform codes are 0): orientation unknown")
    flip = np.diag([-1.0, -1.0, 1.0])
    direction = flip @ m / spacing_xyz
    origin = flip @ affine[:3, 3] * scale
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
