"""Measurements of a liver/tumor label mask: liver volume, lesions, tumor burden, RECIST.

Everything here is a pure function of a label :class:`~liverseg.io.Volume` (0 background,
1 liver, 2 tumor) and, optionally, the CT it was drawn on. Results are dataclasses whose
``to_dict()`` is JSON-able, with units in the field names, and whose ``from_dict()`` builds
them again from it (report.json's ``"analysis"``: ``Analysis.from_dict(a.to_dict()) == a``).
A value that cannot be computed is ``None`` and its reason is in ``reasons`` (never a silent 0).

Conventions:

* Liver volume counts labels 1 + 2: tumor is part of the liver.
* Lesions are the 26-connected components of label 2 (in 3D; 8-connected on a single slice),
  numbered 1, 2, ... by decreasing size.
* The longest axial diameter is measured on every axial slice of a lesion, on its outline at
  the half-voxel boundary (``skimage.measure.find_contours`` at level 0.5, so a disc of
  diameter d measures d within a pixel), as the largest distance between two outline points
  (the convex hull's diameter); the short axis is the longest chord perpendicular to it on the
  same slice. The slice with the longest diameter wins.
* RECIST 1.1: a lesion is measurable when its longest diameter is at least 10 mm on CT with
  slices no thicker than 5 mm; with thicker slices the minimum is twice the slice thickness
  (RECIST 1.1, Eisenhauer et al. 2009). The two largest measurable lesions (by longest
  diameter) are the target-lesion candidates (at most two per organ; all lesions here are
  in the liver).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist, squareform
from skimage import measure

from liverseg.analysis.components import bounding_box
from liverseg.analysis.confidence import LOW_CONFIDENCE, TumorProbability, confidence_level
from liverseg.io.volume import Volume

__all__ = ["Analysis", "Flag", "Lesion", "analyze", "LIVER_VOLUME_NOTE", "RECIST_MIN_DIAMETER_MM", "THICK_SLICE_MM"]

log = logging.getLogger(__name__)

#: RECIST 1.1 minimum longest diameter of a measurable lesion on CT (mm).
RECIST_MIN_DIAMETER_MM = 10.0
#: Slices thicker than this (mm) are "thick": RECIST's minimum becomes twice the thickness.
THICK_SLICE_MM = 5.0
#: How many target lesions RECIST 1.1 allows per organ.
RECIST_TARGETS_PER_ORGAN = 2

LIVER_VOLUME_NOTE = "Liver volume includes the tumor (labels 1 + 2): tumor is part of the liver."


@dataclasses.dataclass(frozen=True)
class Flag:
    """Something the reader must know about the measurements.

    ``code`` is stable (for programs); ``message`` is plain words (for people).
    """

    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Flag":
        """The Flag that :meth:`to_dict` gave ``d``.

        Raises:
            ValueError: ``d`` is not a dict with ``code`` and ``message``.
        """
        return cls(**_fields_of(cls, d))


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One tumor: a 26-connected component of label 2.

    Coordinates: ``slice_range`` and ``diameter_slice`` are z indices (0-based, inclusive);
    ``centroid_voxel`` is (z, y, x) in voxels; ``centroid_lps_mm`` is the world position
    (x, y, z) in mm in DICOM/ITK LPS. Endpoints are (y, x) in (fractional) pixels on
    ``diameter_slice``. ``*_px`` sizes are in pixels and given only when the spacing is unknown.
    """

    id: int
    voxel_count: int
    volume_ml: float | None
    axial_area_mm2: float | None
    axial_area_px: int
    longest_axial_diameter_mm: float | None
    short_axis_mm: float | None
    longest_axial_diameter_px: float | None
    short_axis_px: float | None
    diameter_slice: int
    long_axis_endpoints_px: tuple[tuple[float, float], tuple[float, float]]
    short_axis_endpoints_px: tuple[tuple[float, float], tuple[float, float]] | None
    mean_hu: float | None
    std_hu: float | None
    slice_range: tuple[int, int]
    centroid_voxel: tuple[float, float, float]
    centroid_lps_mm: tuple[float, float, float] | None
    touches_scan_end: bool
    measurable: bool | None
    is_target_candidate: bool
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    #: mean tumor probability over the lesion's voxels (0–1), None without the model's probabilities
    confidence: float | None = None
    #: ``"high"`` or ``"low"`` (below :data:`liverseg.analysis.confidence.LOW_CONFIDENCE`), or None
    confidence_level: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Lesion":
        """The Lesion that :meth:`to_dict` gave ``d`` (lists back to the tuples the fields hold).

        Keys unknown to this version are ignored; fields with a default (``confidence``, ...)
        may be absent (reports written before they existed).

        Raises:
            ValueError: ``d`` is not a dict or lacks a field without a default.
        """
        f = _fields_of(cls, d)
        for name in ("long_axis_endpoints_px", "short_axis_endpoints_px"):
            f[name] = _tuple_of_tuples(f[name])
        for name in ("slice_range", "centroid_voxel", "centroid_lps_mm"):
            f[name] = _tuple(f[name])
        f["reasons"] = dict(f.get("reasons") or {})
        return cls(**f)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Measurements of one label mask (see :func:`analyze`).

    ``liver_*`` counts labels 1 + 2 (see ``notes``). On a single slice (``is_2d``) volumes
    are ``None`` and areas are given instead (mm² when the spacing is known, pixels always).
    ``tumor_burden_percent`` is tumor / liver (voxels, or pixels on a slice) × 100.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float] | None
    is_2d: bool
    slice_thickness_mm: float | None
    liver_voxel_count: int
    liver_volume_ml: float | None
    liver_area_mm2: float | None
    liver_area_px: int | None
    liver_mean_hu: float | None
    tumor_voxel_count: int
    tumor_count: int
    tumor_volume_ml: float | None
    tumor_area_mm2: float | None
    tumor_burden_percent: float | None
    liver_is_lower_bound: bool
    lesions: list[Lesion]
    flags: list[Flag]
    notes: list[str]
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def target_candidates(self) -> list[Lesion]:
        return [les for les in self.lesions if les.is_target_candidate]

    def flag_codes(self) -> list[str]:
        return [f.code for f in self.flags]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists, numpy scalars become Python numbers)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Analysis":
        """The Analysis that :meth:`to_dict` gave ``d`` (e.g. report.json's ``"analysis"``).

        The exact inverse for what ``to_dict`` stores: ``Analysis.from_dict(a.to_dict()) == a``
        (a value that was not finite is ``None`` in the dict, and stays ``None``). Keys
        unknown to this version are ignored.

        Raises:
            ValueError: ``d`` is not such a dict (a field is missing, a lesion or flag is not a dict).
        """
        f = _fields_of(cls, d)
        f["shape"] = _tuple(f["shape"])
        f["spacing_mm"] = _tuple(f["spacing_mm"])
        for name, item in (("lesions", Lesion), ("flags", Flag)):
            values = f[name]
            if not isinstance(values, list):
                raise ValueError(f"analysis[{name!r}] must be a list; got {type(values).__name__}")
            f[name] = [item.from_dict(v) for v in values]
        f["notes"] = list(f["notes"])
        f["reasons"] = dict(f.get("reasons") or {})
        return cls(**f)


