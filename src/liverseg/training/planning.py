"""Experiment planning, like nnU-Net: a dataset fingerprint, then a :class:`Plan` from it.

``fingerprint(cases)`` reads every case once and summarises spacing, shape and the
intensities of the foreground (liver including tumor). ``make_plan(fp)`` turns that into
the target spacing, the HU clipping window (0.5/99.5 foreground percentiles), the
z-score statistics and a patch/batch size that fits a memory budget.

>>> fp = fingerprint(cases)                       # doctest: +SKIP
>>> plan = make_plan(fp, memory_budget_mb=4000)   # doctest: +SKIP
>>> save_plan(plan, "runs/x/plan.json")           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from liverseg.errors import TrainingError
from liverseg.preprocessing import Plan
from liverseg.training.datasets import Case

__all__ = ["fingerprint", "make_plan", "save_plan", "load_plan", "BYTES_PER_VOXEL", "DEFAULT_DIVISOR_3D", "DEFAULT_DIVISOR_2D"]

log = logging.getLogger(__name__)

#: Training memory per input voxel and batch item (activations + gradients, AMP), in bytes.
#: nnU-Net's 3D full-resolution U-Net needs roughly 8 GB for 2 x 128^3 patches (~2 kB/voxel);
#: nnFormer at its default width is in the same range.
BYTES_PER_VOXEL = 2000.0
#: Patch sides must be multiples of these (the network's total down-sampling), (z, y, x).
DEFAULT_DIVISOR_3D = (16, 32, 32)
DEFAULT_DIVISOR_2D = (32, 32)
#: Foreground intensity samples taken per case (like nnU-Net's 10,000).
SAMPLES_PER_CASE = 10_000


def fingerprint(cases: Sequence[Case], *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Summarise a training set: spacings, shapes and foreground (liver + tumor) HU statistics.

    Args:
        cases: the training cases (each is read once).
        seed: seed for the foreground voxel subsample.
        progress: show a progress bar.

    Returns:
        A JSON-able dict: ``n_cases``, ``case_ids``, ``spacings_mm`` and ``shapes`` per case,
        ``median_spacing_mm``, ``median_shape``, ``median_size_mm`` (z, y, x), ``foreground_hu``
        (``p00_5``, ``p99_5``, ``mean``, ``std``, ``median`` over the pooled samples and
        ``mean_clipped``/``std_clipped`` after clipping to the percentiles),
        ``liver_bbox_size_mm`` (median liver extent), ``n_tumor_annotated``, ``n_with_tumor``.

    Raises:
        TrainingError: no case, or a case without liver voxels.
    """
    if not cases:
        raise TrainingError("fingerprint needs at least one case")
    rng = np.random.default_rng(seed)
    spacings, shapes, samples, extents = [], [], [], []
    n_tumor = 0
    for case in tqdm(cases, desc="fingerprint", unit="case", disable=not progress):
        ct, lab = case.load()
        if ct.spacing is None:
            raise TrainingError(f"case {case.case_id} has no voxel spacing; give one with a spacing override")
        fg = lab.array > 0
        idx = np.flatnonzero(fg)
        if idx.size == 0:
            raise TrainingError(f"case {case.case_id} has no liver voxels; check its label mask")
        pick = rng.choice(idx, size=min(SAMPLES_PER_CASE, idx.size), replace=False)
        samples.append(ct.array.ravel()[pick].astype(np.float64))
        spacings.append(tuple(float(s) for s in ct.spacing))
        shapes.append(tuple(int(s) for s in ct.shape))
        nz = np.argwhere(fg)
        extents.append(tuple(float((hi - lo + 1) * s) for lo, hi, s in zip(nz.min(0), nz.max(0), ct.spacing)))
        n_tumor += int((lab.array == 2).any())
    pooled = np.concatenate(samples)
    lo, hi = float(np.percentile(pooled, 0.5)), float(np.percentile(pooled, 99.5))
    clipped = np.clip(pooled, lo, hi)
    sp = np.asarray(spacings)
    sizes = np.asarray(shapes) * sp
    return {
        "n_cases": len(cases),
        "case_ids": [c.case_id for c in cases],
        "spacings_mm": [list(s) for s in spacings],
        "shapes": [list(s) for s in shapes],
        "median_spacing_mm": [float(v) for v in np.median(sp, axis=0)],
        "spacing_p10_mm": [float(v) for v in np.percentile(sp, 10, axis=0)],
        "median_shape": [float(v) for v in np.median(np.asarray(shapes), axis=0)],
        "median_size_mm": [float(v) for v in np.median(sizes, axis=0)],
        "liver_bbox_size_mm": [float(v) for v in np.median(np.asarray(extents), axis=0)],
        "foreground_hu": {
            "p00_5": lo,
            "p99_5": hi,
            "mean": float(pooled.mean()),
            "std": float(pooled.std()),
            "median": float(np.median(pooled)),
            "mean_clipped": float(clipped.mean()),
            "std_clipped": float(clipped.std()),
        },
        "n_tumor_annotated": int(sum(c.tumor_annotated for c in cases)),
        "n_with_tumor": n_tumor,
    }


