"""Compare two scans of one patient lesion by lesion, with the RECIST 1.1 response.

:func:`compare` takes a baseline and a follow-up (finished study folders as ``liverseg predict``
writes them, or CT + mask pairs), registers the follow-up onto the baseline
(:mod:`liverseg.analysis.registration`), matches lesions, and returns a :class:`Comparison`
whose ``to_dict()`` is ``comparison.json``.

Measurements are :func:`liverseg.analysis.analyze` of each scan on its **own** grid (volumes,
longest axial diameters, RECIST target candidates, flags), so resampling never changes a
number; the registration is used only to decide which lesions are the same.

Lesion matching (lesions = 26-connected tumor components, numbered as ``analyze`` numbers them):

1. **Overlap** after registration: the follow-up's lesion map is resampled onto the baseline
   grid (nearest neighbour); a baseline and a follow-up lesion are linked when they share at
   least ``min_overlap_fraction`` of the smaller one's voxels. Links form groups, so one
   baseline lesion may link to several follow-up lesions (``split``) and several to one
   (``merged``).
2. **Centroid distance** for what is left: the closest pairs of unlinked lesions whose centroids
   (follow-up centroid mapped into baseline space) lie within ``max_distance_mm``.
3. Baseline lesions left alone are ``disappeared``; follow-up lesions left alone are ``new``.

RECIST 1.1 (Eisenhauer et al. 2009), with two scans: the targets are the baseline's target
candidates (at most two measurable liver lesions, the largest by longest axial diameter, as
``analyze`` picks them); the sum of their longest diameters is compared at follow-up (a split
target counts its fragments' sum; targets merged into one lesion count it once). The nadir is
the baseline (the only earlier sum). Response: **PD** when the sum grows by ≥ 20 % *and* ≥ 5 mm
or any new lesion appears; **CR** when every lesion has disappeared (targets and non-targets)
and none is new; **PR** when the sum falls by ≥ 30 % (or the targets are gone while non-target
lesions remain); **SD** otherwise. With no measurable baseline lesion the targets give no
answer: PD for a new lesion, CR when all lesions are gone, else non-CR/non-PD. Unequivocal
progression of non-target lesions is a reader's judgement and is not called here.

Comparisons are refused (:class:`ComparisonRefused`, with a ``code``) when the DICOM headers
name two different patients (``different_patient``), a scan has no voxel size or is a single
slice (``spacing_unknown``, ``single_slice``), a mask has no liver or the follow-up's field of
view misses most of the baseline liver (``different_body_region``), or the livers do not
overlap after registration (``no_overlap``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from liverseg.analysis.components import bounding_box
from liverseg.analysis.lesions import Analysis, Lesion, analyze, _jsonable
from liverseg.analysis.registration import DEFAULT_GRID_MM, Registration, register
from liverseg.errors import InputError
from liverseg.io.volume import Volume

__all__ = [
    "COMPARISON_SCHEMA",
    "Comparison",
    "ComparisonRefused",
    "LesionChange",
    "Recist",
    "Scan",
    "compare",
    "dicom_patient_id",
    "format_comparison",
    "load_scan",
    "recist_response",
]

log = logging.getLogger(__name__)

COMPARISON_SCHEMA = "liverseg.comparison/1"
#: RECIST 1.1 thresholds on the sum of target diameters.
PR_DECREASE_PERCENT = 30.0
PD_INCREASE_PERCENT = 20.0
PD_INCREASE_MM = 5.0


class ComparisonRefused(InputError):
    """The two scans cannot be compared; ``code`` says why (stable, for programs)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class Scan:
    """One side of a comparison: the label mask, its CT (optional), and what is known about it.

    ``patient_id`` comes from the DICOM header when the CT is DICOM; it is used for the
    same-patient check only and never written to any output.
    """

    labels: Volume
    ct: Volume | None = None
    name: str = "scan"
    patient_id: str | None = dataclasses.field(default=None, repr=False)
    report: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    source: str | None = None