def _fields_of(cls: type, d: Any) -> dict[str, Any]:
    """The values of ``cls``'s dataclass fields in ``d`` (others ignored); ValueError naming a missing one."""
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} is read from a dict (its to_dict()); got {type(d).__name__}")
    out: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in d:
            out[field.name] = d[field.name]
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"the {cls.__name__} dict has no {field.name!r}; it is not a {cls.__name__}.to_dict() "
                             "(a report.json written by liverseg holds one under 'analysis')")
    return out


def _tuple(value: Any) -> Any:
    """A JSON list back to a tuple (None stays None)."""
    return None if value is None else tuple(value)


def _tuple_of_tuples(value: Any) -> Any:
    """[[y, x], [y, x]] back to ((y, x), (y, x)) (None stays None)."""
    return None if value is None else tuple(tuple(p) for p in value)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class _Axes:
    long_mm: float
    short_mm: float
    long_px: float
    short_px: float
    long_ends: tuple[tuple[float, float], tuple[float, float]]
    short_ends: tuple[tuple[float, float], tuple[float, float]] | None


def _outline_points(mask2d: np.ndarray) -> list[np.ndarray]:
    """Sub-pixel outlines (lists of (y, x) points, pixel units) at the half-voxel boundary."""
    padded = np.pad(mask2d.astype(np.float32), 1)
    return [c - 1.0 for c in measure.find_contours(padded, 0.5)]