def _round_down(n: float, d: int) -> int:
    return max(d, int(n // d) * d)


def make_plan(
    fp: dict[str, Any],
    *,
    spacing_mm: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    batch_size: int | None = None,
    memory_budget_mb: float = 8000.0,
    dims: int = 3,
    divisor: Sequence[int] | None = None,
    roi: str | None = None,
) -> Plan:
    """A :class:`Plan` from a fingerprint, like nnU-Net's experiment planner.

    * spacing: the median spacing; for anisotropic data (median z over 3x the in-plane
      spacing) z is the 10th percentile instead (nnU-Net's rule). 2D plans use ``None``
      (whole slices on their own pixel grid, resized to the patch).
    * clipping: the 0.5 / 99.5 percentiles of foreground (liver + tumor) HU; z-score with
      the foreground mean/std **after** clipping.
    * patch: the median image extent at that spacing (3D; with ``roi="liver"`` the median
      liver extent + 2 x 20 mm), shrunk along its largest side until
      ``batch x voxels x BYTES_PER_VOXEL`` fits ``memory_budget_mb``, each side a
      multiple of ``divisor``; batch 2. 2D: 256 x 256 by default, the batch as large as
      the budget allows (at most 64).

    Args:
        fp: from :func:`fingerprint`.
        spacing_mm: (z, y, x) mm to use instead of the planned spacing.
        patch_size: voxels to use instead of the planned patch; its length sets 2D/3D.
        batch_size: instead of the planned batch size.
        memory_budget_mb: training memory (MB) one patch batch may use on the device.
        dims: 3 (volumes) or 2 (axial slices); ignored when ``patch_size`` is given.
        divisor: patch sides are multiples of this (default ``DEFAULT_DIVISOR_3D``/``_2D``).
        roi: ``"liver"`` to size the patch for the fine stage that sees the liver box only.

    >>> fp = {"median_spacing_mm": [2.0, 0.75, 0.75], "spacing_p10_mm": [1.6, 0.7, 0.7],
    ...       "median_size_mm": [240, 380, 380], "liver_bbox_size_mm": [160, 160, 190],
    ...       "foreground_hu": {"p00_5": -10.0, "p99_5": 210.0, "mean": 110.0, "std": 35.0, "median": 112.0}}
    >>> make_plan(fp, spacing_mm=(2.5, 1.5, 1.5), memory_budget_mb=2000).patch_size
    (48, 96, 96)
    """
    if patch_size is not None:
        dims = len(tuple(patch_size))
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3; got {dims}")
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive; got {memory_budget_mb}")
    if roi not in (None, "liver"):
        raise ValueError(f"roi must be None or 'liver'; got {roi!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    hu = fp["foreground_hu"]
    lo, hi = float(hu["p00_5"]), float(hu["p99_5"])
    if not lo < hi:
        raise TrainingError(f"the foreground intensity range is empty ({lo}..{hi} HU); check the labels")
    mean = float(hu.get("mean_clipped", hu["mean"]))
    std = max(float(hu.get("std_clipped", hu["std"])), 1.0)
    budget_bytes = memory_budget_mb * 1e6

    if dims == 2:
        div = tuple(divisor) if divisor is not None else DEFAULT_DIVISOR_2D
        ps = tuple(int(p) for p in patch_size) if patch_size is not None else (256, 256)
        if any(p % d for p, d in zip(ps, div)):
            log.warning("2D patch %s is not a multiple of %s; the network may refuse it", ps, div)
        vox = float(np.prod(ps))
        bs = batch_size or int(max(2, min(64, budget_bytes // (vox * BYTES_PER_VOXEL / 4))))
        plan = Plan(spacing_mm=None, clip_hu=(lo, hi), mean_hu=mean, std_hu=std, patch_size=ps, batch_size=bs)
        log.info("2D plan: %s", plan)
        return plan

    div = tuple(divisor) if divisor is not None else DEFAULT_DIVISOR_3D
    if spacing_mm is None:
        med = [float(v) for v in fp["median_spacing_mm"]]
        if med[0] > 3.0 * max(med[1:]):
            med[0] = float(fp.get("spacing_p10_mm", med)[0])
        spacing = tuple(med)
    else:
        spacing = tuple(float(s) for s in spacing_mm)
    if patch_size is not None:
        ps = tuple(int(p) for p in patch_size)
        bs = batch_size or 2
    else:
        extent_mm = fp["liver_bbox_size_mm"] if roi == "liver" else fp["median_size_mm"]
        extent_mm = [e + (40.0 if roi == "liver" else 0.0) for e in extent_mm]
        target = [max(d, _round_down(e / s, d)) for e, s, d in zip(extent_mm, spacing, div)]
        bs = batch_size or 2
        while float(np.prod(target)) * bs * BYTES_PER_VOXEL > budget_bytes:
            # shrink the side that is largest in mm (keeps the patch's physical aspect)
            mm = [t * s for t, s in zip(target, spacing)]
            order = np.argsort(mm)[::-1]
            for ax in order:
                if target[ax] > div[ax]:
                    target[ax] -= div[ax]
                    break
            else:
                break
        ps = tuple(target)
    if float(np.prod(ps)) * bs * BYTES_PER_VOXEL > budget_bytes * 1.0001:
        log.warning("patch %s with batch %d may exceed the memory budget of %.0f MB", ps, bs, memory_budget_mb)
    plan = Plan(spacing_mm=spacing, clip_hu=(lo, hi), mean_hu=mean, std_hu=std, patch_size=ps, batch_size=bs)
    log.info("3D plan: %s", plan)
    return plan


def save_plan(plan: Plan, path: str | Path, *, fingerprint: dict[str, Any] | None = None) -> Path:
    """Write ``plan.json`` (``Plan.to_dict``; the fingerprint beside it under ``"fingerprint"`` if given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = plan.to_dict()
    if fingerprint is not None:
        data = {"plan": data, "fingerprint": fingerprint}
    path.write_text(json.dumps(data, indent=2))
    return path


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by :func:`save_plan`."""
    data = json.loads(Path(path).read_text())
    return Plan.from_dict(data["plan"] if "plan" in data else data)
