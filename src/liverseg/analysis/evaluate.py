"""LiTS evaluation of a folder of predicted masks against a folder of reference masks.

Pairs files by case name, scores each case with :func:`liverseg.analysis.metrics.case_metrics`
and aggregates like the LiTS scorer: metrics averaged per case, global Dice over pooled
voxels, lesion detection from pooled counts, tumor-burden RMSE and maximum error.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from liverseg.analysis.metrics import LABEL_GROUPS, case_metrics
from liverseg.errors import DimensionError, InputError, NoImagesError

__all__ = ["case_key", "evaluate_folders", "find_masks", "pair_masks"]

log = logging.getLogger(__name__)

_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png")
_PREFIX = re.compile(r"^(segmentation|volume|seg|labels?|mask|case)(?:[-_]|(?=\d))", re.IGNORECASE)
_CHANNEL = re.compile(r"_0000$")
#: File names inside a ``liverseg predict`` case folder (OUT/<case>/mask.nii.gz).
_PREDICT_MASK_NAMES = ("mask.nii.gz", "mask.nii")
#: Relative tolerance when comparing the spacing of a prediction and its reference.
_SPACING_RTOL = 1e-3

SCORE_KEYS = ("dice", "jaccard", "voe", "rvd", "assd_mm", "rmsd_mm", "mssd_mm")


def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for s in _SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def case_key(path: Path) -> str:
    """The case name a mask file stands for.

    ``segmentation-17.nii`` and ``volume-17.nii.gz`` give ``17``; ``OUT/volume-17/mask.nii.gz``
    (a ``liverseg predict`` output folder) gives ``17`` too, so predictions on LiTS volumes pair
    with LiTS segmentations; other names are kept (``liver_3.nii.gz`` gives ``liver_3``);
    nnU-Net's ``_0000`` channel suffix is dropped.

    >>> case_key(Path("ref/segmentation-17.nii")), case_key(Path("out/volume-17/mask.nii.gz"))
    ('17', '17')
    """
    name = path.parent.name if path.name.lower() in _PREDICT_MASK_NAMES else (_strip_suffix(path.name) or path.stem)
    if path.name.lower() in _PREDICT_MASK_NAMES:
        name = _strip_suffix(name) or name
    name = _CHANNEL.sub("", name)
    stripped = _PREFIX.sub("", name)
    return stripped or name


def find_masks(folder: str | Path) -> dict[str, Path]:
    """Mask files in ``folder`` keyed by :func:`case_key`: direct files and ``<case>/mask.nii.gz``."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: pass a folder of masks (NIfTI, MHA, NRRD or PNG)")
    found: dict[str, Path] = {}
    candidates: list[Path] = sorted(p for p in root.iterdir() if p.is_file() and _strip_suffix(p.name) is not None)
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for n in _PREDICT_MASK_NAMES:
            if (sub / n).is_file():
                candidates.append(sub / n)
                break
    for p in candidates:
        key = case_key(p)
        if key in found and _is_image_name(p) != _is_image_name(found[key]):
            # LiTS keeps volume-N (the CT) beside segmentation-N (the mask): keep the mask
            if _is_image_name(found[key]):
                found[key] = p
            continue
        if key in found:
            raise InputError(
                f"{found[key].name} and {p.relative_to(root)} in {root} both stand for case '{key}': keep one of them"
            )
        found[key] = p
    return found


def _is_image_name(p: Path) -> bool:
    """A CT rather than a mask by its name: LiTS ``volume-N`` or nnU-Net ``*_0000``."""
    name = p.name.lower()
    stem = _strip_suffix(p.name) or p.name
    return name.startswith("volume") or stem.endswith("_0000")