def _read_mask(path: Path, *, like: Volume | None) -> Volume:
    """A label mask (0/1/2) read with SimpleITK; on ``like``'s grid when given (same shape required)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read the mask {path.name}: {str(exc).splitlines()[0][:200]}") from exc
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise InputError(f"the mask {path.name} is not a 3D label image; give mask.nii.gz as liverseg writes it")
    if like is not None:
        vol = Volume.from_sitk(img, spacing=like.spacing, modality="SEG", is_hu=False)
        if vol.shape != like.shape:
            raise InputError(f"the mask {path.name} has shape {vol.shape} but its CT has {like.shape}: "
                             "give the mask that was made on this CT")
        vol = Volume(array=vol.array, spacing=like.spacing, origin=like.origin, direction=like.direction,
                     modality="SEG", is_hu=False, metadata=dict(like.metadata))
    else:
        vol = Volume.from_sitk(img, modality="SEG", is_hu=False)
        if path.name.lower().endswith(".png"):
            vol = dataclasses.replace(vol, spacing=None)
    arr = np.asarray(vol.array)
    bad = np.setdiff1d(np.unique(arr), (0, 1, 2))
    if bad.size:
        raise InputError(f"the mask {path.name} holds values {bad[:5].tolist()}; a liverseg mask holds 0, 1 (liver), "
                         "2 (tumor)")
    return vol.with_array(arr.astype(np.uint8))


def dicom_patient_id(path: str | os.PathLike[str] | None) -> str | None:
    """PatientID from the first DICOM header found at ``path`` (file, folder or zip); ``None`` if none says it.

    Reads one header (no pixel data). The value is for comparing two scans only: never log it.
    """
    if path is None:
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)

    def from_bytes(fh: Any) -> str | None:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["PatientID", "Modality"])
        except (InvalidDicomError, OSError, ValueError, TypeError, EOFError, AttributeError, KeyError):
            return None
        pid = str(getattr(ds, "PatientID", "") or "").strip()
        return pid or None

    try:
        if p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                for info in zf.infolist()[:200]:
                    if info.is_dir() or info.file_size < 132:
                        continue
                    with zf.open(info) as fh:
                        head = fh.read(132)
                    if head[128:132] != b"DICM":
                        continue
                    with zf.open(info) as fh:
                        import io

                        return from_bytes(io.BytesIO(fh.read()))
            return None
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())[:2000] if p.is_dir() else []
        for f in files:
            try:
                with open(f, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM" or f.suffix.lower() == ".dcm":
                pid = from_bytes(str(f))
                if pid is not None:
                    return pid
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def load_scan(
    path: str | os.PathLike[str],
    *,
    ct: str | os.PathLike[str] | Volume | None = None,
    name: str | None = None,
) -> Scan:
    """Read one side of a comparison.

    Args:
        path: a finished study folder (``mask.nii.gz`` + ``report.json``, as ``liverseg predict``
            or the web app write it; a web study's ``input/`` beside ``output/`` is found as its
            CT), or a mask file (NIfTI/MHA/NRRD, labels 0/1/2).
        ct: the CT the mask was made on (a path liverseg reads, or a Volume); optional, but
            without it the registration uses the liver masks only and the patient is not checked.
        name: how outputs call this scan (default: the folder's or file's name).

    Raises:
        InputError: nothing usable at ``path``, or the mask does not fit its CT.
    """
    from liverseg.io import read_volume

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist; give a study folder (with mask.nii.gz) or a mask file")
    report = None
    if p.is_dir():
        mask_path = p / "mask.nii.gz"
        if not mask_path.is_file():
            raise InputError(f"{p} holds no mask.nii.gz: give a study folder written by `liverseg predict`, or a mask file")
        if (p / "report.json").is_file():
            try:
                report = json.loads((p / "report.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                report = None
        if ct is None and p.name == "output" and (p.parent / "input").is_dir():  # the web app's study layout
            entries = list((p.parent / "input").iterdir())
            ct = entries[0] if len(entries) == 1 else p.parent / "input"
        default_name = p.parent.name if p.name == "output" else p.name
    else:
        mask_path = p
        default_name = p.name.split(".")[0]
    ct_vol: Volume | None
    ct_path: Path | None = None
    if isinstance(ct, Volume):
        ct_vol = ct
    elif ct is not None:
        ct_path = Path(ct)
        ct_vol = read_volume(ct_path)
    else:
        ct_vol = None
    labels = _read_mask(mask_path, like=ct_vol)
    return Scan(labels=labels, ct=ct_vol, name=name or default_name,
                patient_id=dicom_patient_id(ct_path) if ct_path is not None else None,
                report=report, source=str(p))


def _as_scan(x: Scan | str | os.PathLike[str] | tuple[Any, Any], ct: Any, name: str) -> Scan:
    if isinstance(x, Scan):
        return x
    if isinstance(x, tuple):  # (ct Volume, labels Volume)
        ct_vol, lab = x
        return Scan(labels=lab, ct=ct_vol, name=name)
    return load_scan(x, ct=ct)


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class LesionChange:
    """One baseline lesion, one follow-up lesion, or a group of them that are the same disease.

    ``kind``: ``matched`` (one to one), ``split`` (one baseline → several follow-up), ``merged``
    (several → one), ``split_merged`` (several → several), ``new``, ``disappeared``.
    Diameters of a group are the sum of its lesions' longest axial diameters (RECIST's rule for
    fragments); volumes are summed. Percentages are against the baseline (``None`` without one).
    ``baseline_slice`` is a z index of the baseline grid (0-based) where the change is seen in
    the registered space; ``followup_slice`` a z index of the follow-up's own grid.
    """

    id: str
    kind: str
    matched_by: str | None
    baseline_ids: list[int]
    followup_ids: list[int]
    is_target: bool
    volume_before_ml: float | None
    volume_after_ml: float | None
    volume_change_ml: float | None
    volume_change_percent: float | None
    diameter_before_mm: float | None
    diameter_after_mm: float | None
    diameter_change_mm: float | None
    diameter_change_percent: float | None
    overlap_fraction: float | None
    centroid_distance_mm: float | None
    baseline_slice: int | None
    followup_slice: int | None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class Recist:
    """The RECIST 1.1 response and every input of its rules, so a reader can check it."""

    response: str
    response_text: str
    targets: list[dict[str, Any]]
    sum_baseline_mm: float | None
    sum_followup_mm: float | None
    change_mm: float | None
    change_percent: float | None
    nadir_mm: float | None
    new_lesions: list[dict[str, Any]]
    non_target_baseline: int
    non_target_remaining: int
    rules: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


@dataclasses.dataclass
class Comparison:
    """The result of :func:`compare`; ``to_dict()`` is comparison.json."""

    baseline: Scan
    followup: Scan
    baseline_analysis: Analysis
    followup_analysis: Analysis
    registration: Registration
    lesions: list[LesionChange]
    recist: Recist
    patient: dict[str, Any]
    patient_check: str
    warnings: list[str]
    seconds: float
    settings: dict[str, Any]
    #: the follow-up CT / labels / lesion map on the baseline grid (for pictures and viewers)
    registered_ct: Volume | None = dataclasses.field(default=None, repr=False)
    registered_labels: Volume | None = dataclasses.field(default=None, repr=False)
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def response(self) -> str:
        return self.recist.response

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.lesions:
            out[c.kind] = out.get(c.kind, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        def side(scan: Scan, a: Analysis) -> dict[str, Any]:
            return {
                "name": scan.name,
                "shape_zyx": list(a.shape),
                "spacing_mm_zyx": list(a.spacing_mm) if a.spacing_mm else None,
                "has_ct": scan.ct is not None,
                "liver_volume_ml": a.liver_volume_ml,
                "tumor_volume_ml": a.tumor_volume_ml,
                "tumor_burden_percent": a.tumor_burden_percent,
                "tumor_count": a.tumor_count,
                "liver_is_lower_bound": a.liver_is_lower_bound,
                "flags": [dataclasses.asdict(f) for f in a.flags],
                "lesions": [les.to_dict() for les in a.lesions],
            }

        return _jsonable({
            "schema": COMPARISON_SCHEMA,
            "response": self.recist.response,
            "response_text": self.recist.response_text,
            "recist": self.recist.to_dict(),
            "patient": self.patient,
            "patient_check": self.patient_check,
            "counts": self.kinds(),
            "lesions": [c.to_dict() for c in self.lesions],
            "registration": self.registration.to_dict(),
            "baseline": side(self.baseline, self.baseline_analysis),
            "followup": side(self.followup, self.followup_analysis),
            "warnings": self.warnings,
            "settings": self.settings,
            "seconds": round(self.seconds, 2),
            "files": self.files,
            "disclaimer": "Research software, not a medical device: not for diagnostic use. The matching and the "
                          "response are computed automatically and must be checked by a qualified reader.",
        })


# --------------------------------------------------------------------------- lesion maps


def _lesion_map(labels: Volume, analysis: Analysis) -> np.ndarray:
    """int32 map whose value k marks lesion k of ``analysis`` (26-connected tumor components)."""
    tumor = np.asarray(labels.array) == 2
    out = np.zeros(tumor.shape, np.int32)
    if not tumor.any():
        return out
    tbox = bounding_box(tumor)
    sub, n = ndimage.label(tumor[tbox], structure=ndimage.generate_binary_structure(3, 3))
    comp = np.zeros(tumor.shape, np.int32)
    comp[tbox] = sub
    boxes = [tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, tbox)) for box in ndimage.find_objects(sub)]
    sizes = np.bincount(sub.ravel())[1:]
    # analyze's order: by decreasing size, then first slice, then first row
    order = sorted(range(n), key=lambda k: (-int(sizes[k]), boxes[k][0].start, boxes[k][1].start))
    lut = np.zeros(n + 1, np.int32)
    for rank, k in enumerate(order):
        lut[k + 1] = rank + 1
    out[tbox] = lut[sub]
    counts = [les.voxel_count for les in analysis.lesions]
    if counts != [int(sizes[k]) for k in order]:  # never expected: the two numberings must agree
        raise RuntimeError("lesion numbering differs from liverseg.analysis.analyze's; report this")
    return out


def _slice_of_point(vol: Volume, point_lps: Sequence[float]) -> int:
    """The z index (clipped to the grid) of a world point (mm LPS) on ``vol``'s grid."""
    sp = np.asarray(vol.spacing, float)[::-1]
    ijk = np.linalg.solve(vol.direction @ np.diag(sp), np.asarray(point_lps, float) - np.asarray(vol.origin))
    return int(np.clip(round(float(ijk[2])), 0, vol.shape[0] - 1))


