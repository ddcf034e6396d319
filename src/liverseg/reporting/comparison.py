"""The files of a two-scan comparison: comparison.json, lesion_changes.csv, lesion_pairs.png,
comparison.html and comparison.pdf (the report's style: same table look, same colours, same
disclaimer; drawn with ReportLab through the report PDF's helpers in :mod:`liverseg.reporting.pdf`).

>>> from liverseg.analysis.compare import compare
>>> result = compare("baseline_study/", "followup_study/", out_dir="cmp")  # doctest: +SKIP
>>> sorted(result.files)  # doctest: +SKIP
['csv', 'html', 'json', 'pairs', 'pdf']
"""

from __future__ import annotations

import base64
import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liverseg.io.volume import Volume
from liverseg.reporting.overlays import _mpl, render_slice_rgb
from liverseg.reporting.report import DISCLAIMER

if TYPE_CHECKING:
    from liverseg.analysis.compare import Comparison

__all__ = ["LESION_CHANGE_COLUMNS", "write_comparison_files", "write_lesion_changes_csv", "write_lesion_pairs_png",
           "render_comparison_html", "write_comparison_pdf", "change_rows"]

log = logging.getLogger(__name__)

LESION_CHANGE_COLUMNS = [
    "id", "kind", "matched_by", "is_target", "baseline_lesions", "followup_lesions",
    "volume_before_ml", "volume_after_ml", "volume_change_ml", "volume_change_percent",
    "diameter_before_mm", "diameter_after_mm", "diameter_change_mm", "diameter_change_percent",
    "overlap_fraction", "centroid_distance_mm", "baseline_slice", "followup_slice",
]

KIND_WORDS = {"matched": "matched", "split": "split", "merged": "merged", "split_merged": "split and merged",
              "new": "new", "disappeared": "disappeared"}


def _ids(prefix: str, ids: list[int]) -> str:
    return " + ".join(f"{prefix}{i}" for i in ids) or "—"


def write_lesion_changes_csv(path: str | Path, result: "Comparison") -> Path:
    """lesion_changes.csv: one row per lesion change; slices numbered from 1 (as the report's lesions.csv)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(LESION_CHANGE_COLUMNS)
        for c in result.lesions:
            d = c.to_dict()
            row = []
            for col in LESION_CHANGE_COLUMNS:
                if col == "baseline_lesions":
                    v: Any = " ".join(str(i) for i in c.baseline_ids)
                elif col == "followup_lesions":
                    v = " ".join(str(i) for i in c.followup_ids)
                elif col in ("baseline_slice", "followup_slice"):
                    v = "" if d[col] is None else d[col] + 1
                else:
                    v = d.get(col)
                row.append("" if v is None else v)
            w.writerow(row)
    return path


def _fmt(v: float | None, digits: int = 1, unit: str = "", sign: bool = False) -> str:
    if v is None:
        return "—"
    s = f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return s + (f" {unit}" if unit else "")


def change_rows(result: "Comparison") -> tuple[list[str], list[list[str]]]:
    """The lesion change table as text (head, rows), shared by the HTML, the PDF and the web page."""
    head = ["#", "Change", "Baseline", "Follow-up", "Volume before (mL)", "Volume after (mL)", "Volume Δ",
            "Ø before (mm)", "Ø after (mm)", "Ø Δ", "Matched by"]
    rows = []
    for c in result.lesions:
        pct = f" ({_fmt(c.volume_change_percent, 0, '%', True)})" if c.volume_change_percent is not None else ""
        dpct = f" ({_fmt(c.diameter_change_percent, 0, '%', True)})" if c.diameter_change_percent is not None else ""
        how = "—" if c.matched_by is None else (
            f"overlap {100 * c.overlap_fraction:.0f} %" if c.matched_by == "overlap" and c.overlap_fraction is not None
            else f"distance {_fmt(c.centroid_distance_mm, 1, 'mm')}")
        rows.append([
            c.id + (" (target)" if c.is_target else ""), KIND_WORDS[c.kind], _ids("L", c.baseline_ids),
            _ids("L", c.followup_ids), _fmt(c.volume_before_ml, 2), _fmt(c.volume_after_ml, 2),
            _fmt(c.volume_change_ml, 2, "", True) + pct, _fmt(c.diameter_before_mm), _fmt(c.diameter_after_mm),
            _fmt(c.diameter_change_mm, 1, "", True) + dpct, how,
        ])
    return head, rows


def _blank_ct(labels: Volume) -> Volume:
    """A uniform air image on the labels' grid, for pictures of a scan given without its CT."""
    return labels.with_array(np.full(labels.shape, -1000, np.int16), is_hu=True)


