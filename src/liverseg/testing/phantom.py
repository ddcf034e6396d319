"""A CT-like abdominal phantom with liver lesions of known size and position.

The phantom is liverseg's own test data for every stage: it has realistic
Hounsfield units (air, subcutaneous fat, abdominal-wall muscle, liver, spleen,
aorta, kidneys, spine) and spherical hypodense lesions fully inside the liver,
so volumes, diameters and metrics have known answers.

Geometry: origin (0, 0, 0) and identity direction (LPS), so the world position of
voxel (k, j, i) is (i·sx, j·sy, k·sz) mm. Lesion centres are given in mm as
(z, y, x) measured from the centre of voxel (0, 0, 0); ``y`` grows towards the
patient's back and ``x`` towards the patient's left, so the liver lies at small
``x`` (patient's right) and the spine at large ``y``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from liverseg.io.volume import Volume

__all__ = ["phantom", "phantom_2d", "sphere_voxel_error", "TISSUE_HU"]

#: Mean HU of each tissue in the phantom (noise is added on top).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "liver": 90.0,
    "spleen": 55.0,
    "kidney": 150.0,
    "aorta": 180.0,
    "bone_cortex": 900.0,
    "bone_marrow": 300.0,
    "lesion": 35.0,
}

LesionSpec = tuple[float, "Sequence[float] | None"]


def _check_common(shape: Sequence[int], spacing: Sequence[float], noise_hu: float, ndim: int) -> None:
    if len(shape) != ndim or not all(int(s) == s and s >= 1 for s in shape):
        raise ValueError(f"shape must be {ndim} positive integers; got {tuple(shape)}")
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers in mm; got {tuple(spacing)}")
    if not (np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be >= 0 HU; got {noise_hu}")
    inplane = [shape[-2] * spacing[-2], shape[-1] * spacing[-1]]
    if min(inplane) < 60.0 or min(shape[-2:]) < 16:
        raise ValueError(
            f"the in-plane field of view ({inplane[0]:.0f} x {inplane[1]:.0f} mm, {shape[-2]} x {shape[-1]} voxels) "
            "is too small for an abdomen: use at least 60 mm and 16 voxels per axis"
        )


def _ellipsoid_raw(coords: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean mask of sum(((c - centre) / radius)^2) <= 1 (coords in mm)."""
    acc = 0.0
    for c, m, r in zip(coords, centre, radii):
        acc = acc + ((c - m) / r) ** 2
    return acc <= 1.0