# --------------------------------------------------------------------------- matching


def _match(
    base: Analysis,
    fu: Analysis,
    base_map: np.ndarray,
    fu_on_base: np.ndarray,
    reg: Registration,
    baseline_labels: Volume,
    *,
    min_overlap_fraction: float,
    max_distance_mm: float,
) -> list[tuple[list[int], list[int], str | None, float | None]]:
    """Groups ``(baseline ids, follow-up ids, matched_by, overlap fraction)``."""
    nb, nf = len(base.lesions), len(fu.lesions)
    edges: dict[tuple[int, int], float] = {}
    if nb and nf and (base_map > 0).any() and (fu_on_base > 0).any():
        size_b = np.bincount(base_map.ravel(), minlength=nb + 1)
        size_f = np.bincount(fu_on_base.ravel(), minlength=nf + 1)
        box = ndimage.find_objects(((base_map > 0) & (fu_on_base > 0)).astype(np.uint8))
        box = box[0] if box else (slice(0, 0),) * 3
        base_map, fu_on_base = base_map[box], fu_on_base[box]
        both = (base_map > 0) & (fu_on_base > 0)
        pair = base_map[both].astype(np.int64) * (nf + 1) + fu_on_base[both]
        ids, counts = np.unique(pair, return_counts=True)
        for pid, cnt in zip(ids.tolist(), counts.tolist()):
            b, f = divmod(int(pid), nf + 1)
            smaller = max(1, min(int(size_b[b]), int(size_f[f])))
            if cnt / smaller >= min_overlap_fraction:
                edges[(b, f)] = cnt / smaller
    # union-find over the overlap links
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for b, f in edges:
        parent[find(("b", b))] = find(("f", f))
    groups: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
    for b in range(1, nb + 1):
        if ("b", b) in parent:
            groups.setdefault(find(("b", b)), ([], []))[0].append(b)
    for f in range(1, nf + 1):
        if ("f", f) in parent:
            groups.setdefault(find(("f", f)), ([], []))[1].append(f)
    out: list[tuple[list[int], list[int], str | None, float | None]] = []
    for bs, fs in groups.values():
        frac = max(edges[(b, f)] for b in bs for f in fs if (b, f) in edges)
        out.append((sorted(bs), sorted(fs), "overlap", frac))
    # centroid distance for the rest (closest pairs first)
    free_b = [b for b in range(1, nb + 1) if ("b", b) not in parent]
    free_f = [f for f in range(1, nf + 1) if ("f", f) not in parent]
    cands: list[tuple[float, int, int]] = []
    for b in free_b:
        cb = np.asarray(base.lesions[b - 1].centroid_lps_mm, float)
        for f in free_f:
            cf = np.asarray(reg.followup_point_in_baseline(fu.lesions[f - 1].centroid_lps_mm), float)  # type: ignore[arg-type]
            dist = float(np.linalg.norm(cb - cf))
            if dist <= max_distance_mm:
                cands.append((dist, b, f))
    used_b: set[int] = set()
    used_f: set[int] = set()
    for dist, b, f in sorted(cands):
        if b in used_b or f in used_f:
            continue
        used_b.add(b)
        used_f.add(f)
        out.append(([b], [f], "distance", 0.0))
    out += [([b], [], None, None) for b in free_b if b not in used_b]
    out += [([], [f], None, None) for f in free_f if f not in used_f]
    return out


