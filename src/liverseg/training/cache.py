"""The preprocessed cache: cases resampled to the plan's spacing, stored as memory-mapped ``.npy``.

``prepare_cache`` reads each case once (DICOM decoding and resampling are the slow part),
writes ``cache_dir/<case_id>/{image.npy, label.npy, coords.npz, meta.json}`` and reuses
them on later runs while the options hash (plan spacing, ROI, margin, tumor merging, the
source files' size and modification time) is unchanged. Images stay in HU (int16):
clipping and z-scoring happen per patch, so one cache serves plans that differ only in
their intensity numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from liverseg.errors import TrainingError
from liverseg.preprocessing import Plan, resample_array
from liverseg.training.datasets import Case

__all__ = ["CachedCase", "prepare_cache", "load_cached", "CACHE_VERSION"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Foreground coordinates kept per class (liver, tumor) for oversampling.
MAX_COORDS = 20_000

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclasses.dataclass
class CachedCase:
    """One preprocessed case.

    Attributes:
        case_id: the case's id.
        image: (z, y, x) int16 HU at ``spacing_mm`` (a read-only memory map when loaded).
        label: (z, y, x) uint8, 0 / 1 liver / 2 tumor (0 / 1 when tumors were merged).
        spacing_mm: voxel size (z, y, x) in mm.
        tumor_annotated: ``False`` for liver-only annotations (tumor status unknown).
        liver_bbox: ((z0, z1), (y0, y1), (x0, x1)) voxel box (end exclusive) of label > 0, or None.
        tumor_bbox: the same for label == 2, or None.
        liver_coords: (N, 3) int32 voxel indices of label > 0 (a random subset).
        tumor_coords: (M, 3) int32 voxel indices of label == 2, balanced over lesions
            (each connected lesion contributes about equally, so small ones get sampled).
        source: the dataset layout the case came from.
        crop_offset: (z, y, x) index of ``image[0, 0, 0]`` in the whole resampled scan
            (non-zero with ``roi="liver"``).
        original_spacing_mm: the spacing the case was read with (after overrides).
        merged_tumor: labels were merged to 0 / 1 (``merge_tumor=True``).
        cache_path: the case's cache folder; memory-mapped arrays pickle as this path (cheap
            to send to spawned DataLoader workers / DDP processes) and reopen on unpickling.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]
    tumor_annotated: bool
    liver_bbox: BBox | None
    tumor_bbox: BBox | None
    liver_coords: np.ndarray
    tumor_coords: np.ndarray
    source: str = ""
    crop_offset: tuple[int, int, int] = (0, 0, 0)
    original_spacing_mm: tuple[float, float, float] | None = None
    merged_tumor: bool = False
    cache_path: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.cache_path is not None and isinstance(self.image, np.memmap) and isinstance(self.label, np.memmap):
            state["image"] = state["label"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.image is None and self.cache_path is not None:
            self.image = np.load(Path(self.cache_path) / "image.npy", mmap_mode="r")
            self.label = np.load(Path(self.cache_path) / "label.npy", mmap_mode="r")

    @property
    def has_tumor(self) -> bool:
        """True when the case has (real) tumor voxels."""
        return len(self.tumor_coords) > 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> BBox | None:
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def _sample_coords(mask: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if idx.size > n:
        idx = np.sort(rng.choice(idx, size=n, replace=False))
    return np.stack(np.unravel_index(idx, mask.shape), axis=1).astype(np.int32) if idx.size else np.zeros((0, 3), np.int32)


def _tumor_coords(tumor: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Tumor voxel indices, about the same number from each connected lesion."""
    comps, k = ndimage.label(tumor, structure=np.ones((3, 3, 3)))
    if k == 0:
        return np.zeros((0, 3), np.int32)
    per = max(1, n // k)
    parts = []
    for sl, i in zip(ndimage.find_objects(comps), range(1, k + 1)):
        local = np.argwhere(comps[sl] == i)
        if len(local) > per:
            local = local[rng.choice(len(local), size=per, replace=False)]
        parts.append(local + np.asarray([s.start for s in sl]))
    return np.concatenate(parts).astype(np.int32)


def _file_stamp(path: Path | None) -> Any:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return [str(p.resolve()), len(files), sum(f.stat().st_size for f in files), max((f.stat().st_mtime_ns for f in files), default=0)]
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def _options_hash(case: Case, plan: Plan, roi: str | None, roi_margin_mm: float, merge_tumor: bool) -> str:
    key = {
        "version": CACHE_VERSION,
        "spacing_mm": plan.spacing_mm,
        "roi": roi,
        "roi_margin_mm": float(roi_margin_mm) if roi else None,
        "merge_tumor": bool(merge_tumor),
        "image": _file_stamp(case.image_path),
        "label": _file_stamp(case.label_path),
        "spacing_override_mm": case.spacing_override_mm,
        "axes_override": getattr(case, "axes_override", None),
        "source": case.source,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_cached(case_dir: str | Path, *, mmap: bool = True) -> CachedCase:
    """A :class:`CachedCase` from its cache folder (arrays memory-mapped read-only)."""
    d = Path(case_dir)
    meta = json.loads((d / "meta.json").read_text())
    mode = "r" if mmap else None
    coords = np.load(d / "coords.npz")

    def _bb(v: Any) -> BBox | None:
        return None if v is None else tuple(tuple(int(x) for x in ax) for ax in v)  # type: ignore[return-value]

    return CachedCase(
        case_id=meta["case_id"],
        image=np.load(d / "image.npy", mmap_mode=mode),
        label=np.load(d / "label.npy", mmap_mode=mode),
        spacing_mm=tuple(meta["spacing_mm"]),  # type: ignore[arg-type]
        tumor_annotated=bool(meta["tumor_annotated"]),
        liver_bbox=_bb(meta["liver_bbox"]),
        tumor_bbox=_bb(meta["tumor_bbox"]),
        liver_coords=coords["liver"],
        tumor_coords=coords["tumor"],
        source=meta.get("source", ""),
        crop_offset=tuple(meta.get("crop_offset", (0, 0, 0))),  # type: ignore[arg-type]
        original_spacing_mm=tuple(meta["original_spacing_mm"]) if meta.get("original_spacing_mm") else None,
        merged_tumor=bool(meta.get("merge_tumor", False)),
        cache_path=d if mmap else None,
    )


def _build(case: Case, plan: Plan, roi: str | None, roi_margin_mm: float, merge_tumor: bool, out: Path, digest: str) -> None:
    ct, lab = case.load()
    if ct.spacing is None:
        raise TrainingError(f"case {case.case_id} has no voxel spacing; give one with a spacing override")
    image, label = ct.array, lab.array
    spacing = tuple(float(s) for s in ct.spacing)
    if plan.spacing_mm is not None and not np.allclose(spacing, plan.spacing_mm, rtol=1e-3):
        image = resample_array(image, spacing, plan.spacing_mm, order=1)
        label = resample_array(label, spacing, plan.spacing_mm, order=0)
        spacing = plan.spacing_mm
    offset = (0, 0, 0)
    if roi == "liver":
        box = _bbox(label > 0)
        if box is None:
            raise TrainingError(f"case {case.case_id} has no liver voxels; it cannot be cropped to the liver")
        margin = [int(np.ceil(roi_margin_mm / s)) for s in spacing]
        sl = tuple(slice(max(0, lo - m), min(n, hi + m)) for (lo, hi), m, n in zip(box, margin, label.shape))
        offset = tuple(s.start for s in sl)  # type: ignore[assignment]
        image, label = image[sl], label[sl]
    if merge_tumor:
        label = (label > 0).astype(np.uint8)
    image = np.ascontiguousarray(image, dtype=np.int16)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    rng = np.random.default_rng(int(digest[:8], 16))
    liver = label > 0
    tumor = label == 2
    tmp = Path(tempfile.mkdtemp(prefix=f".{case.case_id}.", dir=out.parent))
    try:
        np.save(tmp / "image.npy", image)
        np.save(tmp / "label.npy", label)
        np.savez(tmp / "coords.npz", liver=_sample_coords(liver, rng, MAX_COORDS), tumor=_tumor_coords(tumor, rng, MAX_COORDS))
        meta = {
            "case_id": case.case_id,
            "hash": digest,
            "version": CACHE_VERSION,
            "spacing_mm": list(spacing),
            "original_spacing_mm": list(ct.spacing),
            "tumor_annotated": bool(case.tumor_annotated),
            "source": case.source,
            "image_path": str(case.image_path),
            "label_path": str(case.label_path),
            "shape": list(image.shape),
            "crop_offset": list(offset),
            "original_shape": list(ct.shape),
            "roi": roi,
            "merge_tumor": merge_tumor,
            "liver_bbox": _bbox(liver),
            "tumor_bbox": _bbox(tumor),
            "n_liver_voxels": int(liver.sum()),
            "n_tumor_voxels": int(tumor.sum()),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_cache(
    cases: Sequence[Case],
    *,
    plan: Plan,
    cache_dir: str | Path,
    roi: str | None = None,
    roi_margin_mm: float = 20.0,
    merge_tumor: bool = False,
    progress: bool = True,
) -> list[CachedCase]:
    """Resample every case to ``plan.spacing_mm`` and store it in ``cache_dir`` (reused when unchanged).

    Args:
        cases: from :func:`~liverseg.training.find_cases`.
        plan: its ``spacing_mm`` is the target grid (``None``, e.g. for 2D plans: keep each
            case's own grid).
        cache_dir: folder for ``<case_id>/`` sub-folders; created if missing.
        roi: ``"liver"`` crops to the liver's bounding box + ``roi_margin_mm`` (the fine stage
            of a coarse-to-fine cascade); ``None`` keeps the whole scan.
        roi_margin_mm: margin around the liver box in mm.
        merge_tumor: labels become 0 / 1 (liver including tumor), e.g. for a coarse liver localiser.
        progress: show a progress bar.

    Returns:
        One :class:`CachedCase` per case, arrays memory-mapped.

    >>> cached = prepare_cache(cases, plan=plan, cache_dir="runs/cache")  # doctest: +SKIP
    """
    if roi not in (None, "liver"):
        raise ValueError(f"roi must be None or 'liver'; got {roi!r}")
    if not roi_margin_mm >= 0:
        raise ValueError(f"roi_margin_mm must be >= 0 mm; got {roi_margin_mm}")
    if not cases:
        raise TrainingError("no cases to cache")
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for case in tqdm(cases, desc="preprocess", unit="case", disable=not progress):
        d = root / case.case_id
        digest = _options_hash(case, plan, roi, roi_margin_mm, merge_tumor)
        meta_path = d / "meta.json"
        fresh = False
        if meta_path.is_file():
            try:
                fresh = json.loads(meta_path.read_text()).get("hash") == digest
            except (OSError, json.JSONDecodeError):
                fresh = False
        if fresh:
            log.debug("cache hit: %s", case.case_id)
        else:
            log.info("preprocessing %s -> %s", case.case_id, d)
            _build(case, plan, roi, roi_margin_mm, merge_tumor, d, digest)
        out.append(load_cached(d))
    return out
