"""The 3D model's evaluation table: held-out real cases end to end, plus external checks.

For each held-out labelled case: the shipped ``Predictor`` predicts the CT end to end
(postprocessing, back on the input grid); the mask and the expert reference are written
as NIfTI and scored by ``liverseg evaluate``'s own code (:func:`liverseg.analysis.evaluate_folders`):
liver and tumor Dice, ASSD, lesion recall and precision. Added per case: the false-positive
liver volume outside the reference liver (all of it, and the part more than 20 mm from it:
heart, stomach, spleen), and the predicted lesions that touch no real tumor.

External checks without an expert mask:

* TotalSegmentator's example CT (non-contrast, 3 mm) against TotalSegmentator's own liver
  (label 5 of ``example_seg_totalsegmentator_prediction.nii.gz``): agreement with a strong model;
* the healthy CHAOS liver: lesions of 10 mm or more (there should be none).

The lesion-confidence rule is chosen here: the held-out cases are re-scored with each
``--confidence-sweep`` threshold on the same prediction (lesions below it relabelled liver).

    .venv/bin/python benchmarks/evaluate_3d.py --data ../shared/data --cases 3Dircadb1.17 \\
        --out runs/eval3d --markdown runs/eval3d/table.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


#: the recipe whose header fixes (spacing_overrides, axes_overrides: the LiTS crop) apply to the cases
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "liver-tumor-3d.json"


def with_recipe_fixes(case, config):
    """The case with the recipe's spacing and axes overrides, in the trainer's order."""
    if case.case_id in config.spacing_overrides:
        case = case.with_spacing(tuple(float(s) for s in config.spacing_overrides[case.case_id]))
    if case.case_id in config.axes_overrides:
        case = case.with_axes(tuple(int(a) for a in config.axes_overrides[case.case_id]))
    return case


def _fmt(v: object, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _extra_case_numbers(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], annotated: bool) -> dict:
    """FP liver volume outside the reference liver (all / > 20 mm away) and lesions touching no real tumor."""
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000.0
    fp = (pred > 0) & (ref == 0)
    far = ndimage.distance_transform_edt(ref == 0, sampling=spacing) > 20.0
    out = {
        "fp_liver_ml": round(float(fp.sum()) * voxel_ml, 2),
        "fp_liver_far_ml": round(float((fp & far).sum()) * voxel_ml, 2),
    }
    comp, n = ndimage.label(pred == 2, structure=ndimage.generate_binary_structure(3, 3))
    if annotated and n:
        touched = set(np.unique(comp[(ref == 2) & (comp > 0)]).tolist())
        out["lesions_outside_real_tumor"] = int(n - len(touched))
    else:
        out["lesions_outside_real_tumor"] = int(n) if annotated else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (labeled/ and unlabeled/ inside)")
    ap.add_argument("--cases", nargs="+", required=True, help="held-out labelled case ids to score")
    ap.add_argument("--model", default="liver-tumor-3d", help="bundle name or folder")
    ap.add_argument("--out", required=True, help="folder for masks, references and the results")
    ap.add_argument("--markdown", default=None, help="write the table here (default: OUT/table.md)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tta", action="store_true", help="mirroring test-time augmentation on every axis "
                    "(default: the bundle's own mode, config.json tta.axes, as the shipped Predictor)")
    ap.add_argument("--no-tta", action="store_true", help="no test-time augmentation, whatever the bundle's mode")
    ap.add_argument("--tta-axes", default=None, help="mirror only these axes, e.g. 'z' (implies --tta)")
    ap.add_argument("--min-lesion-confidence", type=float, default=None,
                    help="the Predictor's lesion rule (default: the Predictor's own default)")
    ap.add_argument("--confidence-sweep", type=float, nargs="*", default=[0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75])
    ap.add_argument("--neck-radius-mm", type=float, default=6.0,
                    help="postprocessing: cut parts hanging on the liver by a neck narrower than twice this (mm); 0: off")
    ap.add_argument("--no-external", action="store_true", help="skip the TotalSegmentator and CHAOS checks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    from liverseg.analysis import analyze, evaluate_folders
    from liverseg.analysis.confidence import drop_unconfident_lesions
    from liverseg.analysis.metrics import case_metrics, dice
    from liverseg.inference import Predictor
    from liverseg.io import read_volume, write_mask
    from liverseg.training.config import load_config
    from liverseg.training.datasets import find_cases

    data, out = Path(args.data), Path(args.out)
    (out / "pred").mkdir(parents=True, exist_ok=True)
    (out / "ref").mkdir(parents=True, exist_ok=True)
    kw = {} if args.min_lesion_confidence is None else {"min_lesion_confidence": args.min_lesion_confidence}
    tta_axes = None if args.tta_axes is None else [a.strip() for a in args.tta_axes.split(",") if a.strip()]
    kw["neck_radius_mm"] = args.neck_radius_mm
    tta = False if args.no_tta else (True if (args.tta or tta_axes) else None)  # both: the Predictor refuses
    predictor = Predictor(args.model, model_2d=None, tta=tta, tta_axes=tta_axes, threads=args.threads, **kw)
    # the sweep re-scores one prediction per case, so predict with every lesion kept
    sweep_predictor = Predictor(predictor.bundle("3d"), model_2d=None, tta=tta, tta_axes=tta_axes, threads=args.threads,
                                min_lesion_confidence=0.0, neck_radius_mm=args.neck_radius_mm)
    info = predictor.model_info("3d")
    results: dict = {"model": info, "tta": info["tta"], "tta_axes": info["tta_axes"],
                     "neck_radius_mm": args.neck_radius_mm,
                     "min_lesion_confidence": predictor.min_lesion_confidence, "cases": {}, "sweep": {}}

    recipe = load_config(RECIPE)
    cases = {c.case_id: c for c in find_cases(data / "labeled")}
    missing = [c for c in args.cases if c not in cases]
    if missing:
        raise SystemExit(f"unknown case ids {missing}; known: {sorted(cases)}")
    sweep_rows: dict[float, list] = {t: [] for t in args.confidence_sweep}
    for cid in args.cases:
        case = cases[cid]
        case = with_recipe_fixes(case, recipe)
        ct, ref = case.load()
        t = time.perf_counter()
        pred = sweep_predictor.predict(ct)
        seconds = time.perf_counter() - t
        full = pred.labels.array
        for thr in args.confidence_sweep:
            lab, _ = drop_unconfident_lesions(full, pred.tumor_probability, min_confidence=thr)
            m = case_metrics(lab, ref.array, ct.spacing)
            sweep_rows[thr].append({"case": cid, "tumor_dice": m["tumor"]["dice"], "detection": m["detection"]})
        final, _ = drop_unconfident_lesions(full, pred.tumor_probability, min_confidence=predictor.min_lesion_confidence)
        write_mask(ct, final, out / "pred" / f"{cid}.nii.gz")
        write_mask(ct, ref.array, out / "ref" / f"{cid}.nii.gz")
        a = analyze(ct.with_array(final, is_hu=False, modality="SEG"), ct, tumor_probability=pred.tumor_probability)
        results["cases"][cid] = {
            "tumor_annotated": case.tumor_annotated,
            "seconds": round(seconds, 2),
            **_extra_case_numbers(final, ref.array, ct.spacing, case.tumor_annotated),
            "lesion_confidences": [les.confidence for les in a.lesions],
        }
        sys.stderr.write(f"{cid}: predicted in {seconds:.1f} s\n")
    ev = evaluate_folders(out / "pred", out / "ref", out_dir=out, progress=False)
    for row in ev["cases"]:
        results["cases"][row["case"]]["evaluate"] = row
    results["aggregate"] = ev["aggregate"]
    for thr, rows in sweep_rows.items():
        tp = sum(r["detection"]["tp_pred_iou0"] for r in rows)
        npred = sum(r["detection"]["n_pred"] for r in rows)
        nref = sum(r["detection"]["n_ref"] for r in rows)
        det = sum(r["detection"]["tp_ref_iou0"] for r in rows)
        annotated = [r for r, cid in zip(rows, args.cases) if cases[cid].tumor_annotated]
        results["sweep"][str(thr)] = {
            "tumor_dice_mean": float(np.mean([r["tumor_dice"] for r in annotated])) if annotated else None,
            "lesions_predicted": npred, "lesions_reference": nref,
            "lesion_recall": det / nref if nref else None, "lesion_precision": tp / npred if npred else None,
        }

    if not args.no_external:
        ts = data / "unlabeled" / "totalsegmentator-example"
        ct = read_volume(ts / "example_ct_sm.nii.gz")
        tref = read_volume(ts / "example_seg_totalsegmentator_prediction.nii.gz").array == 5
        t = time.perf_counter()
        p = predictor.predict(ct).labels.array
        results["totalsegmentator_example"] = {
            "seconds": round(time.perf_counter() - t, 2),
            "liver_dice_vs_totalsegmentator": dice(p > 0, tref),
            "liver_ml": round(float((p > 0).sum() * np.prod(ct.spacing) / 1000), 1),
            "liver_ml_totalsegmentator": round(float(tref.sum() * np.prod(ct.spacing) / 1000), 1),
        }
        chaos = cases.get("chaos-ct-sample")
        if chaos is not None:
            ct, _ = chaos.load()
            pred = predictor.predict(ct)
            a = analyze(pred.labels, ct, tumor_probability=pred.tumor_probability)
            big = [les for les in a.lesions if (les.longest_axial_diameter_mm or 0) >= 10.0]
            results["chaos_healthy_liver"] = {
                "lesions": len(a.lesions),
                "lesions_10mm_or_more": len(big),
                "diameters_mm": [les.longest_axial_diameter_mm for les in big],
                # from the bundle's record (config.json train_data.train_cases); a fold may hold CHAOS out
                "in_training_data": "chaos-ct-sample" in ((predictor.bundle("3d").info.get("train_data") or {})
                                                          .get("train_cases") or ["chaos-ct-sample"]),
            }

    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    md = _markdown(results, args)
    Path(args.markdown or out / "table.md").write_text(md)
    sys.stdout.write(md)
    return 0


def _markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Model `{results['model'].get('name')}` sha256 `{str(results['model'].get('sha256'))[:16]}…`, "
        f"TTA {('on (' + ','.join(results['tta_axes']) + ')' if results.get('tta_axes') else 'on') if results['tta'] else 'off'}, min lesion confidence {results['min_lesion_confidence']:g}, neck rule {results.get('neck_radius_mm', 0):g} mm.",
        "",
        "| case | liver Dice | liver ASSD (mm) | tumor Dice | lesions ref / pred | lesion recall | lesion precision "
        "| FP liver (mL) | FP liver > 20 mm away (mL) | lesions on no real tumor | predict (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cid, r in results["cases"].items():
        ev = r.get("evaluate", {})
        liver, tumor, det = ev.get("liver", {}), ev.get("tumor", {}), ev.get("detection", {})
        ann = r["tumor_annotated"]
        n_ref, n_pred = det.get("n_ref"), det.get("n_pred")
        lines.append(
            f"| {cid} | {_fmt(liver.get('dice'))} | {_fmt(liver.get('assd_mm'), 2)} | "
            f"{_fmt(tumor.get('dice')) if ann else '— (liver-only)'} | "
            f"{f'{n_ref} / {n_pred}' if ann else f'— / {n_pred}'} | "
            f"{_fmt(det.get('recall_iou0')) if ann else '—'} | {_fmt(det.get('precision_iou0')) if ann else '—'} | "
            f"{_fmt(r['fp_liver_ml'], 1)} | {_fmt(r['fp_liver_far_ml'], 1)} | {_fmt(r['lesions_outside_real_tumor'])} | "
            f"{_fmt(r['seconds'], 1)} |"
        )
    lines += ["", "Lesion-confidence sweep (lesions below the threshold relabelled liver, same predictions):", "",
              "| threshold | tumor Dice (mean) | lesions ref / pred | recall | precision |", "|---|---|---|---|---|"]
    for thr, s in results["sweep"].items():
        lines.append(f"| {thr} | {_fmt(s['tumor_dice_mean'])} | {s['lesions_reference']} / {s['lesions_predicted']} | "
                     f"{_fmt(s['lesion_recall'])} | {_fmt(s['lesion_precision'])} |")
    if "totalsegmentator_example" in results:
        t = results["totalsegmentator_example"]
        lines += ["", f"TotalSegmentator example CT (non-contrast, 3 mm): liver Dice vs TotalSegmentator "
                  f"{_fmt(t['liver_dice_vs_totalsegmentator'])} ({t['liver_ml']} mL vs {t['liver_ml_totalsegmentator']} mL)."]
    if "chaos_healthy_liver" in results:
        c = results["chaos_healthy_liver"]
        seen = "a training case" if c.get("in_training_data", True) else "held out from this bundle"
        lines += [f"CHAOS healthy liver ({seen}): {c['lesions']} lesions, {c['lesions_10mm_or_more']} of "
                  f"10 mm or more {c['diameters_mm'] or ''}."]
    lines += ["", "```", "  ".join(["python benchmarks/evaluate_3d.py"] + sys.argv[1:]), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