def _kind(bs: list[int], fs: list[int]) -> str:
    if not fs:
        return "disappeared"
    if not bs:
        return "new"
    if len(bs) == 1 and len(fs) == 1:
        return "matched"
    if len(bs) == 1:
        return "split"
    if len(fs) == 1:
        return "merged"
    return "split_merged"


def _sum(values: list[float | None]) -> float | None:
    if any(v is None for v in values):
        return None
    return float(sum(values))  # type: ignore[arg-type]


def _pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before <= 0:
        return None
    return 100.0 * (after - before) / before


def _changes(
    groups: list[tuple[list[int], list[int], str | None, float | None]],
    base: Analysis,
    fu: Analysis,
    reg: Registration,
    baseline_labels: Volume,
) -> list[LesionChange]:
    def les_b(i: int) -> Lesion:
        return base.lesions[i - 1]

    def les_f(i: int) -> Lesion:
        return fu.lesions[i - 1]

    rows = []
    for bs, fs, how, frac in groups:
        vb = _sum([les_b(i).volume_ml for i in bs]) if bs else None
        va = _sum([les_f(i).volume_ml for i in fs]) if fs else (0.0 if bs else None)
        db = _sum([les_b(i).longest_axial_diameter_mm for i in bs]) if bs else None
        da = _sum([les_f(i).longest_axial_diameter_mm for i in fs]) if fs else (0.0 if bs else None)
        if not bs:
            vb_for_change, db_for_change = 0.0, 0.0
        else:
            vb_for_change, db_for_change = vb, db
        dist = None
        if bs and fs:
            wb = np.array([les_b(i).voxel_count for i in bs], float)
            cb = np.average([les_b(i).centroid_lps_mm for i in bs], axis=0, weights=wb)
            wf = np.array([les_f(i).voxel_count for i in fs], float)
            cf = np.average([reg.followup_point_in_baseline(les_f(i).centroid_lps_mm) for i in fs], axis=0, weights=wf)  # type: ignore[arg-type]
            dist = float(np.linalg.norm(cb - cf))
        if bs:
            big = max(bs, key=lambda i: les_b(i).voxel_count)
            zb: int | None = les_b(big).diameter_slice
        else:
            big_f = max(fs, key=lambda i: les_f(i).voxel_count)
            zb = _slice_of_point(baseline_labels, reg.followup_point_in_baseline(les_f(big_f).centroid_lps_mm))  # type: ignore[arg-type]
        zf = les_f(max(fs, key=lambda i: les_f(i).voxel_count)).diameter_slice if fs else None
        rows.append(dict(
            kind=_kind(bs, fs), matched_by=how, baseline_ids=bs, followup_ids=fs,
            is_target=any(les_b(i).is_target_candidate for i in bs),
            volume_before_ml=vb, volume_after_ml=va,
            volume_change_ml=None if va is None or vb_for_change is None else va - vb_for_change,
            volume_change_percent=_pct(vb, va),
            diameter_before_mm=db, diameter_after_mm=da,
            diameter_change_mm=None if da is None or db_for_change is None else da - db_for_change,
            diameter_change_percent=_pct(db, da),
            overlap_fraction=None if frac is None else round(frac, 4),
            centroid_distance_mm=None if dist is None else round(dist, 2),
            baseline_slice=zb, followup_slice=zf,
        ))
    order = {"matched": 0, "split": 0, "merged": 0, "split_merged": 0, "disappeared": 1, "new": 2}
    rows.sort(key=lambda r: (not r["is_target"], order[r["kind"]], -(r["volume_before_ml"] or 0),
                             -(r["volume_after_ml"] or 0), r["baseline_ids"] or [10**9], r["followup_ids"]))

    def rnd(v: float | None, d: int) -> float | None:
        return None if v is None else round(float(v), d)

    out = []
    for k, r in enumerate(rows):
        for key, d in (("volume_before_ml", 3), ("volume_after_ml", 3), ("volume_change_ml", 3),
                       ("volume_change_percent", 1), ("diameter_before_mm", 2), ("diameter_after_mm", 2),
                       ("diameter_change_mm", 2), ("diameter_change_percent", 1)):
            r[key] = rnd(r[key], d)
        out.append(LesionChange(id=f"C{k + 1}", **r))
    return out


