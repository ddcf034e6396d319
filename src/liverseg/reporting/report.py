"""The case report files: report.json, lesions.csv, overlay.png, montage.png, report.html, report.pdf.

``run_info`` is what the caller (``run_case``, the web job) knows about the run; the report
reads these keys when present (all optional)::

    {"case": "volume-17", "input": "PATIENT_DICOM.zip",
     "model": {"name": "nnformer-liver-3d", "version": "1.0", "sha256": "..."},
     "liverseg_version": "0.1.0", "torch_version": "2.13.0", "device": "cpu",
     "timings_s": {"read": 1.2, "predict": 9.8, ...}, "created": "2025-...Z", "warnings": [...]}

and stores the whole dict under ``"run"`` in report.json.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from liverseg.io.volume import Volume

from liverseg.analysis import LIVER_VOLUME_NOTE, Analysis
from liverseg.reporting.overlays import write_montage_png, write_overlay_png

__all__ = [
    "DISCLAIMER",
    "LESION_CSV_COLUMNS",
    "PDF_ON_DEMAND",
    "REPORT_SCHEMA",
    "model_info",
    "render_html",
    "report_dict",
    "write_lesions_csv",
    "write_report_files",
]

log = logging.getLogger(__name__)

REPORT_SCHEMA = "liverseg.report/1"
DISCLAIMER = (
    "Research software, not a medical device: not for diagnostic use. The segmentation and "
    "measurements are produced automatically and must be checked by a qualified reader."
)

LESION_CSV_COLUMNS = [
    "id",
    "volume_ml",
    "longest_axial_diameter_mm",
    "short_axis_mm",
    "longest_axial_diameter_px",
    "short_axis_px",
    "axial_area_mm2",
    "axial_area_px",
    "diameter_slice",
    "slice_first",
    "slice_last",
    "mean_hu",
    "std_hu",
    "centroid_z_vox",
    "centroid_y_vox",
    "centroid_x_vox",
    "centroid_x_lps_mm",
    "centroid_y_lps_mm",
    "centroid_z_lps_mm",
    "measurable",
    "is_target_candidate",
    "touches_scan_end",
    "voxel_count",
    "confidence",
    "confidence_level",
]


def model_info(run_info: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "version", "sha256"}`` from ``run_info["model"]`` or flat ``model_*`` keys."""
    m = run_info.get("model")
    m = dict(m) if isinstance(m, dict) else ({"name": m} if isinstance(m, str) else {})
    for k in ("name", "version", "sha256"):
        if m.get(k) is None and run_info.get(f"model_{k}") is not None:
            m[k] = run_info[f"model_{k}"]
    return {"name": m.get("name"), "version": m.get("version"), "sha256": m.get("sha256"), **m}


def no_liver(analysis: Analysis) -> bool:
    """True when the mask holds no liver at all (then "no tumor" would be a misleading thing to say)."""
    return any(f.code == "no_liver" for f in analysis.flags) or not analysis.liver_voxel_count


#: What the reports say instead of "no tumor" when there is no liver.
NO_LIVER_MESSAGE = (
    "No liver was found in this image, so nothing was measured and no tumor could be looked for. Check that "
    "the input is an abdominal CT that covers the liver."
)


def public_run_info(run_info: dict[str, Any]) -> dict[str, Any]:
    """``run_info`` without what only the machine that ran it should know: the model bundle's folder.

    A report leaves the server (downloads, the API); the model is named by its name and sha256.
    """
    out = dict(run_info)
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k != "path"}
    out.pop("model_path", None)
    return out