def _chord_span(contours_uv: list[np.ndarray], u0: float) -> tuple[float, float] | None:
    """(v_min, v_max) where the line u = u0 crosses the outline, or None."""
    vs: list[np.ndarray] = []
    for c in contours_uv:
        a, b = c[:-1], c[1:]
        lo = np.minimum(a[:, 0], b[:, 0])
        hi = np.maximum(a[:, 0], b[:, 0])
        hit = (lo <= u0) & (u0 <= hi) & (hi > lo)
        if not hit.any():
            continue
        a, b = a[hit], b[hit]
        t = (u0 - a[:, 0]) / (b[:, 0] - a[:, 0])
        vs.append(a[:, 1] + t * (b[:, 1] - a[:, 1]))
    if not vs:
        return None
    v = np.concatenate(vs)
    return float(v.min()), float(v.max())


def _long_axis(mask2d: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """(length mm, end 0 mm, end 1 mm, outlines in px) of a 2D mask's longest diameter."""
    contours = _outline_points(mask2d)
    if not contours:
        return None
    scale = np.asarray(pixel_mm, float)
    pts = np.concatenate(contours) * scale  # mm, (y, x)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # collinear or too few points
        hull = pts
    d = squareform(pdist(hull))
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(d[i, j]), hull[i], hull[j], contours


def _axes(mask2d: np.ndarray, pixel_mm: tuple[float, float], long: Any = None) -> _Axes | None:
    """Longest diameter and perpendicular short axis of a 2D mask (mm with ``pixel_mm``)."""
    long = long or _long_axis(mask2d, pixel_mm)
    if long is None:
        return None
    long_mm, p0, p1, contours = long
    scale = np.asarray(pixel_mm, float)
    long_ends = (tuple((p0 / scale).tolist()), tuple((p1 / scale).tolist()))
    if long_mm <= 0:
        return _Axes(0.0, 0.0, 0.0, 0.0, long_ends, None)  # type: ignore[arg-type]
    # short axis: longest chord perpendicular to the long axis (span of the outline along
    # the perpendicular direction, over lines perpendicular to the long axis)
    e_u = (p1 - p0) / long_mm
    e_v = np.array([-e_u[1], e_u[0]])
    contours_uv = [np.stack([(c * scale - p0) @ e_u, (c * scale - p0) @ e_v], axis=1) for c in contours]
    step = 0.25 * float(scale.min())
    best, best_ends = 0.0, None
    for u0 in np.arange(step / 2, long_mm, step):
        span = _chord_span(contours_uv, float(u0))
        if span is not None and span[1] - span[0] > best:
            best = span[1] - span[0]
            a = p0 + u0 * e_u + span[0] * e_v
            b = p0 + u0 * e_u + span[1] * e_v
            best_ends = (tuple((a / scale).tolist()), tuple((b / scale).tolist()))
    long_px = float(np.linalg.norm(np.subtract(long_ends[1], long_ends[0])))
    short_px = float(np.linalg.norm(np.subtract(best_ends[1], best_ends[0]))) if best_ends else 0.0
    return _Axes(long_mm, float(best), long_px, short_px, long_ends, best_ends)  # type: ignore[arg-type]


def _slice_thickness(vol: Volume) -> float | None:
    """Slice thickness in mm: ``metadata["slice_thickness_mm"]`` (DICOM) or the z spacing."""
    for key in ("slice_thickness_mm", "slice_thickness"):
        val = vol.metadata.get(key)
        try:
            if val is not None and float(val) > 0:
                return float(val)
        except (TypeError, ValueError):
            pass
    return None if vol.spacing is None else float(vol.spacing[0])


def _world_lps(vol: Volume, zyx: tuple[float, float, float]) -> tuple[float, float, float] | None:
    if vol.spacing is None:
        return None
    ijk = np.array([zyx[2], zyx[1], zyx[0]]) * np.asarray(vol.spacing)[::-1]
    w = np.asarray(vol.origin) + vol.direction @ ijk
    return tuple(round(float(c), 3) for c in w)  # type: ignore[return-value]


# --------------------------------------------------------------------------- analysis


def _check_inputs(labels: Volume, ct: Volume | None) -> np.ndarray:
    if not isinstance(labels, Volume):
        raise TypeError(f"labels must be a liverseg.io.Volume; got {type(labels).__name__}")
    lab = np.asarray(labels.array)
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        if not np.all(np.isin(lab, (0, 1, 2))):
            raise ValueError("labels must hold integers 0 (background), 1 (liver), 2 (tumor)")
        lab = lab.astype(np.uint8)
    bad = np.setdiff1d(np.unique(lab), (0, 1, 2)) if lab.size and (lab.min() < 0 or lab.max() > 2) else np.array([])
    if bad.size:
        raise ValueError(
            f"labels must hold only 0 (background), 1 (liver), 2 (tumor); found {bad[:5].tolist()}: "
            "convert the mask to these labels first"
        )
    if ct is not None and ct.shape != labels.shape:
        raise ValueError(f"ct shape {ct.shape} differs from labels shape {labels.shape}: they must share one grid")
    return lab


def analyze(
    labels: Volume,
    ct: Volume | None = None,
    *,
    tumor_probability: TumorProbability | None = None,
    flag_below: float = LOW_CONFIDENCE,
) -> Analysis:
    """Measure the liver and every lesion in a label mask.

    Args:
        labels: label Volume (0 background, 1 liver, 2 tumor), spacing in mm (z, y, x) or
            ``None`` (2D PNG/JPEG: nothing in mm then).
        ct: the CT on the same grid, in HU, for the lesions' mean/std HU; optional.
        tumor_probability: the model's tumor probability on the same grid (from
            :class:`~liverseg.inference.Prediction`), for each lesion's ``confidence``.
        flag_below: lesions with a lower confidence are ``"low"`` and never RECIST targets.

    Returns:
        An :class:`Analysis`. Volumes in mL, lengths in mm, areas in mm² (and pixels).

    >>> from liverseg.testing import phantom
    >>> ct, lab = phantom(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None),))
    >>> a = analyze(lab, ct)
    >>> a.tumor_count, a.lesions[0].measurable
    (1, True)
    """
    lab = _check_inputs(labels, ct)
    spacing = labels.spacing
    is_2d = labels.is_2d
    voxel_ml = labels.voxel_volume_ml
    pixel_mm = (spacing[1], spacing[2]) if spacing is not None else (1.0, 1.0)
    pixel_mm2 = pixel_mm[0] * pixel_mm[1] if spacing is not None else None
    thickness = _slice_thickness(labels) if spacing is not None else None

    reasons: dict[str, str] = {}
    flags: list[Flag] = []
    notes: list[str] = [LIVER_VOLUME_NOTE]

    liver = lab >= 1
    tumor = lab == 2
    n_liver = int(np.count_nonzero(liver))
    n_tumor = int(np.count_nonzero(tumor))

    hu_ok = ct is not None and ct.is_hu
    ct_reason = (
        "no CT given"
        if ct is None
        else "the image is not in Hounsfield units (an 8-bit PNG/JPEG slice)"
        if not ct.is_hu
        else ""
    )

    # --- flags
    if spacing is None:
        flags.append(
            Flag(
                "spacing_unknown",
                "The image does not say its pixel size (PNG/JPEG): sizes are in pixels, not mm, "
                "and no volume or RECIST status can be given.",
            )
        )
    if thickness is not None and thickness > THICK_SLICE_MM:
        flags.append(
            Flag(
                "thick_slices",
                f"Slices are {thickness:g} mm thick (more than {THICK_SLICE_MM:g} mm): small lesions may be missed, "
                f"and RECIST's minimum measurable size is {2 * thickness:g} mm (twice the slice thickness).",
            )
        )
    touches = False
    if n_liver and not is_2d:
        zs = np.flatnonzero(liver.any(axis=(1, 2)))
        first, last = bool(zs[0] == 0), bool(zs[-1] == lab.shape[0] - 1)
        if first or last:
            touches = True
            where = " and ".join(w for w, t in (("first", first), ("last", last)) if t)
            flags.append(
                Flag(
                    "liver_incomplete",
                    f"The liver reaches the scan's {where} slice, so part of it may lie outside the scan: "
                    "liver volume, tumor volume and tumor burden are lower bounds.",
                )
            )
        # the in-plane field of view cuts the liver: it touches the image's edge on some slice
        edge = bool(liver[:, 0, :].any() or liver[:, -1, :].any() or liver[:, :, 0].any() or liver[:, :, -1].any())
        if edge:
            touches = True
            flags.append(
                Flag(
                    "liver_cut_by_field_of_view",
                    "The liver reaches the edge of the image (the in-plane field of view), so part of it may lie "
                    "outside the scan: liver volume, tumor volume and tumor burden are lower bounds.",
                )
            )
    if is_2d:
        flags.append(
            Flag(
                "single_slice",
                "A single slice: areas are reported instead of volumes, and the tumor burden is the "
                "tumor's share of the liver's area on this slice only.",
            )
        )
    if n_liver == 0:
        flags.append(Flag("no_liver", "No liver was found in the mask."))

    # --- liver and tumor totals
    liver_volume_ml = tumor_volume_ml = None
    liver_area_mm2 = tumor_area_mm2 = None
    liver_area_px = None
    if is_2d:
        liver_area_px = n_liver
        reasons["liver_volume_ml"] = reasons["tumor_volume_ml"] = "a single slice has no volume (see the areas)"
        if pixel_mm2 is not None:
            liver_area_mm2 = n_liver * pixel_mm2
            tumor_area_mm2 = n_tumor * pixel_mm2
        else:
            reasons["liver_area_mm2"] = reasons["tumor_area_mm2"] = "pixel size unknown (see the areas in pixels)"
    else:
        reasons["liver_area_mm2"] = reasons["tumor_area_mm2"] = "a 3D scan: see the volumes"
        reasons["liver_area_px"] = "a 3D scan: see the volumes"
        if voxel_ml is not None:
            liver_volume_ml = n_liver * voxel_ml
            tumor_volume_ml = n_tumor * voxel_ml
        else:
            reasons["liver_volume_ml"] = reasons["tumor_volume_ml"] = "voxel size unknown"
    if n_liver:
        burden = 100.0 * n_tumor / n_liver
    else:
        burden = None
        reasons["tumor_burden_percent"] = "no liver in the mask"

    liver_mean_hu = None
    parenchyma = lab == 1
    if hu_ok and parenchyma.any():
        liver_mean_hu = float(np.asarray(ct.array)[parenchyma].mean())  # type: ignore[union-attr]
    else:
        reasons["liver_mean_hu"] = ct_reason or "no liver parenchyma (label 1) in the mask"

    # --- lesions
    lesions_raw: list[dict[str, Any]] = []
    if n_tumor:
        # label within the tumor's bounding box (+1 voxel): much faster than the whole scan
        tbox = bounding_box(tumor)
        tbox = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(tbox, lab.shape))
        comp = np.zeros(lab.shape, np.int32)
        structure = ndimage.generate_binary_structure(3, 3)  # 26-connectivity (8 within a slice)
        comp[tbox], n_comp = ndimage.label(tumor[tbox], structure=structure)
        boxes = ndimage.find_objects(comp[tbox])
        boxes = [tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, tbox)) for box in boxes]
        sizes = [int(np.count_nonzero(comp[box] == k + 1)) for k, box in enumerate(boxes)]
        order = sorted(range(n_comp), key=lambda k: (-sizes[k], boxes[k][0].start, boxes[k][1].start))
        for k in order:
            raw = _measure_lesion(comp, k + 1, boxes[k], labels, ct if hu_ok else None, pixel_mm)
            if tumor_probability is not None:
                values = tumor_probability.dense(boxes[k])
                raw["confidence"] = round(float(values[comp[boxes[k]] == k + 1].mean()), 4)
            lesions_raw.append(raw)
    lesions = _finish_lesions(
        lesions_raw, spacing, thickness, is_2d, voxel_ml, pixel_mm2, ct_reason, lab.shape[0], flag_below=flag_below
    )

    return Analysis(
        shape=labels.shape,
        spacing_mm=spacing,
        is_2d=is_2d,
        slice_thickness_mm=thickness,
        liver_voxel_count=n_liver,
        liver_volume_ml=liver_volume_ml,
        liver_area_mm2=liver_area_mm2,
        liver_area_px=liver_area_px,
        liver_mean_hu=liver_mean_hu,
        tumor_voxel_count=n_tumor,
        tumor_count=len(lesions),
        tumor_volume_ml=tumor_volume_ml,
        tumor_area_mm2=tumor_area_mm2,
        tumor_burden_percent=burden,
        liver_is_lower_bound=touches,
        lesions=lesions,
        flags=flags,
        notes=notes,
        reasons=reasons,
    )