# --------------------------------------------------------------------------- RECIST


RESPONSE_TEXT = {
    "CR": "complete response: every lesion has disappeared and none is new",
    "PR": "partial response: the sum of target diameters fell by at least 30 %",
    "PD": "progressive disease",
    "SD": "stable disease: neither a 30 % decrease nor a 20 % (and 5 mm) increase of the target sum, no new lesion",
    "non-CR/non-PD": "non-CR/non-PD: no measurable target lesion at baseline; lesions remain, none is new",
    "NED": "no evidence of disease on either scan",
}


def recist_response(base: Analysis, fu: Analysis, changes: list[LesionChange]) -> Recist:
    """RECIST 1.1 from the baseline's targets and the lesion changes (see the module docstring)."""
    targets = [les for les in base.lesions if les.is_target_candidate]
    group_of = {b: c for c in changes for b in c.baseline_ids}
    fu_by_id = {les.id: les for les in fu.lesions}
    counted_groups: set[str] = set()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for t in targets:
        c = group_of.get(t.id)
        if c is None or not c.followup_ids:
            after, status = 0.0, "disappeared"
        elif c.id in counted_groups:
            after, status = 0.0, f"merged into the lesion counted for an earlier target ({c.id})"
        else:
            counted_groups.add(c.id)
            after = _sum([fu_by_id[f].longest_axial_diameter_mm for f in c.followup_ids])
            status = {"matched": "measured", "split": "split: fragments summed",
                      "merged": "merged lesion measured", "split_merged": "split and merged: fragments summed"}[c.kind]
        rows.append({"baseline_id": t.id, "change_id": c.id if c else None, "diameter_before_mm": t.longest_axial_diameter_mm,
                     "followup_ids": list(c.followup_ids) if c else [], "diameter_after_mm": after, "status": status})
    new = [c for c in changes if c.kind == "new"]
    new_rows = [{"change_id": c.id, "followup_ids": c.followup_ids, "diameter_mm": c.diameter_after_mm,
                 "volume_ml": c.volume_after_ml} for c in new]
    target_ids = {t.id for t in targets}
    non_target = [les for les in base.lesions if les.id not in target_ids]
    remaining = sum(1 for les in non_target if group_of.get(les.id) is not None and group_of[les.id].followup_ids)
    sum_b = _sum([t.longest_axial_diameter_mm for t in targets]) if targets else None
    sum_f = _sum([r["diameter_after_mm"] for r in rows]) if targets else None
    change_mm = None if sum_b is None or sum_f is None else sum_f - sum_b
    change_pct = _pct(sum_b, sum_f)
    all_gone = fu.tumor_count == 0
    rules: list[dict[str, Any]] = []

    def rule(name: str, test: str, value: str, holds: bool | None) -> None:
        rules.append({"rule": name, "test": test, "value": value, "holds": holds})

    rule("PD (new lesion)", "any lesion on the follow-up that matches no baseline lesion",
         f"{len(new)} new lesion(s)" + (": " + ", ".join(f"{r['change_id']} {r['diameter_mm']:.1f} mm" for r in new_rows
                                                          if r["diameter_mm"] is not None) if new else ""),
         bool(new))
    if targets and sum_b is not None and sum_f is not None:
        pd_sum = change_pct is not None and change_pct >= PD_INCREASE_PERCENT - 1e-9 and change_mm >= PD_INCREASE_MM - 1e-9  # type: ignore[operator]
        rule("PD (target sum)", f"sum grows by ≥ {PD_INCREASE_PERCENT:g} % and ≥ {PD_INCREASE_MM:g} mm from the nadir",
             f"{sum_b:.1f} → {sum_f:.1f} mm ({change_mm:+.1f} mm, {change_pct:+.1f} %)" if change_pct is not None
             else f"{sum_b:.1f} → {sum_f:.1f} mm", pd_sum)
        cr = all_gone and not new
        rule("CR", "every target and non-target lesion has disappeared, none is new",
             f"{fu.tumor_count} lesion(s) on the follow-up", cr)
        pr_sum = change_pct is not None and change_pct <= -PR_DECREASE_PERCENT + 1e-9
        rule("PR", f"sum falls by ≥ {PR_DECREASE_PERCENT:g} % from baseline (or targets gone, non-targets remain)",
             f"{change_pct:+.1f} %" if change_pct is not None else "n/a", pr_sum or (sum_f == 0 and not cr))
        if new or pd_sum:
            response = "PD"
        elif cr:
            response = "CR"
        elif pr_sum or sum_f == 0:
            response = "PR"
        else:
            response = "SD"
    else:
        if not base.lesions and not fu.lesions:
            response = "NED"
        elif new:
            response = "PD"
        elif all_gone:
            response = "CR"
        else:
            response = "non-CR/non-PD"
        if base.lesions:
            notes.append("No baseline lesion is measurable (longest axial diameter ≥ 10 mm): there are no target "
                         "lesions, so only new lesions and complete disappearance decide the response.")
        rule("CR", "every baseline lesion has disappeared, none is new", f"{fu.tumor_count} lesion(s) on the follow-up",
             bool(base.lesions) and all_gone and not new)
    notes.append("The rules are applied in order: PD (either rule) before CR, CR before PR, else SD.")
    notes.append("Targets: the baseline's RECIST target candidates (at most two measurable liver lesions, the largest "
                 "by longest axial diameter). The nadir is the baseline sum (only two scans are compared).")
    notes.append("Non-target progression ('unequivocal') is a reader's judgement and is not called automatically; "
                 "RECIST's 5 mm default for a target too small to measure is not applied (the measured value is used).")
    text = RESPONSE_TEXT[response]
    if response == "PD":
        why = []
        if new:
            why.append(f"{len(new)} new lesion(s)")
        if targets and change_pct is not None and change_mm is not None and change_pct >= PD_INCREASE_PERCENT - 1e-9 \
                and change_mm >= PD_INCREASE_MM - 1e-9:
            why.append(f"target sum {change_pct:+.1f} % ({change_mm:+.1f} mm)")
        text = "progressive disease: " + " and ".join(why)
    return Recist(
        response=response, response_text=text, targets=rows,
        sum_baseline_mm=None if sum_b is None else round(sum_b, 2),
        sum_followup_mm=None if sum_f is None else round(sum_f, 2),
        change_mm=None if change_mm is None else round(change_mm, 2),
        change_percent=None if change_pct is None else round(change_pct, 1),
        nadir_mm=None if sum_b is None else round(sum_b, 2),
        new_lesions=new_rows, non_target_baseline=len(non_target), non_target_remaining=remaining,
        rules=rules, notes=notes,
    )


