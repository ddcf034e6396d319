"""Register a follow-up CT onto a baseline CT of the same patient (SimpleITK), driven by the livers.

The follow-up is the *moving* image and the baseline the *fixed* one, so every comparison
happens in the baseline's space. Steps, on copies resampled to an isotropic working grid
(``grid_mm``, 3 mm by default: a 512×512×120 scan becomes about a million voxels):

1. **Initialise** by the livers' centres of mass (labels 1 + 2; tumor is part of the liver),
   so a shifted scan or another table position starts close.
2. **Rigid** (``Euler3DTransform``, rotation about the baseline liver's centre): mean squares
   on the CT clipped to -200…400 HU, inside the baseline liver dilated by ``ct_margin_mm``
   (liver edge, ribs, body wall, spine: what fixes a rotation the liver's near-ellipsoid shape
   does not). Without a CT this step runs on the livers' signed distance maps.
3. **Affine** (``AffineTransform``, started from the rigid result): mean squares on the livers'
   signed distance maps (mm, clipped to ±``distance_clip_mm``), which fits the liver surfaces to
   each other whatever the contrast phase.

Both use SimpleITK's regular-step gradient descent, two resolution levels, and a fixed
sampling seed, so the same inputs give the same transform. The residual misalignment is the
distance between the baseline liver's surface and the registered follow-up liver's surface
(mm, both directions pooled: mean, 95th percentile, maximum): each scan's surface voxels on
its own grid, the follow-up's mapped into the baseline's world, nearest points (a k-d tree),
so two identical livers measure 0 whatever their grids.

>>> from liverseg.testing import phantom
>>> ct, lab = phantom(shape=(32, 80, 80), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None),))
>>> reg = register(ct, lab, ct, lab)
>>> reg.liver_surface_mean_mm < 1.0
True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from liverseg.analysis.components import bounding_box
from liverseg.io.volume import Volume

__all__ = ["Registration", "register", "DEFAULT_GRID_MM"]

log = logging.getLogger(__name__)

#: Isotropic voxel size (mm) of the working grid the registration runs on.
DEFAULT_GRID_MM = 3.0
#: CT intensities are clipped to this window (HU) for the rigid step.
CT_CLIP_HU = (-200.0, 400.0)


@dataclasses.dataclass
class Registration:
    """The follow-up → baseline registration (see :func:`register`).

    ``transform`` is a SimpleITK ``AffineTransform`` in ITK's convention: it maps a point of the
    **baseline** (fixed) world, mm LPS, to the **follow-up** (moving) world, which is what
    ``sitk.Resample`` needs to bring follow-up images onto the baseline grid.
    """

    transform: Any
    steps: list[dict[str, Any]]
    used_ct: bool
    grid_mm: float
    liver_dice_after: float
    liver_surface_mean_mm: float | None
    liver_surface_p95_mm: float | None
    liver_surface_max_mm: float | None
    followup_fov_covers_baseline_liver: float
    seconds: float
    warnings: list[str] = dataclasses.field(default_factory=list)

    # ------------------------------------------------------------------ geometry
    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 linear part (baseline → follow-up world)."""
        return np.asarray(self.transform.GetMatrix(), float).reshape(3, 3)

    @property
    def rotation_deg(self) -> float:
        """Angle (degrees) of the rotation closest to the linear part (polar decomposition)."""
        u, _, vt = np.linalg.svd(self.matrix)
        r = u @ vt
        return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))))

    @property
    def scale(self) -> tuple[float, float, float]:
        """Singular values of the linear part: the affine's stretch along its principal axes."""
        return tuple(float(s) for s in np.linalg.svd(self.matrix, compute_uv=False))  # type: ignore[return-value]

    def followup_point_in_baseline(self, point_lps_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        """A follow-up world point (mm LPS) in the baseline's world (the inverse transform)."""
        inv = self.transform.GetInverse()
        return tuple(float(c) for c in inv.TransformPoint(tuple(float(c) for c in point_lps_mm)))  # type: ignore[return-value]

    def baseline_point_in_followup(self, point_lps_mm: tuple[float, float, float]) -> tuple[float, float, float]:
        return tuple(float(c) for c in self.transform.TransformPoint(tuple(float(c) for c in point_lps_mm)))  # type: ignore[return-value]

    def baseline_points_in_followup(self, pts: np.ndarray) -> np.ndarray:
        """Baseline world points (N, 3), mm LPS, in the follow-up's world: A (p - c) + c + t."""
        c = np.asarray(self.transform.GetCenter(), float)
        t = np.asarray(self.transform.GetTranslation(), float)
        return (np.asarray(pts, float) - c) @ self.matrix.T + c + t

    def followup_points_in_baseline(self, pts: np.ndarray) -> np.ndarray:
        """Follow-up world points (N, 3), mm LPS, in the baseline's world (the inverse of the above)."""
        c = np.asarray(self.transform.GetCenter(), float)
        t = np.asarray(self.transform.GetTranslation(), float)
        return (np.asarray(pts, float) - c - t) @ np.linalg.inv(self.matrix).T + c

    # ------------------------------------------------------------------ resampling
    def resample_onto_baseline(self, followup: Volume, baseline: Volume, *, labels: bool) -> Volume:
        """``followup`` (a CT, or a label/component map with ``labels=True``) on the baseline's grid.

        Labels use nearest-neighbour interpolation and 0 outside the follow-up's field of view;
        CT uses linear interpolation and -1024 HU outside.
        """
        import SimpleITK as sitk

        moving = followup.to_sitk()
        ref = baseline.to_sitk()
        if labels:
            out = sitk.Resample(moving, ref, self.transform, sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
        else:
            out = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), ref, self.transform, sitk.sitkLinear, -1024.0,
                                sitk.sitkFloat32)
        arr = sitk.GetArrayFromImage(out)
        if not labels:
            arr = np.clip(np.rint(arr), -1024, 3071).astype(np.int16)
        return baseline.with_array(arr, is_hu=not labels and followup.is_hu,
                                   modality=followup.modality, metadata={"registered_from": "follow-up"})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: method, transform parameters, residual misalignment (mm)."""
        t = self.transform
        return {
            "method": "SimpleITK: liver centre-of-mass initialisation, rigid (Euler3D) on "
                      + ("liver-masked CT" if self.used_ct else "liver signed distance maps")
                      + ", then affine on liver signed distance maps; mean squares, regular-step gradient descent",
            "direction": "transform maps baseline world points (mm, LPS) to follow-up world points",
            "used_ct": self.used_ct,
            "grid_mm": self.grid_mm,
            "matrix": np.round(self.matrix, 6).tolist(),
            "translation_mm": [round(float(v), 3) for v in t.GetTranslation()],
            "center_mm": [round(float(v), 3) for v in t.GetCenter()],
            "rotation_deg": round(self.rotation_deg, 3),
            "scale": [round(s, 4) for s in self.scale],
            "steps": self.steps,
            "liver_dice_after": round(self.liver_dice_after, 4),
            "liver_surface_mean_mm": _r(self.liver_surface_mean_mm),
            "liver_surface_p95_mm": _r(self.liver_surface_p95_mm),
            "liver_surface_max_mm": _r(self.liver_surface_max_mm),
            "followup_fov_covers_baseline_liver": round(self.followup_fov_covers_baseline_liver, 4),
            "seconds": round(self.seconds, 2),
            "warnings": list(self.warnings),
        }


def _r(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(float(v), digits)


# ---------------------------------------------------------------------------- helpers


def _working_grid(img: Any, grid_mm: float) -> Any:
    """An empty reference image covering ``img``'s extent with isotropic ``grid_mm`` voxels."""
    import SimpleITK as sitk

    size = [max(1, int(math.ceil(n * s / grid_mm))) for n, s in zip(img.GetSize(), img.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetDirection(img.GetDirection())
    # keep the corner of the field of view where it was (the first voxel's centre moves inwards)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    corner = np.asarray(img.GetOrigin()) - d @ (0.5 * np.asarray(img.GetSpacing()))
    ref.SetOrigin(tuple(corner + d @ (0.5 * np.full(3, grid_mm))))
    ref.SetSpacing((grid_mm,) * 3)
    return ref


def _coarse(vol: Volume, ref: Any, *, kind: str) -> Any:
    """``vol`` on the working grid ``ref``: ``"ct"`` (linear, clipped HU) or ``"mask"`` (liver 0/1, float)."""
    import SimpleITK as sitk

    if kind == "ct":
        img = sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
        img = sitk.Clamp(img, sitk.sitkFloat32, *CT_CLIP_HU)
        return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, CT_CLIP_HU[0], sitk.sitkFloat32)
    liver = vol.with_array((np.asarray(vol.array) >= 1).astype(np.float32), is_hu=False)
    img = sitk.Resample(liver.to_sitk(), ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(img > 0.5, sitk.sitkUInt8)


def _distance_map(mask: Any, clip_mm: float) -> Any:
    import SimpleITK as sitk

    d = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Clamp(sitk.Cast(d, sitk.sitkFloat32), sitk.sitkFloat32, -clip_mm, clip_mm)


def _method(*, iterations: int, seed: int, fixed_mask: Any = None) -> Any:
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.1, seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _index_to_world(vol: Volume, zyx: np.ndarray) -> np.ndarray:
    """World points (N, 3) in mm LPS (x, y, z) of voxel indices (N, 3) in (z, y, x)."""
    sp = np.asarray(vol.spacing, float)[::-1]
    return np.asarray(vol.origin) + (np.asarray(zyx, float)[:, ::-1] * sp) @ vol.direction.T


def _inside_grid(vol: Volume, pts: np.ndarray) -> np.ndarray:
    """Which world points (N, 3) fall inside ``vol``'s field of view (voxel centres ± half a voxel)."""
    sp = np.asarray(vol.spacing, float)[::-1]
    ijk = np.linalg.solve(vol.direction @ np.diag(sp), (pts - np.asarray(vol.origin)).T).T
    size = np.asarray(vol.shape[::-1], float)
    return np.all((ijk >= -0.5) & (ijk <= size - 0.5), axis=1)


def _surface_points_mm(vol: Volume) -> np.ndarray:
    """World points (mm) of the liver's surface voxels (labels >= 1 with a background 6-neighbour)."""
    from scipy import ndimage

    liver = np.asarray(vol.array) >= 1
    if not liver.any():
        return np.zeros((0, 3))
    box = bounding_box(liver)
    sub = liver[box]
    surf = sub & ~ndimage.binary_erosion(sub, border_value=0)
    idx = np.argwhere(surf) + np.array([b.start for b in box])
    return _index_to_world(vol, idx)


def resample_labels_onto(reg: "Registration", followup: Volume, baseline: Volume) -> Volume:
    """Nearest-neighbour resampling of a follow-up label/lesion map onto the baseline grid (0 outside)."""
    return reg.resample_onto_baseline(followup, baseline, labels=True)


def _liver_box(mask: Any, margin_mm: float) -> tuple[list[int], list[int]]:
    """(index, size) in (x, y, z) of the mask's bounding box grown by ``margin_mm``, inside the image."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(mask)
    zyx = np.argwhere(arr)
    lo, hi = zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]
    m = np.ceil(margin_mm / np.asarray(mask.GetSpacing())).astype(int)
    size = np.asarray(mask.GetSize())
    start = np.maximum(lo - m, 0)
    stop = np.minimum(hi + m + 1, size)
    return start.tolist(), (stop - start).tolist()


def _crop(img: Any, box: tuple[list[int], list[int]]) -> Any:
    import SimpleITK as sitk

    start, size = box
    return sitk.RegionOfInterest(img, [int(v) for v in size], [int(v) for v in start])


def _centroid_mm(mask: Any) -> np.ndarray:
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.asarray(stats.GetCentroid(1), float)


# ---------------------------------------------------------------------------- main


def register(
    baseline_ct: Volume | None,
    baseline_labels: Volume,
    followup_ct: Volume | None,
    followup_labels: Volume,
    *,
    grid_mm: float = DEFAULT_GRID_MM,
    ct_margin_mm: float = 30.0,
    distance_clip_mm: float = 40.0,
    iterations: int = 150,
    affine: bool = True,
    seed: int = 7,
) -> Registration:
    """Register the follow-up onto the baseline (rigid, then affine), driven by the CT and the liver masks.

    Args:
        baseline_ct, followup_ct: the CTs in HU on their label masks' grids, or ``None`` (then
            both steps run on the liver masks' distance maps alone).
        baseline_labels, followup_labels: label Volumes (0/1/2) with known spacing (mm).
        grid_mm: isotropic voxel size (mm) of the working grid.
        ct_margin_mm: the rigid step's CT metric looks at the baseline liver dilated by this (mm).
        distance_clip_mm: signed distance maps are clipped to ± this (mm).
        iterations: most optimizer iterations per resolution level and step.
        affine: run the affine step after the rigid one (False: rigid only).
        seed: metric sampling seed (same inputs and seed → same transform).

    Returns:
        a :class:`Registration`; ``liver_surface_*_mm`` are ``None`` when a liver is empty.

    Raises:
        ValueError: a label volume has no liver or an unknown spacing (callers check first).
    """
    import SimpleITK as sitk

    from liverseg.analysis.metrics import dice

    t0 = time.perf_counter()
    for name, v in (("baseline", baseline_labels), ("follow-up", followup_labels)):
        if v.spacing is None:
            raise ValueError(f"the {name} mask has no voxel size (mm); registration needs one")
        if not (np.asarray(v.array) >= 1).any():
            raise ValueError(f"the {name} mask has no liver; registration is driven by the liver")
    if not (grid_mm > 0 and math.isfinite(grid_mm)):
        raise ValueError(f"grid_mm must be a positive number of mm; got {grid_mm}")
    use_ct = baseline_ct is not None and followup_ct is not None and baseline_ct.is_hu and followup_ct.is_hu
    warnings: list[str] = []
    if not use_ct:
        warnings.append("no CT (in HU) for both scans: the registration used the liver masks only")

    f_ref = _working_grid(baseline_labels.to_sitk(), grid_mm)
    m_ref = _working_grid(followup_labels.to_sitk(), grid_mm)
    f_mask = _coarse(baseline_labels, f_ref, kind="mask")
    m_mask = _coarse(followup_labels, m_ref, kind="mask")
    if not sitk.GetArrayViewFromImage(f_mask).any() or not sitk.GetArrayViewFromImage(m_mask).any():
        raise ValueError("a liver vanished on the working grid; use a smaller grid_mm")
    # the registration only looks near the liver: crop both working grids to the liver's box + a margin
    f_box = _liver_box(f_mask, ct_margin_mm + 2 * grid_mm)
    m_box = _liver_box(m_mask, ct_margin_mm + 20.0)
    f_mask, m_mask = _crop(f_mask, f_box), _crop(m_mask, m_box)
    f_dist = _distance_map(f_mask, distance_clip_mm)
    m_dist = _distance_map(m_mask, distance_clip_mm)

    # 1. centres of mass of the livers
    c_f, c_m = _centroid_mm(f_mask), _centroid_mm(m_mask)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(c_f))
    rigid.SetTranslation(tuple(c_m - c_f))
    steps: list[dict[str, Any]] = [{"step": "init", "translation_mm": [round(float(v), 2) for v in c_m - c_f]}]

    # 2. rigid
    if use_ct:
        f_img = _crop(_coarse(baseline_ct, f_ref, kind="ct"), f_box)  # type: ignore[arg-type]
        m_img = _crop(_coarse(followup_ct, m_ref, kind="ct"), m_box)  # type: ignore[arg-type]
        radius = max(1, int(round(ct_margin_mm / grid_mm)))
        region = sitk.BinaryDilate(f_mask, [radius] * 3, sitk.sitkBall)
    else:
        f_img, m_img, region = f_dist, m_dist, None
    reg = _method(iterations=iterations, seed=seed, fixed_mask=region)
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(f_img, m_img)
    steps.append({"step": "rigid", "metric": "mean squares on " + ("liver-masked CT (HU)" if use_ct else "liver distance (mm)"),
                  "final_metric": round(float(reg.GetMetricValue()), 4),
                  "iterations": int(reg.GetOptimizerIteration()),
                  "stop": reg.GetOptimizerStopConditionDescription()})

    final = sitk.AffineTransform(3)
    final.SetCenter(rigid.GetCenter())
    final.SetMatrix(rigid.GetMatrix())
    final.SetTranslation(rigid.GetTranslation())
    if affine:
        reg = _method(iterations=iterations, seed=seed)
        reg.SetInitialTransform(final, inPlace=True)
        reg.Execute(f_dist, m_dist)
        steps.append({"step": "affine", "metric": "mean squares on liver distance (mm)",
                      "final_metric": round(float(reg.GetMetricValue()), 4),
                      "iterations": int(reg.GetOptimizerIteration()),
                      "stop": reg.GetOptimizerStopConditionDescription()})

    registration = Registration(
        transform=final, steps=steps, used_ct=use_ct, grid_mm=float(grid_mm), liver_dice_after=0.0,
        liver_surface_mean_mm=None, liver_surface_p95_mm=None, liver_surface_max_mm=None,
        followup_fov_covers_baseline_liver=0.0, seconds=0.0, warnings=warnings,
    )

    # residual misalignment: the follow-up liver's surface points, mapped into the baseline's world,
    # against the baseline liver's surface points (no resampling, so a perfect fit measures 0)
    pts_f = _surface_points_mm(baseline_labels)
    pts_m = registration.followup_points_in_baseline(_surface_points_mm(followup_labels))
    if pts_f.size and pts_m.size:
        from scipy.spatial import cKDTree

        d = np.concatenate([cKDTree(pts_f).query(pts_m)[0], cKDTree(pts_m).query(pts_f)[0]])
        registration.liver_surface_mean_mm = float(d.mean())
        registration.liver_surface_p95_mm = float(np.percentile(d, 95))
        registration.liver_surface_max_mm = float(d.max())
    # how much of the baseline liver the follow-up's field of view holds, and the livers' overlap
    liver_b = np.asarray(baseline_labels.array) >= 1
    idx = np.argwhere(liver_b[::2, ::2, ::2]) * 2
    inside = _inside_grid(followup_labels, registration.baseline_points_in_followup(_index_to_world(baseline_labels, idx)))
    registration.followup_fov_covers_baseline_liver = float(inside.mean()) if inside.size else 0.0
    moved = resample_labels_onto(registration, followup_labels.with_array(
        (np.asarray(followup_labels.array) >= 1).astype(np.uint8)), baseline_labels)
    registration.liver_dice_after = float(dice(np.asarray(moved.array) >= 1, liver_b))
    if not (np.asarray(moved.array) >= 1).any():
        registration.warnings.append("the registered follow-up liver falls outside the baseline's field of view")
    registration.seconds = time.perf_counter() - t0
    log.info("registration: %.1f s, rotation %.2f deg, liver surface residual %s mm (mean)",
             registration.seconds, registration.rotation_deg, _r(registration.liver_surface_mean_mm))
    return registration
