"""report.pdf for the referring physician, drawn with matplotlib's PdfPages (no extra dependency).

Page 1: summary, notes, flags, lesion table, model; page 2: overlay and montage images.
A4 portrait. The file is written under a temporary name in its folder and renamed, so a
reader never sees half a PDF.

:func:`write_report_pdf_from_folder` draws the same PDF later from a case folder (its
report.json, overlay.png and montage.png): what the web app does on a report's first
download, since its jobs skip the PDF (``run_case(..., pdf=False)``).

>>> write_report_pdf_from_folder("out/volume-17")  # doctest: +SKIP
PosixPath('out/volume-17/report.pdf')
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import textwrap
from pathlib import Path
from typing import Any, Sequence

from liverseg.analysis import LIVER_VOLUME_NOTE, Analysis
from liverseg.errors import InputError

__all__ = ["PDF_FILE", "draw_table", "write_report_pdf", "write_report_pdf_from_folder"]

log = logging.getLogger(__name__)

#: The report's PDF in a case folder.
PDF_FILE = "report.pdf"
#: The images a report's page 2 shows: key -> file name in the case folder.
IMAGE_FILES = {"overlay": "overlay.png", "montage": "montage.png"}

_A4 = (8.27, 11.69)


def _wrap(text: str, width: int = 100) -> str:
    return "\n".join(textwrap.wrap(text, width=width)) or text


def draw_table(
    fig: Any,
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    top: float,
    bottom: float,
    left: float,
    width: float,
    head_h: float,
    row_h: float = 0.0175,
    font_size: float = 7.5,
    head_wrap: int = 11,
) -> tuple[float, int]:
    """Draw a table on ``fig`` from ``top`` down with fixed row heights, as many rows as fit above ``bottom``.

    The report's lesion table and the comparison's change table. A table scaled into a smaller
    box overflowed it (over the text below), so rows keep ``row_h`` and the ones that do not
    fit are left out; when any are, one row's room is kept for the caller's "... and N more" line.

    Args:
        fig: a matplotlib Figure.
        head: column titles (wrapped at ``head_wrap`` characters, bold on grey).
        rows: the cells, as text.
        top, bottom: the table's top edge and the lowest it may reach (fractions of the page height, 0 at the bottom).
        left, width: its left edge and width (fractions of the page width).
        head_h, row_h: the heights of the title row and of each row (fractions of the page height).
        font_size: the cells' font size (points).
        head_wrap: the titles' line length (characters).

    Returns:
        ``(height, shown)``: the table's height (fraction of the page height) and how many rows it shows.
    """
    n_fit = max(1, int((top - bottom - head_h) / row_h))
    shown = list(rows) if len(rows) <= n_fit else list(rows[: max(1, n_fit - 1)])  # room for "... more"
    h = head_h + row_h * len(shown)
    ax = fig.add_axes((left, top - h, width, h))
    ax.axis("off")
    labels = ["\n".join(textwrap.wrap(s, head_wrap)) for s in head]  # short lines fit the columns
    tab = ax.table(cellText=shown, colLabels=labels, loc="upper left", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(font_size)
    for (r, _c), cell in tab.get_celld().items():
        cell.set_height((head_h if r == 0 else row_h) / h)
        if r == 0:
            cell.set_facecolor("#eeeeee")
            cell.set_text_props(fontweight="bold")
    return h, len(shown)


def _open_temporary(path: Path) -> tuple[Path, Any]:
    """A new file beside ``path`` under a dot-name (mode 0666 less the umask), open for writing in binary."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")


def write_report_pdf(path: str | Path, analysis: Analysis, run_info: dict[str, Any], *, images: dict[str, Path]) -> Path:
    """Write report.pdf; ``images`` maps ``overlay``/``montage`` to PNG files to include.

    Written to a temporary name in ``path``'s folder and renamed onto ``path`` (``os.replace``):
    ``path`` is the old file or the whole new one, never half of one; a failure removes the
    temporary file and raises.
    """
    path = Path(path)
    tmp, fh = _open_temporary(path)
    try:
        with fh:
            _draw_report_pdf(fh, analysis, run_info, images=images)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_report_pdf_from_folder(folder: str | os.PathLike[str], *, name: str = PDF_FILE) -> Path:
    """Draw a case folder's report.pdf from its report.json, overlay.png and montage.png.

    The same pages and tables as the PDF ``run_case`` writes at case time: the measurements are
    ``Analysis.from_dict(report["analysis"])``, the run record ``report["run"]`` (what the PDF
    prints of it, model name / version / sha256, case, input, versions, device, note, is kept
    there), the images those of the folder (a missing one is left out, as at case time).
    Written atomically (see :func:`write_report_pdf`); an existing PDF is replaced.

    Args:
        folder: a case folder (``run_case``'s ``out_dir``, a web study's ``output/`` or a mask version's folder).
        name: the PDF's file name in ``folder``.

    Returns:
        the PDF's path.

    Raises:
        InputError: ``folder`` holds no readable report.json, or one without an ``analysis``.
    """
    folder = Path(folder)
    source = folder / "report.json"
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder} holds no report.json, so its PDF cannot be drawn; run the case first") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{source} cannot be read ({exc}); run the case again to write a new one") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("analysis"), dict):
        raise InputError(f"{source} holds no 'analysis'; it is not a liverseg report. Run the case again")
    try:
        analysis = Analysis.from_dict(doc["analysis"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: its 'analysis' cannot be read ({exc}); run the case again") from None
    run_info = doc.get("run") if isinstance(doc.get("run"), dict) else {}
    images = {key: folder / file for key, file in IMAGE_FILES.items() if (folder / file).is_file()}
    path = write_report_pdf(folder / name, analysis, run_info, images=images)
    log.info("report.pdf drawn from %s", source)
    return path


def _draw_report_pdf(target: Any, analysis: Analysis, run_info: dict[str, Any], *, images: dict[str, Path]) -> None:
    """Draw the report's two pages into ``target`` (a path or a binary file object)."""
    # Figures made directly, not through pyplot: pyplot's global figure list is not thread-safe, and the
    # web server draws PDFs in its request threads (two studies' first downloads at once)
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from liverseg.reporting.report import (
        DISCLAIMER,
        NO_LIVER_MESSAGE,
        lesion_table,
        model_info,
        no_liver,
        summary_rows,
    )

    model = model_info(run_info)
    with PdfPages(target) as pdf:
        # ---------------------------------------------------------------- page 1
        fig = Figure(figsize=_A4)
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
            # as many rows as fit above the footnote and the model lines
            h, shown = draw_table(fig, head, rows, top=y, bottom=0.21, left=0.06, width=0.88, head_h=0.048,
                                  font_size=7.5, head_wrap=11)
            y -= h + 0.012
            if len(rows) > shown:
                text(f"... and {len(rows) - shown} more lesions (see lesions.csv)", size=8)
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

        # ---------------------------------------------------------------- page 2
        fig = Figure(figsize=_A4)
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
        d = pdf.infodict()
        d["Title"] = "liverseg report" + (f" {case}" if case else "")
        d["Creator"] = "liverseg"