# --------------------------------------------------------------------------- checks


def _check_scan(scan: Scan, side: str) -> None:
    lab = scan.labels
    if lab.spacing is None:
        raise ComparisonRefused("spacing_unknown", f"the {side} scan ({scan.name}) does not state its voxel size (mm): "
                                "sizes and the registration need it. Use the DICOM or NIfTI scan, not an exported picture")
    if lab.is_2d or lab.shape[0] < 2:
        raise ComparisonRefused("single_slice", f"the {side} scan ({scan.name}) is a single slice: a comparison needs "
                                "two 3D scans")
    if not (np.asarray(lab.array) >= 1).any():
        raise ComparisonRefused("different_body_region", f"the {side} mask ({scan.name}) holds no liver: the scan may "
                                "not cover the liver (another body region) or the segmentation failed")


def check_comparable(baseline: Scan, followup: Scan) -> str:
    """What can be said before registering: raises :class:`ComparisonRefused`, or returns the patient check."""
    if baseline.patient_id is not None and followup.patient_id is not None:
        if baseline.patient_id != followup.patient_id:
            raise ComparisonRefused("different_patient", "the two scans belong to different patients (their DICOM "
                                    "PatientID differs): compare two scans of one patient")
        check = "same PatientID in both DICOM headers"
    else:
        check = "not checked: " + ("neither scan" if baseline.patient_id is None and followup.patient_id is None
                                   else "one scan only") + " has a DICOM PatientID"
    for scan, side in ((baseline, "baseline"), (followup, "follow-up")):
        _check_scan(scan, side)
    return check


