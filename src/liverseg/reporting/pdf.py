"""report.pdf for the referring physician, drawn with matplotlib's PdfPages (no extra dependency).

Page 1: summary, notes, flags, lesion table, model; page 2: overlay and montage images.
A4 portrait.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from liverseg.analysis import LIVER_VOLUME_NOTE, Analysis

__all__ = ["write_report_pdf"]

_A4 = (8.27, 11.69)


def _wrap(text: str, width: int = 100) -> str:
    return "\n".join(textwrap.wrap(text, width=width)) or text


def write_report_pdf(path: str | Path, analysis: Analysis, run_info: dict[str, Any], *, images: dict[str, Path]) -> Path:
    """Write report.pdf; ``images`` maps ``overlay``/``montage`` to PNG files to include."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from liverseg.reporting.report import (
        DISCLAIMER,
        NO_LIVER_MESSAGE,
        lesion_table,
        model_info,
        no_liver,
        summary_rows,
    )

    path = Path(path)
    model = model_info(run_info)
    with PdfPages(path) as pdf:
        # ---------------------------------------------------------------- page 1
        fig = plt.figure(figsize=_A4)
        y = 0.965

        def text(s: str, *, size: float = 9, weight: str = "normal", color: str = "black", gap: float = 0.0) -> None:
            nonlocal y
            t = fig.text(0.06, y, s, fontsize=size, fontweight=weight, color=color, va="top", wrap=False)
            n_lines = s.count("\n") + 1
            y -= n_lines * size * 1.45 / 72 / _A4[1] + gap

        case = run_info.get("case")
        text("Liver and liver-tumor segmentation report" + (f" — {case}" if case else ""), size=14, weight="bold", gap=0.004)
        text(_wrap(DISCLAIMER, 105), size=8.5, weight="bold", color="#b00000", gap=0.01)
        if run_info.get("note"):
            text(_wrap("Note given with the upload: " + str(run_info["note"])[:600], 110), size=8.5, gap=0.008)
        text("Summary", size=11, weight="bold", gap=0.002)
        for label, value in summary_rows(analysis):
            fig.text(0.08, y, label, fontsize=9, va="top")
            fig.text(0.52, y, value, fontsize=9, va="top")
            y -= 9 * 1.45 / 72 / _A4[1]
        y -= 0.008
        for note in [LIVER_VOLUME_NOTE] + [n for n in analysis.notes if n != LIVER_VOLUME_NOTE]:
            text(_wrap("Note: " + note, 110), size=8.5, color="#1f4fa0", gap=0.002)
        if analysis.flags:
            y -= 0.006
            text("Please note", size=11, weight="bold", gap=0.002)
            for f in analysis.flags:
                text(_wrap("• " + f.message, 110), size=8.5, color="#a05a00", gap=0.002)
        y -= 0.01
        text("Lesions", size=11, weight="bold", gap=0.004)
        head, rows = lesion_table(analysis)
        if rows:
            # rows of a fixed height, as many as fit above the footnote and the model lines
            # (a table scaled into a smaller box overflowed it, over the text below)
            row_h, head_h = 0.0175, 0.048  # fractions of the page height
            n_fit = max(1, int((y - 0.21 - head_h) / row_h))
            shown = rows if len(rows) <= n_fit else rows[: max(1, n_fit - 1)]  # room for "... more lesions"
            h = head_h + row_h * len(shown)
            ax = fig.add_axes((0.06, y - h, 0.88, h))
            ax.axis("off")
            labels = ["\n".join(textwrap.wrap(h, 11)) for h in head]  # short lines fit the columns
            tab = ax.table(cellText=shown, colLabels=labels, loc="upper left", cellLoc="center")
            tab.auto_set_font_size(False)
            tab.set_fontsize(7.5)
            for (r, _c), cell in tab.get_celld().items():
                cell.set_height((head_h if r == 0 else row_h) / h)
                if r == 0:
                    cell.set_facecolor("#eeeeee")
                    cell.set_text_props(fontweight="bold")
            y -= h + 0.012
            if len(rows) > len(shown):
                text(f"... and {len(rows) - len(shown)} more lesions (see lesions.csv)", size=8)
            text(
                _wrap(
                    "RECIST 1.1: measurable = longest axial diameter ≥ 10 mm (2 × slice thickness when slices are "
                    "thicker than 5 mm); the two largest measurable lesions that are not of low confidence are target "
                    "candidates. Confidence = the model's mean tumor probability over the lesion: check low ones first. "
                    "Slices numbered from 1.",
                    115,
                ),
                size=7.5,
                color="#444444",
            )
        elif no_liver(analysis):
            text(_wrap(NO_LIVER_MESSAGE, 105), size=9, weight="bold", color="#a05a00")
        else:
            text("No liver tumor was found.", size=9)
        # model / run, at the bottom of the page
        lines = [
            f"Model: {model.get('name') or 'unknown'}" + (f" (version {model['version']})" if model.get("version") else ""),
            f"Weights sha256: {model.get('sha256') or 'unknown'}",
        ]
        extra = [
            f"{k}: {run_info[k]}" for k in ("input", "liverseg_version", "torch_version", "device", "created") if run_info.get(k)
        ]
        if extra:
            lines.append(" · ".join(extra))
        fig.text(0.06, 0.03, "\n".join(lines), fontsize=7, color="#444444", va="bottom", family="monospace")
        pdf.savefig(fig)
        plt.close(fig)

        # ---------------------------------------------------------------- page 2
        fig = plt.figure(figsize=_A4)
        fig.text(0.06, 0.97, "Images", fontsize=12, fontweight="bold", va="top")
        fig.text(
            0.06,
            0.945,
            "Green: liver (including tumor) · red: tumor · yellow: longest diameter · cyan: short axis · "
            "patient's right on the left",
            fontsize=8,
            va="top",
        )
        slots = [("overlay", (0.04, 0.63, 0.92, 0.3)), ("montage", (0.04, 0.05, 0.92, 0.56))]
        for key, rect in slots:
            p = images.get(key)
            if p is None or not Path(p).is_file():
                continue
            ax = fig.add_axes(rect)
            ax.imshow(mpimg.imread(str(p)))
            ax.axis("off")
        fig.text(0.5, 0.012, _wrap(DISCLAIMER, 130), fontsize=6.5, ha="center", va="bottom", color="#b00000")
        pdf.savefig(fig)
        plt.close(fig)
        d = pdf.infodict()
        d["Title"] = "liverseg report" + (f" {case}" if case else "")
        d["Creator"] = "liverseg"
    return path
