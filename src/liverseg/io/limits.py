"""Bounds on what a file may make liverseg allocate, checked from its header before any voxel is read.

A header of a few bytes can claim any size, any voxel size and any geometry. Each reader
calls :func:`check_geometry` (voxel count, bytes, voxel size and physical extent) as soon
as it knows the numbers and before it allocates, and :func:`check_pixels` for PNG/JPEG.
Numbers a real abdominal CT never reaches are refused with a :class:`DimensionError`
saying which number is wrong and what to check.
"""

from __future__ import annotations

import math
from typing import Sequence

from liverseg.errors import DimensionError

__all__ = [
    "MAX_VOXELS",
    "MAX_AXIS",
    "MAX_DATA_BYTES",
    "MIN_SPACING_MM",
    "MAX_SPACING_MM",
    "MAX_EXTENT_MM",
    "MIN_INPLANE_VOXELS",
    "MAX_SLICE_PIXELS",
    "MAX_STAGE_VOXELS",
    "MAX_UPSAMPLING",
    "UPSAMPLING_FREE_VOXELS",
    "check_geometry",
    "check_pixels",
    "check_segmentable",
]

#: Most voxels liverseg will allocate for one image (a 1024 x 1024 x 2000 CT is 2.1e9).
MAX_VOXELS = 2**31
#: Longest axis liverseg accepts (voxels).
MAX_AXIS = 65535
#: Most bytes of voxel data (as stored in the file) liverseg will allocate for one image.
MAX_DATA_BYTES = 4 * 2**30
#: Smallest voxel side accepted (mm); clinical CT voxels are 0.3 mm or larger.
MIN_SPACING_MM = 0.05
#: Largest voxel side accepted (mm); the thickest CT slices are about 10 mm.
MAX_SPACING_MM = 30.0
#: Largest physical extent per axis (mm) as (z, y, x): a whole-body scan is about 2 m long,
#: a CT's field of view at most about 0.7 m wide.
MAX_EXTENT_MM = (2000.0, 700.0, 700.0)
#: Fewest voxels along each in-plane axis of an image liverseg segments.
MIN_INPLANE_VOXELS = 16
#: Most voxels of the grid a model stage resamples a scan to (its memory is about 50 bytes a voxel:
#: 32 Mi voxels, about 1.7 GB). An abdominal CT at 2 x 1.5 x 1.5 mm is 15-25 Mi voxels.
MAX_STAGE_VOXELS = 32 * 2**20
#: A stage's grid may hold at most this many times the scan's own voxels ... (real CT is resampled
#: to about as many voxels or fewer; a small file with 30 mm voxels would be upsampled a thousandfold)
MAX_UPSAMPLING = 8
#: ... or this many voxels, whichever is more.
UPSAMPLING_FREE_VOXELS = 4 * 2**20
#: Most pixels of one PNG/JPEG slice (4096 x 4096); a CT slice has 512 x 512.
MAX_SLICE_PIXELS = 4096 * 4096