def _target_flags_from_report(scan: Scan, analysis: Analysis) -> Analysis:
    """Keep the study's own RECIST targets (its report may know the model's confidences) when its lesions agree."""
    if not scan.report:
        return analysis
    doc = scan.report.get("analysis") if isinstance(scan.report.get("analysis"), dict) else scan.report
    rep = doc.get("lesions") or []
    if [r.get("voxel_count") for r in rep] != [les.voxel_count for les in analysis.lesions]:
        return analysis
    flags = [bool(r.get("is_target_candidate")) for r in rep]
    if flags == [les.is_target_candidate for les in analysis.lesions]:
        return analysis
    lesions = [dataclasses.replace(les, is_target_candidate=f, confidence=r.get("confidence"),
                                   confidence_level=r.get("confidence_level"))
               for les, f, r in zip(analysis.lesions, flags, rep)]
    return dataclasses.replace(analysis, lesions=lesions)


# --------------------------------------------------------------------------- main


def compare(
    baseline: Scan | str | os.PathLike[str] | tuple[Volume | None, Volume],
    followup: Scan | str | os.PathLike[str] | tuple[Volume | None, Volume],
    *,
    baseline_ct: str | os.PathLike[str] | Volume | None = None,
    followup_ct: str | os.PathLike[str] | Volume | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    max_distance_mm: float = 15.0,
    min_overlap_fraction: float = 0.1,
    min_liver_dice: float = 0.5,
    min_fov_coverage: float = 0.5,
    grid_mm: float = DEFAULT_GRID_MM,
    overwrite: bool = False,
) -> Comparison:
    """Compare a follow-up scan with a baseline scan of the same patient, lesion by lesion.

    Args:
        baseline, followup: a study folder or mask path (see :func:`load_scan`), a :class:`Scan`,
            or a ``(ct, labels)`` pair of Volumes (``ct`` may be ``None``).
        baseline_ct, followup_ct: the CTs, when ``baseline``/``followup`` are paths whose CT is
            not found on its own (a ``liverseg predict`` folder does not keep the CT).
        out_dir: also write comparison.json, lesion_changes.csv, lesion_pairs.png,
            comparison.html and comparison.pdf there (all or nothing).
        max_distance_mm: largest centroid distance (mm, after registration) that still matches
            two lesions that do not overlap.
        min_overlap_fraction: overlap (fraction of the smaller lesion's voxels) that links two lesions.
        min_liver_dice: below this liver Dice after registration the scans are refused (``no_overlap``).
        min_fov_coverage: the follow-up's field of view must hold at least this fraction of the
            baseline liver after registration (else ``different_body_region``).
        grid_mm: registration working grid (mm).
        overwrite: replace an existing ``out_dir``.

    Returns:
        a :class:`Comparison` (``response``, ``lesions``, ``recist``, ``registration`` ...).

    Raises:
        ComparisonRefused: the two scans cannot be compared (its ``code`` says why).
        InputError: an input cannot be read.

    >>> from liverseg.testing import phantom
    >>> ct, lab = phantom(shape=(32, 80, 80), spacing=(3.0, 2.0, 2.0), lesions=((8.0, (48.0, 70.0, 45.0)),))
    >>> compare((ct, lab), (ct, lab)).response
    'SD'
    """
    t0 = time.perf_counter()
    for name, value in (("max_distance_mm", max_distance_mm), ("grid_mm", grid_mm)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of mm; got {value!r}")
    if not 0 < min_overlap_fraction <= 1:
        raise ValueError(f"min_overlap_fraction must be in (0, 1]; got {min_overlap_fraction!r}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; choose another output folder or pass overwrite")
    b = _as_scan(baseline, baseline_ct, "baseline")
    f = _as_scan(followup, followup_ct, "follow-up")
    patient_check = check_comparable(b, f)
    warnings: list[str] = []

    base = _target_flags_from_report(b, analyze(b.labels, b.ct))
    fu = _target_flags_from_report(f, analyze(f.labels, f.ct))
    for a, side in ((base, "baseline"), (fu, "follow-up")):
        if a.liver_is_lower_bound:
            warnings.append(f"the {side} liver reaches the edge of its scan: its liver and tumor volumes are lower bounds")

    reg = register(b.ct, b.labels, f.ct, f.labels, grid_mm=grid_mm)
    warnings += reg.warnings
    if reg.followup_fov_covers_baseline_liver < min_fov_coverage:
        raise ComparisonRefused(
            "different_body_region",
            f"after registration the follow-up covers only {100 * reg.followup_fov_covers_baseline_liver:.0f} % of the "
            f"baseline liver (at least {100 * min_fov_coverage:.0f} % needed): the scans show different body regions")
    if reg.liver_dice_after < min_liver_dice:
        raise ComparisonRefused(
            "no_overlap",
            f"the livers do not overlap after registration (Dice {reg.liver_dice_after:.2f}, at least {min_liver_dice:g} "
            "needed): these may be different patients or body regions, or a segmentation failed; check both masks")

    base_map = _lesion_map(b.labels, base)
    fu_map = _lesion_map(f.labels, fu)
    # one nearest-neighbour resampling carries both the labels and the lesion numbers: 0, 1, lesion k -> k + 2
    code = np.where(fu_map > 0, fu_map + 2, np.asarray(f.labels.array)).astype(np.int32)
    moved = np.asarray(reg.resample_onto_baseline(f.labels.with_array(code), b.labels, labels=True).array)
    fu_on_base = np.where(moved >= 3, moved - 2, 0).astype(np.int32)
    registered_labels = b.labels.with_array(np.where(moved >= 3, 2, moved).astype(np.uint8),
                                            metadata={"registered_from": "follow-up"})
    groups = _match(base, fu, base_map, fu_on_base, reg, b.labels,
                    min_overlap_fraction=min_overlap_fraction, max_distance_mm=max_distance_mm)
    changes = _changes(groups, base, fu, reg, b.labels)
    recist = recist_response(base, fu, changes)

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round(y - x, 3)

    patient = {
        "liver_volume_before_ml": base.liver_volume_ml, "liver_volume_after_ml": fu.liver_volume_ml,
        "liver_volume_change_ml": delta(base.liver_volume_ml, fu.liver_volume_ml),
        "liver_volume_change_percent": _pct(base.liver_volume_ml, fu.liver_volume_ml),
        "tumor_volume_before_ml": base.tumor_volume_ml, "tumor_volume_after_ml": fu.tumor_volume_ml,
        "tumor_volume_change_ml": delta(base.tumor_volume_ml, fu.tumor_volume_ml),
        "tumor_volume_change_percent": _pct(base.tumor_volume_ml, fu.tumor_volume_ml),
        "tumor_burden_before_percent": base.tumor_burden_percent, "tumor_burden_after_percent": fu.tumor_burden_percent,
        "tumor_burden_change_points": delta(base.tumor_burden_percent, fu.tumor_burden_percent),
        "lesions_before": base.tumor_count, "lesions_after": fu.tumor_count,
        "volumes_are_lower_bounds": base.liver_is_lower_bound or fu.liver_is_lower_bound,
    }
    if patient["liver_volume_change_percent"] is not None:
        patient["liver_volume_change_percent"] = round(patient["liver_volume_change_percent"], 2)
    if patient["tumor_volume_change_percent"] is not None:
        patient["tumor_volume_change_percent"] = round(patient["tumor_volume_change_percent"], 1)

    registered_ct = reg.resample_onto_baseline(f.ct, b.labels, labels=False) if f.ct is not None else None
    result = Comparison(
        baseline=b, followup=f, baseline_analysis=base, followup_analysis=fu, registration=reg, lesions=changes,
        recist=recist, patient=patient, patient_check=patient_check, warnings=warnings,
        seconds=time.perf_counter() - t0,
        settings={"max_distance_mm": max_distance_mm, "min_overlap_fraction": min_overlap_fraction,
                  "min_liver_dice": min_liver_dice, "min_fov_coverage": min_fov_coverage, "grid_mm": grid_mm},
        registered_ct=registered_ct, registered_labels=registered_labels,
    )
    log.info("comparison: %s, %s in %.1f s", recist.response, result.kinds(), result.seconds)
    if out is not None:
        write_outputs(result, out)
    return result


def write_outputs(result: Comparison, out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write the comparison's files into ``out_dir`` through a temporary folder (all or nothing)."""
    from liverseg.reporting.comparison import write_comparison_files

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        files = write_comparison_files(tmp, result)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out, 0o777 & ~umask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.files = files
    return files


def format_comparison(result: Comparison) -> str:
    """A plain-text summary for the terminal: response, rules' inputs, lesion changes, files."""
    from liverseg.reporting.comparison import change_rows, summary_rows

    lines = [f"RECIST 1.1 response: {result.recist.response} ({result.recist.response_text})"]
    lines += [f"  {label}: {value}" for label, value in summary_rows(result)[1:]]
    r = result.recist
    for t in r.targets:
        after = "—" if t["diameter_after_mm"] is None else f"{t['diameter_after_mm']:.1f}"
        lines.append(f"  target L{t['baseline_id']}: {t['diameter_before_mm']:.1f} -> {after} mm ({t['status']})")
    for rule in r.rules:
        lines.append(f"  rule {rule['rule']}: {rule['value']} -> {'yes' if rule['holds'] else 'no'}")
    head, rows = change_rows(result)
    if rows:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for w in result.warnings:
        lines.append(f"warning: {w}")
    if result.files:
        lines.append("files: " + ", ".join(sorted(result.files.values())))
    return "\n".join(lines)
