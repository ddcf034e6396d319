"""A rigidly moved, rotated and resampled copy of a scan and its mask: a "follow-up" with a known answer."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from liverseg.io.volume import Volume

__all__ = ["moved_in_world", "rigidly_moved"]


def rigidly_moved(
    ct: Volume,
    labels: Volume,
    *,
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    spacing: Sequence[float] | None = None,
) -> tuple[Volume, Volume]:
    """The patient of ``(ct, labels)`` moved in the scanner: resampled onto a new grid.

    The anatomy is rotated by ``rotation_deg`` = (about z, about y, about x) in degrees, about
    the centre of the field of view, and shifted by ``shift_mm`` (z, y, x) mm in world space;
    the new grid keeps the original's origin, direction and field of view, with voxels of
    ``spacing`` (z, y, x) mm (default: the original's). CT is interpolated linearly (-1024 HU
    outside), labels by nearest neighbour (0 outside).

    >>> from liverseg.testing import phantom
    >>> ct, lab = phantom(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None),))
    >>> ct2, lab2 = rigidly_moved(ct, lab, rotation_deg=(5, 0, 0), shift_mm=(3, -4, 6))
    >>> lab2.shape == lab.shape
    True
    """
    import SimpleITK as sitk

    if ct.shape != labels.shape:
        raise ValueError(f"ct shape {ct.shape} differs from labels shape {labels.shape}")
    if ct.spacing is None:
        raise ValueError("the scan needs a spacing in mm to be moved")
    img = ct.to_sitk()
    lab = labels.to_sitk()
    new_spacing = tuple(float(s) for s in (spacing if spacing is not None else ct.spacing))
    size_mm = np.asarray(ct.shape, float) * np.asarray(ct.spacing)
    new_shape = [max(1, int(round(n / s))) for n, s in zip(size_mm, new_spacing)]
    ref = sitk.Image(new_shape[::-1], sitk.sitkFloat32)
    ref.SetSpacing(new_spacing[::-1])
    ref.SetDirection(img.GetDirection())
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    corner = np.asarray(img.GetOrigin()) - d @ (0.5 * np.asarray(ct.spacing[::-1]))
    ref.SetOrigin(tuple(corner + d @ (0.5 * np.asarray(new_spacing[::-1]))))

    # the anatomy moves by R, t: a new-grid point p shows the old anatomy at R^-1 (p - c - t) + c
    rz, ry, rx = (math.radians(float(a)) for a in rotation_deg)
    move = sitk.Euler3DTransform()
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()]))
    move.SetCenter(tuple(centre))
    move.SetRotation(rx, ry, rz)
    move.SetTranslation(tuple(float(v) for v in np.asarray(shift_mm, float)[::-1]))
    pull = move.GetInverse()
    ct_new = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), ref, pull, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    lab_new = sitk.Resample(lab, ref, pull, sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    ct_arr = np.clip(np.rint(sitk.GetArrayFromImage(ct_new)), -1024, 3071).astype(np.int16)
    meta = {"source": "liverseg.testing.rigidly_moved", "rotation_deg": list(rotation_deg), "shift_mm": list(shift_mm)}
    ct_out = Volume.from_sitk(ct_new, modality=ct.modality, metadata=dict(ct.metadata, **meta))
    ct_out = ct_out.with_array(ct_arr)
    lab_out = Volume.from_sitk(lab_new, modality=labels.modality, is_hu=False, metadata=dict(labels.metadata, **meta))
    return ct_out, lab_out


def moved_in_world(
    volume: Volume,
    *,
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Volume:
    """``volume`` with its grid rotated and shifted in world space; the voxels are unchanged.

    The patient moved together with the scanner's grid (rotation (about z, y, x) in degrees about
    the centre of the field of view, then ``shift_mm`` (z, y, x)), so every measurement made on
    the voxels stays exactly the same while every world position changes.
    """
    import SimpleITK as sitk

    if volume.spacing is None:
        raise ValueError("the volume needs a spacing in mm to be moved")
    rz, ry, rx = (math.radians(float(a)) for a in rotation_deg)
    e = sitk.Euler3DTransform()
    e.SetRotation(rx, ry, rz)
    rot = np.asarray(e.GetMatrix(), float).reshape(3, 3)
    sp = np.asarray(volume.spacing, float)[::-1]
    centre = np.asarray(volume.origin) + volume.direction @ ((np.asarray(volume.shape[::-1], float) - 1) / 2 * sp)
    origin = rot @ (np.asarray(volume.origin) - centre) + centre + np.asarray(shift_mm, float)[::-1]
    meta = dict(volume.metadata, moved_in_world={"rotation_deg": list(rotation_deg), "shift_mm": list(shift_mm)})
    return Volume(array=volume.array, spacing=volume.spacing, origin=tuple(origin), direction=rot @ volume.direction,
                  modality=volume.modality, is_hu=volume.is_hu, metadata=meta)