def _measure_lesion(
    comp: np.ndarray,
    label: int,
    box: tuple[slice, slice, slice],
    labels: Volume,
    ct: Volume | None,
    pixel_mm: tuple[float, float],
) -> dict[str, Any]:
    sub = comp[box] == label
    z0, y0, x0 = box[0].start, box[1].start, box[2].start
    best: tuple[Any, int] | None = None
    for dz in range(sub.shape[0]):
        m = sub[dz]
        if not m.any():
            continue
        long = _long_axis(m, pixel_mm)
        if long is not None and (best is None or long[0] > best[0][0]):
            best = (long, dz)
    assert best is not None
    # the short axis only on the slice where the lesion is longest
    ax = _axes(sub[best[1]], pixel_mm, long=best[0])
    assert ax is not None
    zbest, area_px = z0 + best[1], int(sub[best[1]].sum())
    idx = np.argwhere(sub)
    centroid = tuple(float(c) for c in idx.mean(axis=0) + (z0, y0, x0))
    mean_hu = std_hu = None
    if ct is not None:
        vals = np.asarray(ct.array)[box][sub].astype(np.float64)
        mean_hu, std_hu = float(vals.mean()), float(vals.std())

    def shift(ends: Any) -> Any:
        if ends is None:
            return None
        return tuple((round(p[0] + y0, 2), round(p[1] + x0, 2)) for p in ends)

    zs = np.flatnonzero(sub.any(axis=(1, 2))) + z0
    return dict(
        voxel_count=int(sub.sum()),
        axes=ax,
        diameter_slice=int(zbest),
        axial_area_px=area_px,
        long_ends=shift(ax.long_ends),
        short_ends=shift(ax.short_ends),
        mean_hu=mean_hu,
        std_hu=std_hu,
        slice_range=(int(zs[0]), int(zs[-1])),
        centroid_voxel=tuple(round(c, 2) for c in centroid),
        centroid_lps_mm=_world_lps(labels, centroid),  # type: ignore[arg-type]
    )