def _anatomy(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    extent: tuple[float, float, float],
    liver_hu: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU image (float32), body mask and liver mask for world coords (z, y, x) in mm.

    ``extent`` is the field of view (z, y, x) in mm; anatomy is scaled to it.
    """
    zz, yy, xx = coords
    full = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)

    def _ellipsoid(c: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        return np.broadcast_to(_ellipsoid_raw(c, centre, radii), full)

    ez, ey, ex = extent
    cy, cx = ey / 2.0, ex / 2.0
    cz = ez / 2.0
    # body: an ellipse filling ~90 % of the field of view, the same on every slice
    ry, rx = 0.40 * ey, 0.46 * ex
    body = _ellipsoid((yy, xx), (cy, cx), (ry, rx))
    wall_in = _ellipsoid((yy, xx), (cy, cx), (ry - 0.07 * ey, rx - 0.07 * ex))  # inside subcutaneous fat
    cavity = _ellipsoid((yy, xx), (cy, cx), (ry - 0.11 * ey, rx - 0.11 * ex))  # inside the muscle wall
    hu = np.full(full, TISSUE_HU["air"], np.float32)
    hu[body] = TISSUE_HU["fat"]
    hu[wall_in & ~cavity] = TISSUE_HU["muscle"]
    hu[cavity] = TISSUE_HU["fat"] + 20.0  # visceral fat / bowel mixture

    # spine: vertebral body (cortex + marrow) posterior in the midline, paraspinal muscles
    sy, sx = cy + 0.25 * ey, cx
    sr = 0.075 * min(ey, ex)
    para = body & (
        _ellipsoid((yy, xx), (sy + 0.02 * ey, sx - 0.11 * ex), (0.07 * ey, 0.07 * ex))
        | _ellipsoid((yy, xx), (sy + 0.02 * ey, sx + 0.11 * ex), (0.07 * ey, 0.07 * ex))
    )
    hu[para] = TISSUE_HU["muscle"]
    vert = _ellipsoid((yy, xx), (sy, sx), (sr, sr))
    marrow = _ellipsoid((yy, xx), (sy, sx), (0.7 * sr, 0.7 * sr))
    hu[vert] = TISSUE_HU["bone_cortex"]
    hu[marrow] = TISSUE_HU["bone_marrow"]
    # aorta: just anterior-left of the spine
    aorta = _ellipsoid((yy, xx), (sy - 1.9 * sr, sx + 0.8 * sr), (0.55 * sr, 0.55 * sr))
    hu[aorta & ~vert] = TISSUE_HU["aorta"]
    # kidneys: either side of the spine, in the middle third along z
    for side in (-1.0, 1.0):
        kid = _ellipsoid((zz, yy, xx), (cz, sy - 0.02 * ey, sx + side * 0.24 * ex), (0.3 * ez, 0.07 * ey, 0.05 * ex))
        hu[kid & cavity] = TISSUE_HU["kidney"]
    # spleen: patient's left (large x), posterior
    spleen = _ellipsoid((zz, yy, xx), (0.6 * ez, cy + 0.08 * ey, cx + 0.28 * ex), (0.3 * ez, 0.12 * ey, 0.07 * ex))
    hu[spleen & cavity] = TISSUE_HU["spleen"]
    # liver: large ellipsoid on the patient's right (small x), anterior, upper part of the scan,
    # kept inside the cavity and away from the spine
    liver = (
        _ellipsoid((zz, yy, xx), (0.55 * ez, cy - 0.05 * ey, cx - 0.17 * ex), (0.42 * ez, 0.22 * ey, 0.2 * ex))
        & cavity
        & ~_ellipsoid((yy, xx), (sy, sx), (1.6 * sr, 1.6 * sr))
    )
    hu[liver] = liver_hu
    return hu, body, liver


def _place_lesions(
    liver: np.ndarray,
    coords: tuple[np.ndarray, ...],
    spacing: tuple[float, ...],
    lesions: Sequence[LesionSpec],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict]]:
    """Lesion mask and a list of {radius_mm, centre_mm} (z, y, x order; 2D: y, x)."""
    mask = np.zeros(liver.shape, bool)
    placed: list[dict] = []
    # distance (mm) from each liver voxel to the nearest non-liver voxel centre
    depth = ndimage.distance_transform_edt(np.pad(liver, 1), sampling=spacing)[(slice(1, -1),) * liver.ndim]
    half_voxel = 0.5 * max(spacing)
    diagonal = math.sqrt(sum(s * s for s in spacing))
    touch = np.ones((3,) * liver.ndim, bool)
    for n, spec in enumerate(lesions):
        try:
            radius, centre = spec
            radius = float(radius)
        except (TypeError, ValueError):
            raise ValueError(f"lesion {n}: expected (radius_mm, centre_mm or None); got {spec!r}") from None
        if not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"lesion {n}: radius must be a positive number of mm; got {radius}")
        need = radius + diagonal  # a rim of liver at least one voxel thick around the lesion
        if centre is None:
            # a voxel deep enough in the liver that the sphere stays inside, and not overlapping earlier lesions
            ok = depth > need
            for other in placed:
                d2 = sum((c - m) ** 2 for c, m in zip(coords, other["centre_mm"]))
                ok &= d2 > (radius + other["radius_mm"] + 2 * half_voxel) ** 2
            candidates = np.flatnonzero(ok)
            if candidates.size == 0:
                deepest = float(depth.max())
                raise ValueError(
                    f"lesion {n}: no room for a {radius:g} mm radius lesion inside the liver "
                    f"(deepest liver point is {deepest:.1f} mm from its edge): use a smaller radius, "
                    "fewer lesions, or a larger shape/spacing"
                )
            flat = int(rng.choice(candidates))
            idx = np.unravel_index(flat, liver.shape)
            centre_mm = tuple(float(i * s) for i, s in zip(idx, spacing))
        else:
            centre_mm = tuple(float(c) for c in centre)
            if len(centre_mm) != liver.ndim:
                raise ValueError(f"lesion {n}: centre must have {liver.ndim} coordinates in mm; got {centre}")
        sphere = sum((c - m) ** 2 for c, m in zip(coords, centre_mm)) <= radius**2
        if not sphere.any():
            raise ValueError(f"lesion {n}: a {radius:g} mm lesion at {centre_mm} mm covers no voxel centre")
        if (ndimage.binary_dilation(sphere, structure=touch) & ~liver).any():
            raise ValueError(
                f"lesion {n}: a {radius:g} mm lesion at {centre_mm} mm (z, y, x) reaches or touches the liver's edge; "
                "move it inwards, make it smaller, or pass None to place it at random"
            )
        mask |= sphere
        placed.append({"radius_mm": radius, "centre_mm": centre_mm, "voxels": int(sphere.sum())})
    return mask, placed


def _finish(hu: np.ndarray, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    if noise_hu > 0:
        hu = hu + rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def phantom(
    *,
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
    lesions: Sequence[LesionSpec] = ((8.0, None), (5.0, None)),
    seed: int = 0,
    noise_hu: float = 10.0,
    lesion_hu: float = TISSUE_HU["lesion"],
    liver_hu: float = TISSUE_HU["liver"],
) -> tuple[Volume, Volume]:
    """A synthetic abdominal CT and its label mask (0 background, 1 liver, 2 tumor).

    Args:
        shape: voxels (z, y, x).
        spacing: voxel size in mm (z, y, x).
        lesions: one ``(radius_mm, centre_mm)`` per spherical lesion; ``centre_mm`` is
            (z, y, x) in mm from the centre of voxel (0, 0, 0), or ``None`` to place the
            lesion at random (from ``seed``) fully inside the liver, not touching others.
            Every lesion keeps a rim of liver at least one voxel thick; a given centre whose
            sphere reaches or touches the liver's edge raises ValueError.
        seed: random seed; the same arguments give the same volumes.
        noise_hu: standard deviation of Gaussian noise added to every voxel (HU).
        lesion_hu: mean lesion intensity (HU); hypodense against the liver by default.
        liver_hu: mean liver intensity (HU).

    Returns:
        ``(ct, labels)``: ``ct`` int16 HU, ``labels`` uint8, on the same grid (origin 0,
        identity direction). ``labels.metadata["lesions"]`` lists each lesion's
        ``radius_mm``, ``centre_mm`` (z, y, x) and voxel count.

    >>> ct, lab = phantom(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None),))
    >>> ct.array.dtype, int((lab.array == 2).any())
    (dtype('int16'), 1)
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    _check_common(shape, spacing, noise_hu, 3)
    rng = np.random.default_rng(seed)
    coords = tuple(
        (np.arange(n, dtype=np.float32) * s).reshape([-1 if a == ax else 1 for a in range(3)])
        for ax, (n, s) in enumerate(zip(shape, spacing))
    )
    extent = tuple(n * s for n, s in zip(shape, spacing))
    hu, body, liver = _anatomy(coords, extent, liver_hu)  # type: ignore[arg-type]
    lesion, placed = _place_lesions(liver, coords, spacing, lesions, rng)
    hu[lesion] = lesion_hu
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[lesion] = 2
    meta = {"source": "liverseg.testing.phantom", "seed": seed}
    ct = Volume(array=_finish(hu, noise_hu, rng), spacing=spacing, modality="CT", metadata=dict(meta))
    lab = ct.with_array(labels, is_hu=False, metadata={**meta, "lesions": placed})
    return ct, lab