def check_geometry(
    name: str,
    shape_zyx: Sequence[int],
    spacing_zyx: Sequence[float] | None,
    *,
    itemsize: int = 2,
    what: str = "header",
) -> None:
    """Refuse an image whose size, bytes, voxel size or physical extent no CT has.

    Args:
        name: the file name for messages.
        shape_zyx: voxels per axis (z, y, x).
        spacing_zyx: voxel size in mm (z, y, x), or None when the file gives none.
        itemsize: bytes per voxel as stored (2 for int16).
        what: where the numbers come from, for messages ("header", "DICOM headers").

    Raises:
        DimensionError: with the number that is wrong and what to check.

    >>> check_geometry("ct.nii", (100, 512, 512), (2.5, 0.7, 0.7))
    >>> check_geometry("ct.nii", (100, 100, 100), (50.0, 50.0, 50.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    liverseg.errors.DimensionError: ct.nii: the header gives voxels of 50 x 50 x 50 mm ...
    """
    shape = [int(s) for s in shape_zyx]
    if any(s < 1 for s in shape):
        raise DimensionError(f"{name}: the {what} gives an image size of {shape} (z, y, x) with an empty axis; the file is damaged")
    n = math.prod(shape)
    if max(shape) > MAX_AXIS or n > MAX_VOXELS or n * int(itemsize) > MAX_DATA_BYTES:
        raise DimensionError(
            f"{name}: the {what} claims {' x '.join(map(str, shape))} voxels ({n:.3g}, {n * itemsize / 2**30:.3g} GiB), "
            f"far beyond any CT (limit {MAX_VOXELS:.3g} voxels, {MAX_DATA_BYTES / 2**30:.0f} GiB, {MAX_AXIS} per axis); "
            "the header is damaged. Refusing to allocate it"
        )
    if spacing_zyx is None:
        return
    sp = [float(s) for s in spacing_zyx]
    if not all(math.isfinite(s) for s in sp):
        raise DimensionError(f"{name}: the {what} gives a voxel size of {sp} mm (not finite); the header is damaged")
    text = " x ".join(f"{s:g}" for s in sp)
    if min(sp) < MIN_SPACING_MM:
        raise DimensionError(
            f"{name}: the {what} gives voxels of {text} mm (z, y, x), smaller than {MIN_SPACING_MM} mm, which no CT "
            "has; the header's voxel size or its unit is wrong (NIfTI: pixdim and xyzt_units; DICOM: PixelSpacing). "
            "Fix the header and try again"
        )
    if max(sp) > MAX_SPACING_MM:
        raise DimensionError(
            f"{name}: the {what} gives voxels of {text} mm (z, y, x), larger than {MAX_SPACING_MM:g} mm, which no CT "
            "has; the header's voxel size or its unit is wrong (NIfTI: pixdim and xyzt_units; DICOM: PixelSpacing, "
            "SliceThickness). Fix the header and try again"
        )
    extent = [a * b for a, b in zip(shape, sp)]
    for axis, (e, limit) in enumerate(zip(extent, MAX_EXTENT_MM)):
        if e > limit:
            raise DimensionError(
                f"{name}: the image would be {' x '.join(f'{x:.0f}' for x in extent)} mm (z, y, x), more than the "
                f"{limit:.0f} mm along {'zyx'[axis]} that any CT covers; the header's voxel size or size is wrong"
            )


def check_pixels(name: str, width: int, height: int) -> None:
    """Refuse a PNG/JPEG slice too large (a decompression bomb) or too small to be a CT slice.

    Raises:
        DimensionError: more than :data:`MAX_SLICE_PIXELS` pixels.
    """
    if width < 1 or height < 1 or width * height > MAX_SLICE_PIXELS or max(width, height) > MAX_AXIS:
        raise DimensionError(
            f"{name} claims {width} x {height} pixels, more than the {MAX_SLICE_PIXELS / 1e6:.1f} million pixels "
            "of any CT slice (512 x 512 is usual); export the slice at its own size"
        )


def check_segmentable(shape_zyx: Sequence[int], *, name: str = "the image") -> None:
    """Refuse an image too small to hold a liver (a 1 x 1 x 1 "scan", an icon): it would be segmented as noise.

    Readers accept such files (``liverseg info`` describes them); the Predictor and the web
    upload call this before segmenting.

    Raises:
        DimensionError: fewer than :data:`MIN_INPLANE_VOXELS` voxels along y or x.
    """
    shape = [int(s) for s in shape_zyx]
    if min(shape[1:]) < MIN_INPLANE_VOXELS:
        raise DimensionError(
            f"{name} has {shape[1]} x {shape[2]} voxels per slice, too few to hold a liver (at least "
            f"{MIN_INPLANE_VOXELS} x {MIN_INPLANE_VOXELS} needed); give the CT scan itself, not a thumbnail or a "
            "single value"
        )