def _finish_lesions(
    raw: list[dict[str, Any]],
    spacing: tuple[float, float, float] | None,
    thickness: float | None,
    is_2d: bool,
    voxel_ml: float | None,
    pixel_mm2: float | None,
    ct_reason: str,
    n_slices: int,
    *,
    flag_below: float,
) -> list[Lesion]:
    known = spacing is not None
    min_mm = None if thickness is None else max(RECIST_MIN_DIAMETER_MM, 2.0 * thickness if thickness > THICK_SLICE_MM else 0.0)
    measurable: list[bool | None] = []
    for r in raw:
        measurable.append(None if min_mm is None else bool(r["axes"].long_mm >= min_mm - 1e-9))
    levels = [confidence_level(r.get("confidence"), flag_below=flag_below) for r in raw]
    ranked = sorted(
        (k for k, m in enumerate(measurable) if m and levels[k] != "low"),
        key=lambda k: -raw[k]["axes"].long_mm,
    )[:RECIST_TARGETS_PER_ORGAN]
    out: list[Lesion] = []
    for k, r in enumerate(raw):
        ax: _Axes = r["axes"]
        reasons: dict[str, str] = {}
        if is_2d:
            reasons["volume_ml"] = "a single slice has no volume (see axial_area_mm2)"
        elif voxel_ml is None:
            reasons["volume_ml"] = "voxel size unknown"
        if not known:
            for f in ("longest_axial_diameter_mm", "short_axis_mm", "axial_area_mm2", "centroid_lps_mm"):
                reasons[f] = "pixel size unknown (see the *_px values)"
            reasons["measurable"] = "RECIST needs sizes in mm; the pixel size is unknown"
        if ax.short_ends is None:
            reasons["short_axis_mm"] = "the lesion is a line on its largest slice; no perpendicular axis"
        if r["mean_hu"] is None:
            reasons["mean_hu"] = reasons["std_hu"] = ct_reason
        if r.get("confidence") is None:
            reasons["confidence"] = "no model probabilities for this mask (an edited or imported mask)"
        elif levels[k] == "low" and measurable[k]:
            reasons["is_target_candidate"] = f"low confidence (< {flag_below:g}): not chosen as a RECIST target"
        if min_mm is not None and min_mm > RECIST_MIN_DIAMETER_MM:
            reasons["measurable_rule"] = f"slices thicker than {THICK_SLICE_MM:g} mm: minimum {min_mm:g} mm (2 x thickness)"
        touches = (r["slice_range"][0] == 0 or r["slice_range"][1] == n_slices - 1) and not is_2d
        out.append(
            Lesion(
                id=k + 1,
                voxel_count=r["voxel_count"],
                volume_ml=(r["voxel_count"] * voxel_ml if (voxel_ml is not None and not is_2d) else None),
                axial_area_mm2=(r["axial_area_px"] * pixel_mm2 if pixel_mm2 is not None else None),
                axial_area_px=r["axial_area_px"],
                longest_axial_diameter_mm=(round(ax.long_mm, 2) if known else None),
                short_axis_mm=(round(ax.short_mm, 2) if known and ax.short_ends is not None else None),
                longest_axial_diameter_px=(None if known else round(ax.long_px, 2)),
                short_axis_px=(None if known else round(ax.short_px, 2)),
                diameter_slice=r["diameter_slice"],
                long_axis_endpoints_px=r["long_ends"],
                short_axis_endpoints_px=r["short_ends"],
                mean_hu=r["mean_hu"],
                std_hu=r["std_hu"],
                slice_range=r["slice_range"],
                centroid_voxel=r["centroid_voxel"],
                centroid_lps_mm=r["centroid_lps_mm"],
                touches_scan_end=touches,
                measurable=measurable[k],
                is_target_candidate=k in ranked,
                reasons=reasons,
                confidence=r.get("confidence"),
                confidence_level=levels[k],
            )
        )
    return out