def pair_masks(pred_dir: str | Path, ref_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """``(pairs, missing_predictions, unmatched_predictions)``; pairs are (case, pred, ref)."""
    preds, refs = find_masks(pred_dir), find_masks(ref_dir)
    if not refs:
        raise NoImagesError(f"no reference masks (.nii, .nii.gz, .mha, .nrrd, .png) in {ref_dir}")
    if not preds:
        raise NoImagesError(f"no predicted masks in {pred_dir} (files, or <case>/mask.nii.gz from 'liverseg predict')")
    keys = sorted(set(preds) & set(refs), key=_natural)
    if not keys:
        raise InputError(
            f"no prediction in {pred_dir} matches a reference in {ref_dir} by case name "
            f"(predictions: {', '.join(sorted(preds, key=_natural)[:5])}; references: "
            f"{', '.join(sorted(refs, key=_natural)[:5])}): name them alike, e.g. segmentation-N.nii"
        )
    missing = sorted(set(refs) - set(preds), key=_natural)
    extra = sorted(set(preds) - set(refs), key=_natural)
    return [(k, preds[k], refs[k]) for k in keys], missing, extra


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _read_labels(path: Path) -> Any:
    from liverseg.io import read_volume

    vol = read_volume(path)
    arr = np.asarray(vol.array)
    values = np.unique(arr)
    bad = np.setdiff1d(values, (0, 1, 2))
    if bad.size:
        raise InputError(
            f"{path.name} holds values {bad[:5].tolist()} besides 0/1/2: expected a label mask "
            "(0 background, 1 liver, 2 tumor); convert it first (e.g. 255 -> 1)"
        )
    return vol.with_array(arr.astype(np.uint8), is_hu=False)


def _check_grids(case: str, pred: Any, ref: Any) -> None:
    if pred.shape != ref.shape:
        raise DimensionError(
            f"case {case}: prediction shape {pred.shape} differs from reference shape {ref.shape} (z, y, x): "
            "predict on the reference's own grid"
        )
    if pred.spacing is not None and ref.spacing is not None:
        if not np.allclose(pred.spacing, ref.spacing, rtol=_SPACING_RTOL, atol=1e-4):
            log.warning("case %s: prediction spacing %s differs from reference %s; using the reference's", case, pred.spacing, ref.spacing)


def _mean(values: Iterable[float | None]) -> tuple[float | None, int]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return (float(np.mean(v)) if v else None), len(v)


def _aggregate(cases: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {"n_cases": len(cases)}
    for group in LABEL_GROUPS:
        g: dict[str, Any] = {}
        for key in SCORE_KEYS:
            mean, n = _mean(c[group][key] for c in cases)
            g[f"{key}_mean"] = mean
            g[f"{key}_n"] = n
        g["dice_per_case"] = g.pop("dice_mean")
        g.pop("dice_n")
        inter = sum(c[group]["intersection_voxels"] for c in cases)
        total = sum(c[group]["pred_voxels"] + c[group]["ref_voxels"] for c in cases)
        g["dice_global"] = 2.0 * inter / total if total else 1.0
        agg[group] = g
    det = {k: sum(c["detection"][k] for c in cases) for k in ("n_ref", "n_pred", "tp_ref_iou0", "tp_pred_iou0", "tp_ref_iou50", "tp_pred_iou50")}
    for t in ("iou0", "iou50"):
        det[f"recall_{t}"] = det[f"tp_ref_{t}"] / det["n_ref"] if det["n_ref"] else None
        det[f"precision_{t}"] = det[f"tp_pred_{t}"] / det["n_pred"] if det["n_pred"] else None
    agg["detection"] = det
    errs = [c["tumor_burden"]["error"] for c in cases if c["tumor_burden"]["error"] is not None]
    agg["tumor_burden"] = {
        "rmse": float(math.sqrt(np.mean(np.square(errs)))) if errs else None,
        "max_abs_error": float(np.max(np.abs(errs))) if errs else None,
        "n": len(errs),
    }
    return agg


CSV_COLUMNS = (
    ["case", "pred_file", "ref_file"]
    + [f"{g}_{k}" for g in LABEL_GROUPS for k in SCORE_KEYS]
    + ["lesions_ref", "lesions_pred", "lesions_detected_iou0", "lesions_detected_iou50", "pred_lesions_matched_iou0", "pred_lesions_matched_iou50"]
    + ["tumor_burden_pred", "tumor_burden_ref", "tumor_burden_error"]
)


def _csv_row(c: dict[str, Any]) -> dict[str, Any]:
    row = {"case": c["case"], "pred_file": c["pred_file"], "ref_file": c["ref_file"]}
    for g in LABEL_GROUPS:
        for k in SCORE_KEYS:
            row[f"{g}_{k}"] = c[g][k]
    d = c["detection"]
    row.update(
        lesions_ref=d["n_ref"],
        lesions_pred=d["n_pred"],
        lesions_detected_iou0=d["tp_ref_iou0"],
        lesions_detected_iou50=d["tp_ref_iou50"],
        pred_lesions_matched_iou0=d["tp_pred_iou0"],
        pred_lesions_matched_iou50=d["tp_pred_iou50"],
        tumor_burden_pred=c["tumor_burden"]["pred"],
        tumor_burden_ref=c["tumor_burden"]["ref"],
        tumor_burden_error=c["tumor_burden"]["error"],
    )
    return {k: ("" if v is None else (round(v, 6) if isinstance(v, float) else v)) for k, v in row.items()}


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every predicted mask against its reference with the LiTS metrics.

    Files are paired by case name (:func:`case_key`): ``segmentation-N.nii`` (LiTS),
    ``<case>.nii.gz``, or a ``liverseg predict`` output folder's ``<case>/mask.nii.gz``.
    Masks hold 0/1/2 on the same grid; distances use the reference's spacing (mm).

    Args:
        pred_dir: folder of predicted masks.
        ref_dir: folder of reference masks.
        out_dir: where to write ``evaluation.json`` and ``evaluation_cases.csv`` (optional).
        progress: show a progress bar.

    Returns:
        ``{"cases": [...], "aggregate": {...}, "missing_predictions": [...],
        "unmatched_predictions": [...], "pred_dir", "ref_dir", "files": {...}}``. Aggregates:
        ``liver``/``tumor`` → ``dice_per_case`` (LiTS: a case without tumor in both scores 1),
        ``dice_global`` (pooled voxels), ``<metric>_mean`` over the cases where it is defined
        (``<metric>_n`` of them); ``detection`` (pooled counts, precision/recall at IoU > 0 and
        > 0.5); ``tumor_burden`` (``rmse``, ``max_abs_error`` of fractions).

    >>> res = evaluate_folders("out/", "lits/labels/", out_dir="eval/")  # doctest: +SKIP
    >>> res["aggregate"]["tumor"]["dice_per_case"]  # doctest: +SKIP
    0.61
    """
    pairs, missing, extra = pair_masks(pred_dir, ref_dir)
    if missing:
        log.warning("%d reference case(s) have no prediction and are left out: %s", len(missing), ", ".join(missing[:10]))
    if extra:
        log.warning("%d prediction(s) have no reference and are left out: %s", len(extra), ", ".join(extra[:10]))
    cases: list[dict[str, Any]] = []
    for key, p_path, r_path in tqdm(pairs, desc="evaluate", unit="case", disable=not progress):
        pred, ref = _read_labels(p_path), _read_labels(r_path)
        _check_grids(key, pred, ref)
        m = case_metrics(pred.array, ref.array, ref.spacing)
        m.update(case=key, pred_file=str(p_path), ref_file=str(r_path), spacing_mm=ref.spacing, shape=ref.shape)
        cases.append(m)
    result: dict[str, Any] = {
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "cases": cases,
        "aggregate": _aggregate(cases),
        "missing_predictions": missing,
        "unmatched_predictions": extra,
        "notes": [
            "liver = labels 1 + 2 (tumor is part of the liver); tumor = label 2",
            "tumor dice_per_case: a case with no tumor in both prediction and reference scores 1 (LiTS)",
            "rvd = (|P| - |R|) / |R|; distances in mm on the reference's spacing; lesions are 26-connected",
        ],
        "files": {},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = out / "evaluation.json", out / "evaluation_cases.csv"
        result["files"] = {"json": str(json_path), "csv": str(csv_path)}
        json_path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        with csv_path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for c in cases:
                w.writerow(_csv_row(c))
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def format_summary(result: dict[str, Any]) -> str:
    """A short text table of the aggregate metrics (for the CLI)."""

    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.1f} %" if pct else f"{v:.4f}"

    a = result["aggregate"]
    lines = [f"cases scored: {a['n_cases']}"]
    if result["missing_predictions"]:
        lines.append(f"references without prediction (left out): {', '.join(result['missing_predictions'])}")
    for g in LABEL_GROUPS:
        s = a[g]
        lines.append(
            f"{g:6s} Dice per case {f(s['dice_per_case'])}  global Dice {f(s['dice_global'])}  VOE {f(s['voe_mean'])}  "
            f"RVD {f(s['rvd_mean'])}  ASSD {f(s['assd_mm_mean'])} mm  MSSD {f(s['mssd_mm_mean'])} mm"
        )
    d = a["detection"]
    lines.append(
        f"lesions: {d['n_ref']} reference, {d['n_pred']} predicted; recall {f(d['recall_iou0'])} / {f(d['recall_iou50'])}, "
        f"precision {f(d['precision_iou0'])} / {f(d['precision_iou50'])} (IoU > 0 / > 0.5)"
    )
    tb = a["tumor_burden"]
    lines.append(f"tumor burden: RMSE {f(tb['rmse'])}, max error {f(tb['max_abs_error'])}")
    if result["files"]:
        lines.append(f"written: {result['files']['json']}, {result['files']['csv']}")
    return "\n".join(lines)