def report_dict(analysis: Analysis, run_info: dict[str, Any], *, files: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of report.json: ``{"schema", "analysis", "run", "notes", "disclaimer", "files"}``."""
    return {
        "schema": REPORT_SCHEMA,
        "analysis": analysis.to_dict(),
        "run": public_run_info(run_info),
        "notes": list(analysis.notes),
        "disclaimer": DISCLAIMER,
        "files": files or {},
    }


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return round(v, 4)
    return v


def write_lesions_csv(path: str | Path, analysis: Analysis) -> Path:
    """lesions.csv: one row per lesion (columns :data:`LESION_CSV_COLUMNS`; empty = not computable)."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LESION_CSV_COLUMNS)
        w.writeheader()
        for les in analysis.lesions:
            cz, cy, cx = les.centroid_voxel
            lps = les.centroid_lps_mm or (None, None, None)
            row = {
                "id": les.id,
                "volume_ml": les.volume_ml,
                "longest_axial_diameter_mm": les.longest_axial_diameter_mm,
                "short_axis_mm": les.short_axis_mm,
                "longest_axial_diameter_px": les.longest_axial_diameter_px,
                "short_axis_px": les.short_axis_px,
                "axial_area_mm2": les.axial_area_mm2,
                "axial_area_px": les.axial_area_px,
                # slice numbers 1-based, as the page and the PDF show them (voxel indices stay 0-based)
                "diameter_slice": None if les.diameter_slice is None else les.diameter_slice + 1,
                "slice_first": les.slice_range[0] + 1,
                "slice_last": les.slice_range[1] + 1,
                "mean_hu": les.mean_hu,
                "std_hu": les.std_hu,
                "centroid_z_vox": cz,
                "centroid_y_vox": cy,
                "centroid_x_vox": cx,
                "centroid_x_lps_mm": lps[0],
                "centroid_y_lps_mm": lps[1],
                "centroid_z_lps_mm": lps[2],
                "measurable": les.measurable,
                "is_target_candidate": les.is_target_candidate,
                "touches_scan_end": les.touches_scan_end,
                "voxel_count": les.voxel_count,
                "confidence": les.confidence,
                "confidence_level": les.confidence_level,
            }
            w.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


# ------------------------------------------------------------------ human-readable summary


def _fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "not available"
    return f"{v:.{digits}f}{(' ' + unit) if unit else ''}"


def summary_rows(analysis: Analysis) -> list[tuple[str, str]]:
    """(label, value) rows of the headline numbers, in plain words with units."""
    a = analysis
    lb = " (lower bound)" if a.liver_is_lower_bound else ""
    rows: list[tuple[str, str]] = []
    if a.is_2d:
        if a.liver_area_mm2 is not None:
            rows.append(("Liver area on this slice (incl. tumor)", f"{a.liver_area_mm2:.0f} mm²"))
        rows.append(("Liver area on this slice (incl. tumor)", f"{a.liver_area_px} pixels"))
        if a.tumor_area_mm2 is not None:
            rows.append(("Tumor area on this slice", f"{a.tumor_area_mm2:.0f} mm²"))
        else:
            rows.append(("Tumor area on this slice", f"{a.tumor_voxel_count} pixels"))
    else:
        rows.append(("Liver volume (incl. tumor)", _fmt(a.liver_volume_ml, "mL") + lb))
        rows.append(("Total tumor volume", _fmt(a.tumor_volume_ml, "mL", 2) + lb))
    rows.append(("Number of lesions", str(a.tumor_count)))
    rows.append(("Tumor burden (tumor / liver)", _fmt(a.tumor_burden_percent, "%", 2) + lb))
    if a.liver_mean_hu is not None:
        rows.append(("Liver parenchyma mean attenuation", f"{a.liver_mean_hu:.0f} HU"))
    targets = a.target_candidates
    if targets:
        rows.append(
            (
                "RECIST 1.1 target-lesion candidates",
                ", ".join(f"L{t.id} ({t.longest_axial_diameter_mm:.1f} mm)" for t in targets),
            )
        )
        rows.append(("Sum of target longest diameters", f"{sum(t.longest_axial_diameter_mm or 0 for t in targets):.1f} mm"))
    if a.spacing_mm is not None:
        sp = a.spacing_mm
        rows.append(("Voxel size (slice × row × column)", f"{sp[0]:.2f} × {sp[1]:.2f} × {sp[2]:.2f} mm"))
    rows.append(("Image size (slices × rows × columns)", " × ".join(str(s) for s in a.shape)))
    return rows


def lesion_table(analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the lesion table for HTML/PDF (mm when known, else pixels)."""
    mm = analysis.spacing_mm is not None
    head = ["Lesion", "Volume (mL)" if not analysis.is_2d else ("Area (mm²)" if mm else "Area (px)")]
    head += ["Longest diameter (mm)" if mm else "Longest diameter (px)", "Short axis (mm)" if mm else "Short axis (px)"]
    head += ["Mean ± SD (HU)", "Slices", "RECIST", "Confidence"]
    rows = []
    for les in analysis.lesions:
        size = (
            _fmt(les.volume_ml, digits=2)
            if not analysis.is_2d
            else (_fmt(les.axial_area_mm2, digits=0) if mm else str(les.axial_area_px))
        )
        d = les.longest_axial_diameter_mm if mm else les.longest_axial_diameter_px
        s = les.short_axis_mm if mm else les.short_axis_px
        hu = f"{les.mean_hu:.0f} ± {les.std_hu:.0f}" if les.mean_hu is not None and les.std_hu is not None else "n/a"
        first, last = les.slice_range
        if les.measurable is None:
            recist = "unknown (no mm)"
        elif les.is_target_candidate:
            recist = "target candidate"
        elif les.measurable:
            recist = "measurable"
        else:
            recist = "non-measurable"
        rows.append(
            [
                f"L{les.id}",
                size,
                _fmt(d),
                _fmt(s),
                hu,
                f"{first + 1}–{last + 1}" if first != last else f"{first + 1}",
                recist,
                "n/a" if les.confidence is None else f"{les.confidence_level} ({les.confidence:.2f})",
            ]
        )
    return head, rows


# ------------------------------------------------------------------ HTML


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(analysis: Analysis, run_info: dict[str, Any], *, images: dict[str, Path]) -> str:
    """report.html as one string: tables, flags in plain words, images inlined (base64)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("liverseg.reporting", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    head, rows = lesion_table(analysis)
    ctx = dict(
        title=f"Liver and liver-tumor segmentation report{(' — ' + str(run_info['case'])) if run_info.get('case') else ''}",
        run=run_info,
        model=model_info(run_info),
        summary=summary_rows(analysis),
        lesion_head=head,
        lesion_rows=rows,
        flags=analysis.flags,
        notes=[LIVER_VOLUME_NOTE] + [n for n in analysis.notes if n != LIVER_VOLUME_NOTE],
        disclaimer=DISCLAIMER,
        images={k: _data_uri(p) for k, p in images.items()},
        created=run_info.get("created") or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        is_2d=analysis.is_2d,
        no_liver=no_liver(analysis),
        no_liver_message=NO_LIVER_MESSAGE,
        note=run_info.get("note") or None,
        recist_note=(
            "RECIST 1.1: a lesion is measurable when its longest axial diameter is at least 10 mm "
            "(twice the slice thickness when slices are thicker than 5 mm); the two largest measurable "
            "liver lesions are proposed as target lesions. Diameters are measured on the axial slice "
            "where each lesion is longest."
        ),
    )
    return env.get_template("report.html").render(**ctx)


# ------------------------------------------------------------------ all files


#: report.json's ``files`` key that says report.pdf was left to be drawn later (``pdf=False``).
PDF_ON_DEMAND = "pdf_on_demand"


def write_report_pictures(out_dir: str | Path, *, ct: Volume, labels: Volume, analysis: Analysis) -> dict[str, Path]:
    """Draw overlay.png and montage.png into ``out_dir`` (the pictures report.html/.pdf embed).

    Separate from :func:`write_report_files` so a caller can draw them beside other work
    (``run_case`` does, in a thread beside the DICOM SEG) and hand them over with ``pictures=``.

    Returns:
        ``{"overlay", "montage"}`` → paths written.
    """
    if labels.shape != ct.shape:
        raise ValueError(f"labels shape {labels.shape} differs from the CT's {ct.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"overlay": out / "overlay.png", "montage": out / "montage.png"}
    write_overlay_png(paths["overlay"], ct, labels, analysis)
    write_montage_png(paths["montage"], ct, labels)
    return paths


def write_report_files(
    out_dir: str | Path,
    *,
    ct: Volume,
    labels: Volume,
    analysis: Analysis,
    run_info: dict[str, Any],
    pdf: bool = True,
    pictures: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Write report.json, lesions.csv, overlay.png, montage.png, report.html and (with ``pdf``) report.pdf.

    Args:
        out_dir: the case's output folder (created if missing).
        ct: the CT (HU) the labels were predicted on.
        labels: label Volume (0/1/2) on the CT's grid.
        analysis: :func:`liverseg.analysis.analyze` of ``labels`` (and ``ct``).
        run_info: what is known about the run (see the module docstring); stored as ``"run"``.
        pdf: also draw report.pdf (ReportLab; its time is in docs/speed_profile.md, more with its import in a new
            process). ``False``: report.json's ``files`` has no ``"pdf"`` and has
            ``"pdf_on_demand": true`` instead; :func:`liverseg.reporting.pdf.write_report_pdf_from_folder`
            draws the same PDF from the folder later (the web app does, on the first download).
        pictures: what :func:`write_report_pictures` returned for this folder (they are not drawn
            again); ``None``: draw them here.

    Returns:
        ``{"json", "csv", "overlay", "montage", "html", "pdf"}`` → paths written (no ``"pdf"`` without ``pdf``).
    """
    from liverseg.reporting.pdf import write_report_pdf

    if labels.shape != ct.shape:
        raise ValueError(f"labels shape {labels.shape} differs from the CT's {ct.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "csv": out / "lesions.csv",
        "overlay": out / "overlay.png",
        "montage": out / "montage.png",
        "html": out / "report.html",
        "pdf": out / "report.pdf",
    }
    if pictures is None:
        pictures = write_report_pictures(out, ct=ct, labels=labels, analysis=analysis)
    paths.update(overlay=Path(pictures["overlay"]), montage=Path(pictures["montage"]))
    write_lesions_csv(paths["csv"], analysis)
    images = {"overlay": paths["overlay"], "montage": paths["montage"]}
    paths["html"].write_text(render_html(analysis, run_info, images=images), encoding="utf-8")
    if pdf:
        write_report_pdf(paths["pdf"], analysis, run_info, images=images)
    else:
        del paths["pdf"]
    files: dict[str, Any] = {k: p.name for k, p in paths.items()}
    if not pdf:
        files[PDF_ON_DEMAND] = True
    doc = report_dict(analysis, run_info, files=files)
    paths["json"].write_text(json.dumps(doc, indent=2, default=_json_default) + "\n", encoding="utf-8")
    log.info("report written to %s", out)
    return paths


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, _dt.datetime, _dt.date)):
        return str(o)
    raise TypeError(f"run_info holds a {type(o).__name__}, which JSON cannot store")