def write_lesion_pairs_png(path: str | Path, result: "Comparison", *, max_rows: int = 4, dpi: int = 100) -> Path:
    """lesion_pairs.png: per lesion change (targets first), the baseline slice beside the registered follow-up's.

    Both panels show the same baseline-grid slice: the follow-up is resampled into the
    baseline's space, so a lesion sits at the same place in both.
    """
    plt = _mpl()
    b_ct = result.baseline.ct if result.baseline.ct is not None else _blank_ct(result.baseline.labels)
    f_lab = result.registered_labels
    f_ct = result.registered_ct if result.registered_ct is not None else _blank_ct(result.baseline.labels)
    rows = [c for c in result.lesions if c.baseline_slice is not None][:max_rows]
    if not rows:  # no lesion on either scan: the liver's middle slice
        zs = np.flatnonzero((np.asarray(result.baseline.labels.array) >= 1).any(axis=(1, 2)))
        rows_z = [(int(zs[len(zs) // 2]) if zs.size else result.baseline.labels.shape[0] // 2, "no lesion on either scan")]
    else:
        rows_z = []
        for c in rows:
            d = f"Ø {_fmt(c.diameter_before_mm)} → {_fmt(c.diameter_after_mm)} mm"
            rows_z.append((int(c.baseline_slice), f"{c.id} {KIND_WORDS[c.kind]}: "  # type: ignore[arg-type]
                           f"{_ids('L', c.baseline_ids)} → {_ids('L', c.followup_ids)}, {d}"))
    n = len(rows_z)
    fig, axes = plt.subplots(n, 2, figsize=(7.2, 3.7 * n), squeeze=False, facecolor="black")
    for r, (z, title) in enumerate(rows_z):
        for col, (ct, lab, side) in enumerate(((b_ct, result.baseline.labels, "baseline"),
                                               (f_ct, f_lab, "follow-up, registered"))):
            ax = axes[r][col]
            ax.imshow(render_slice_rgb(ct, lab, z, opacity=0.3), interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{side} · slice {z + 1}", color="white", fontsize=8.5)
        axes[r][0].text(0.0, -0.03, title, transform=axes[r][0].transAxes, color="#ffd54a", fontsize=9,
                        ha="left", va="top", clip_on=False)
    fig.tight_layout(rect=(0, 0, 1, 1), h_pad=2.5)
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="black")
    plt.close(fig)
    return path


def summary_rows(result: "Comparison") -> list[tuple[str, str]]:
    p = result.patient
    reg = result.registration
    lb = " (lower bound)" if p.get("volumes_are_lower_bounds") else ""
    return [
        ("RECIST 1.1 response", f"{result.recist.response} — {result.recist.response_text}"),
        ("Liver volume", f"{_fmt(p['liver_volume_before_ml'], 0)} → {_fmt(p['liver_volume_after_ml'], 0)} mL "
                         f"({_fmt(p['liver_volume_change_percent'], 1, '%', True)}){lb}"),
        ("Tumor volume", f"{_fmt(p['tumor_volume_before_ml'], 2)} → {_fmt(p['tumor_volume_after_ml'], 2)} mL "
                         f"({_fmt(p['tumor_volume_change_ml'], 2, 'mL', True)})"),
        ("Tumor burden", f"{_fmt(p['tumor_burden_before_percent'], 2)} → {_fmt(p['tumor_burden_after_percent'], 2)} % "
                         f"({_fmt(p['tumor_burden_change_points'], 2, 'points', True)})"),
        ("Lesions", f"{p['lesions_before']} → {p['lesions_after']} · "
                    + ", ".join(f"{n} {KIND_WORDS[k]}" for k, n in sorted(result.kinds().items()))),
        ("Registration", f"rigid + affine, rotation {reg.rotation_deg:.1f}°, liver surface residual "
                         f"{_fmt(reg.liver_surface_mean_mm, 1)} mm mean / {_fmt(reg.liver_surface_p95_mm, 1)} mm "
                         f"95th percentile, liver Dice {reg.liver_dice_after:.3f}"
                         + ("" if reg.used_ct else " (liver masks only: no CT)")),
        ("Same patient", result.patient_check),
    ]


def recist_rows(result: "Comparison") -> list[list[str]]:
    rows = []
    for t in result.recist.targets:
        rows.append([f"L{t['baseline_id']}", _fmt(t["diameter_before_mm"]), _ids("L", t["followup_ids"]),
                     _fmt(t["diameter_after_mm"]), t["status"]])
    return rows


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_comparison_html(result: "Comparison", *, images: dict[str, Path]) -> str:
    """comparison.html as one string (the case report's look; images inlined)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("liverseg.reporting", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    head, rows = change_rows(result)
    r = result.recist
    return env.get_template("comparison.html").render(
        title=f"Follow-up comparison — {result.baseline.name} → {result.followup.name}",
        baseline=result.baseline.name, followup=result.followup.name,
        summary=summary_rows(result), head=head, rows=rows, recist=r, recist_rows=recist_rows(result),
        warnings=result.warnings, disclaimer=DISCLAIMER, images={k: _data_uri(p) for k, p in images.items()},
        registration=result.registration.to_dict(),
    )


def write_comparison_pdf(path: str | Path, result: "Comparison", *, images: dict[str, Path]) -> Path:
    """comparison.pdf: page 1 summary, RECIST inputs and the change table; page 2 the lesion pairs."""
    from liverseg.reporting.pdf import _Cursor, _draw_footer_disclaimer, _draw_image, _new_canvas, draw_table

    path = Path(path)
    c = _new_canvas(str(path), title="liverseg follow-up comparison")
    page = _Cursor(c)
    text = page.text
    text(f"Follow-up comparison — {result.baseline.name} → {result.followup.name}", size=13, bold=True, gap=0.004)
    text(DISCLAIMER, size=8.5, bold=True, color="#b00000", gap=0.01)
    text("Summary", size=11, bold=True, gap=0.002)
    for label, value in summary_rows(result):
        page.row(label, value, size=8.5, value_x=0.33, gap=0.002)
    page.y -= 0.008
    text("RECIST 1.1: the rules' inputs", size=11, bold=True, gap=0.002)
    for t in recist_rows(result):
        text(f"Target {t[0]}: {t[1]} mm → {t[2]} {t[3]} mm ({t[4]})", size=8.5)
    r = result.recist
    if r.sum_baseline_mm is not None:
        text(f"Sum of diameters: {r.sum_baseline_mm:.1f} mm (baseline = nadir) → {_fmt(r.sum_followup_mm)} mm "
             f"({_fmt(r.change_mm, 1, 'mm', True)}, {_fmt(r.change_percent, 1, '%', True)})", size=8.5)
    for rule in r.rules:
        verdict = "yes" if rule["holds"] else "no" if rule["holds"] is not None else "n/a"
        text(f"{rule['rule']}: {rule['test']} — {rule['value']} → {verdict}", size=8, color="#333333")
    for note in r.notes:
        text("Note: " + note, size=7.5, color="#1f4fa0")
    for w in result.warnings:
        text("• " + w, size=8, color="#a05a00")
    page.y -= 0.01
    text("Lesion changes", size=11, bold=True, gap=0.004)
    head, rows = change_rows(result)
    if rows:
        h, shown = draw_table(c, head, rows, top=page.y, bottom=0.06, left=0.03, width=0.94, head_h=0.045,
                              font_size=6.5, head_wrap=10)
        page.y -= h + 0.01
        if len(rows) > shown:
            text(f"... and {len(rows) - shown} more (see lesion_changes.csv)", size=8)
    else:
        text("No lesion on either scan.", size=9)
    c.showPage()

    page = _Cursor(c, 0.97)
    page.text("Matched lesions, side by side (follow-up registered to the baseline)", size=11, bold=True)
    p = images.get("pairs")
    if p is not None and Path(p).is_file():
        _draw_image(c, Path(p), (0.05, 0.05, 0.9, 0.88))
    _draw_footer_disclaimer(c, DISCLAIMER)
    c.showPage()
    c.save()
    return path


def write_comparison_files(out_dir: str | Path, result: "Comparison") -> dict[str, str]:
    """Write comparison.json, lesion_changes.csv, lesion_pairs.png, comparison.html, comparison.pdf.

    Returns ``{"json", "csv", "pairs", "html", "pdf"}`` → file names in ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"json": "comparison.json", "csv": "lesion_changes.csv", "pairs": "lesion_pairs.png",
             "html": "comparison.html", "pdf": "comparison.pdf"}
    write_lesion_changes_csv(out / names["csv"], result)
    write_lesion_pairs_png(out / names["pairs"], result)
    images = {"pairs": out / names["pairs"]}
    (out / names["html"]).write_text(render_comparison_html(result, images=images), encoding="utf-8")
    write_comparison_pdf(out / names["pdf"], result, images=images)
    result.files = dict(names)
    (out / names["json"]).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("comparison written to %s", out)
    return dict(names)