def phantom_2d(
    *,
    shape: tuple[int, int] = (128, 128),
    spacing: tuple[float, float] = (1.2, 1.2),
    lesions: Sequence[LesionSpec] = ((8.0, None),),
    seed: int = 0,
    noise_hu: float = 10.0,
    lesion_hu: float = TISSUE_HU["lesion"],
    liver_hu: float = TISSUE_HU["liver"],
    slice_thickness: float = 2.5,
) -> tuple[Volume, Volume]:
    """One axial slice of the phantom (a Volume with one z-slice) and its labels.

    Lesions are discs: ``(radius_mm, centre_mm)`` with ``centre_mm`` as (y, x) in mm
    or ``None`` for a random place inside the liver. ``slice_thickness`` (mm) becomes
    the z spacing. Same returns as :func:`phantom`.

    >>> ct, lab = phantom_2d(shape=(64, 64), spacing=(2.0, 2.0), lesions=((5.0, None),))
    >>> ct.shape
    (1, 64, 64)
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    _check_common(shape, spacing, noise_hu, 2)
    if not (np.isfinite(slice_thickness) and slice_thickness > 0):
        raise ValueError(f"slice_thickness must be a positive number of mm; got {slice_thickness}")
    rng = np.random.default_rng(seed)
    yy = (np.arange(shape[0], dtype=np.float32) * spacing[0])[:, None]
    xx = (np.arange(shape[1], dtype=np.float32) * spacing[1])[None, :]
    # the mid-level slice of a 120 mm tall abdomen, through the liver
    ez = 120.0
    zz = np.full((1, 1), 0.55 * ez, np.float32)
    hu, body, liver = _anatomy((zz, yy, xx), (ez, shape[0] * spacing[0], shape[1] * spacing[1]), liver_hu)
    lesion, placed = _place_lesions(liver, (yy, xx), spacing, lesions, rng)
    hu[lesion] = lesion_hu
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[lesion] = 2
    meta = {"source": "liverseg.testing.phantom_2d", "seed": seed}
    sp3 = (float(slice_thickness), spacing[0], spacing[1])
    ct = Volume(array=_finish(hu, noise_hu, rng)[None], spacing=sp3, modality="CT", metadata=dict(meta))
    lab = ct.with_array(labels[None], is_hu=False, metadata={**meta, "lesions": placed})
    return ct, lab


def sphere_voxel_error(radius_mm: float, spacing: Sequence[float]) -> float:
    """A generous bound on |voxel count - 4/3·π·r³/voxel volume| for a voxelised sphere.

    The voxelisation error is at most the shell of half a voxel diagonal around the surface.
    """
    h = 0.5 * math.sqrt(sum(s * s for s in spacing))
    v = float(np.prod(spacing))
    return 4.0 / 3.0 * math.pi * ((radius_mm + h) ** 3 - max(radius_mm - h, 0.0) ** 3) / v
