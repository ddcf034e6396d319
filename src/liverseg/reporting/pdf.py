"""report.pdf for the referring physician, drawn with ReportLab (text as text, in DejaVu Sans).

Page 1: summary, notes, flags, lesion table, model; page 2: overlay and montage images.
A4 portrait. The file is written under a temporary name in its folder and renamed, so a
reader never sees half a PDF.

The text is real PDF text (selectable, searchable) in DejaVu Sans / DejaVu Sans Mono, embedded
as subsets: the base-14 Helvetica has no ≥ or •. The TTF files are matplotlib's (a dependency
for other figures), found without importing matplotlib. matplotlib's import and figures took
most of the time a PDF took to draw. With ``SOURCE_DATE_EPOCH`` set, the dates are that time
and the same case gives the same bytes.

:func:`write_report_pdf_from_folder` draws the same PDF later from a case folder (its
report.json, overlay.png and montage.png): what the web app does on a report's first
download, since its jobs skip the PDF (``run_case(..., pdf=False)``).

>>> write_report_pdf_from_folder("out/volume-17")  # doctest: +SKIP
PosixPath('out/volume-17/report.pdf')
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import secrets
import textwrap
import threading
from pathlib import Path
from typing import Any, Sequence

from liverseg.analysis import LIVER_VOLUME_NOTE, Analysis
from liverseg.errors import InputError

__all__ = ["PDF_FILE", "draw_table", "load_fonts", "write_report_pdf", "write_report_pdf_from_folder"]

log = logging.getLogger(__name__)

#: The report's PDF in a case folder.
PDF_FILE = "report.pdf"
#: The images a report's page 2 shows: key -> file name in the case folder.
IMAGE_FILES = {"overlay": "overlay.png", "montage": "montage.png"}

#: A4 in points (210 x 297 mm).
_A4 = (210 / 25.4 * 72, 297 / 25.4 * 72)

#: The fonts the PDFs use: ReportLab name -> DejaVu file (matplotlib ships them in mpl-data/fonts/ttf).
_FONT_FILES = {"DejaVuSans": "DejaVuSans.ttf", "DejaVuSans-Bold": "DejaVuSans-Bold.ttf",
               "DejaVuSansMono": "DejaVuSansMono.ttf"}
_SANS, _BOLD, _MONO = _FONT_FILES
_LEADING = 1.25  # line pitch in a paragraph, times the font size
_ADVANCE = 1.45  # how far the cursor moves down per line, times the font size (as the matplotlib pages did)

_fonts_lock = threading.Lock()
_fonts_registered = False


def _font_folder() -> Path:
    """matplotlib's DejaVu folder (found without importing matplotlib: ~1 s), else the system's."""
    folders = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "mpl-data" / "fonts" / "ttf" for p in spec.submodule_search_locations]
    folders += [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu")]
    for folder in folders:
        if all((folder / f).is_file() for f in _FONT_FILES.values()):
            return folder
    raise RuntimeError(
        "the PDF's fonts (" + ", ".join(_FONT_FILES.values()) + ") were found neither in matplotlib's "
        "mpl-data/fonts/ttf nor in /usr/share/fonts; reinstall matplotlib"
    )


def _register_fonts() -> None:
    """Register the DejaVu fonts with ReportLab, once per process (request threads may ask at once).

    Also turns off ReportLab's ASCII85 stream encoding (``rl_config.useA85``, process-wide): without its
    optional C accelerator it encodes in pure Python, ~1 s per report for the two images, and only makes
    the streams a quarter larger.
    """
    global _fonts_registered
    with _fonts_lock:
        if _fonts_registered:
            return
        from reportlab import rl_config
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont

        rl_config.useA85 = 0

        folder = _font_folder()
        for name, file in _FONT_FILES.items():
            pdfmetrics.registerFont(TTFont(name, str(folder / file)))
        _fonts_registered = True
        log.debug("PDF fonts registered from %s", folder)


def load_fonts() -> None:
    """Import ReportLab and register the PDF's fonts now (a server's warm-up: its first PDF download is then quicker)."""
    _register_fonts()


def _new_canvas(target: Any, *, title: str) -> Any:
    """An A4 ReportLab canvas writing to ``target`` (a path or a binary file object), its fonts registered."""
    from reportlab.pdfgen.canvas import Canvas

    _register_fonts()
    c = Canvas(target, pagesize=_A4, initialFontName=_SANS)  # no Helvetica in the file at all
    c.setTitle(title)
    c.setCreator("liverseg")
    c.setAuthor("")
    c.setSubject("")
    return c


def _lines(s: str, font: str, size: float, width_pt: float) -> list[str]:
    """``s`` broken into lines no wider than ``width_pt`` (its own newlines kept)."""
    from reportlab.lib.utils import simpleSplit

    return simpleSplit(s, font, size, width_pt) or [""]


def _draw_lines(
    c: Any,
    lines: Sequence[str],
    x: float,
    y: float,
    *,
    font: str = _SANS,
    size: float = 9,
    color: str = "#000000",
    va: str = "top",
    ha: str = "left",
) -> None:
    """Draw ``lines`` at ``x``, ``y`` (points): ``va`` "top" hangs them below ``y``, "bottom" stands them on it."""
    from reportlab.lib.colors import HexColor
    from reportlab.pdfbase.pdfmetrics import getAscentDescent

    ascent, descent = getAscentDescent(font, size)
    pitch = size * _LEADING
    base = y - ascent if va == "top" else y - descent + pitch * (len(lines) - 1)
    c.setFont(font, size)
    c.setFillColor(HexColor(color))
    for i, line in enumerate(lines):
        if ha == "center":
            c.drawCentredString(x, base - i * pitch, line)
        else:
            c.drawString(x, base - i * pitch, line)


class _Cursor:
    """Text written from the top of a page down, ``y`` a fraction of the page height (1 at the top)."""

    def __init__(self, c: Any, y: float = 0.965) -> None:
        self.c = c
        self.y = y

    def text(self, s: str, *, size: float = 9, bold: bool = False, color: str = "#000000", gap: float = 0.0,
             x: float = 0.06, right: float = 0.94) -> None:
        """``s`` at ``x`` (fraction of the page width), wrapped at ``right``; the cursor moves below it and ``gap``."""
        font = _BOLD if bold else _SANS
        lines = _lines(s, font, size, (right - x) * _A4[0])
        _draw_lines(self.c, lines, x * _A4[0], self.y * _A4[1], font=font, size=size, color=color)
        self.y -= len(lines) * size * _ADVANCE / _A4[1] + gap

    def row(self, label: str, value: str, *, size: float = 9, label_x: float = 0.08, value_x: float = 0.52,
            gap: float = 0.0) -> None:
        """A label / value row (the value wrapped at the right margin)."""
        lines = _lines(value, _SANS, size, (0.94 - value_x) * _A4[0])
        _draw_lines(self.c, [label], label_x * _A4[0], self.y * _A4[1], size=size)
        _draw_lines(self.c, lines, value_x * _A4[0], self.y * _A4[1], size=size)
        self.y -= len(lines) * size * _ADVANCE / _A4[1] + gap


def _draw_image(c: Any, path: Path, rect: tuple[float, float, float, float]) -> None:
    """A PNG scaled into ``rect`` (left, bottom, width, height as fractions of the page), aspect kept, centred."""
    from reportlab.lib.utils import ImageReader

    left, bottom, width, height = rect
    # the file's bytes, not its name: ReportLab names an image by a digest of what it is given (a name from
    # the path would make the same pages differ by their folder), and a name it cannot open it tries as a URL
    image = ImageReader(io.BytesIO(Path(path).read_bytes()))
    c.drawImage(image, left * _A4[0], bottom * _A4[1], width * _A4[0], height * _A4[1],
                preserveAspectRatio=True, anchor="c", mask="auto")


def _draw_footer_disclaimer(c: Any, disclaimer: str) -> None:
    """The disclaimer, small and red, centred at the bottom of the page."""
    lines = _lines(disclaimer, _SANS, 6.5, 0.9 * _A4[0])
    _draw_lines(c, lines, 0.5 * _A4[0], 0.012 * _A4[1], size=6.5, color="#b00000", va="bottom", ha="center")


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
    Columns are of equal width; a cell too wide for its column is drawn in a smaller size.

    Args:
        fig: the ReportLab canvas of the page (the name is the matplotlib version's, whose callers passed a Figure).
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
    from reportlab.lib.colors import HexColor
    from reportlab.pdfbase.pdfmetrics import getAscentDescent, stringWidth

    n_fit = max(1, int((top - bottom - head_h) / row_h))
    shown = list(rows) if len(rows) <= n_fit else list(rows[: max(1, n_fit - 1)])  # room for "... more"
    h = head_h + row_h * len(shown)
    page_w, page_h = _A4
    col_w = width * page_w / max(1, len(head))
    x0 = left * page_w
    c = fig
    c.setLineWidth(0.5)
    c.setStrokeColor(HexColor("#000000"))

    def cells(texts: Sequence[str], y_top: float, height: float, *, font: str, wrap: int | None, fill: str | None) -> None:
        for i, s in enumerate(texts):
            x = x0 + i * col_w
            if fill is not None:
                c.setFillColor(HexColor(fill))
            c.rect(x, y_top - height, col_w, height, stroke=1, fill=fill is not None)
            lines = (textwrap.wrap(str(s), wrap) if wrap else [str(s)]) or [""]  # short lines fit the columns
            widest = max(stringWidth(line, font, font_size) for line in lines)
            size = font_size if widest <= col_w - 3 else max(3.0, font_size * (col_w - 3) / widest)
            ascent, descent = getAscentDescent(font, size)
            block = (len(lines) - 1) * size * 1.2 + ascent - descent
            base = y_top - height / 2 + block / 2 - ascent
            c.setFont(font, size)
            c.setFillColor(HexColor("#000000"))
            for k, line in enumerate(lines):
                c.drawCentredString(x + col_w / 2, base - k * size * 1.2, line)

    y = top * page_h
    cells(head, y, head_h * page_h, font=_BOLD, wrap=head_wrap, fill="#eeeeee")
    y -= head_h * page_h
    for row in shown:
        cells(row, y, row_h * page_h, font=_SANS, wrap=None, fill=None)
        y -= row_h * page_h
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
    # one canvas per call, nothing global but the registered fonts: the web server draws PDFs in its
    # request threads (two studies' first downloads at once)
    from liverseg.reporting.report import (
        DISCLAIMER,
        NO_LIVER_MESSAGE,
        lesion_table,
        model_info,
        no_liver,
        summary_rows,
    )

    model = model_info(run_info)
    case = run_info.get("case")
    c = _new_canvas(target, title="liverseg report" + (f" {case}" if case else ""))
    # ---------------------------------------------------------------- page 1
    page = _Cursor(c)
    text = page.text
    text("Liver and liver-tumor segmentation report" + (f" — {case}" if case else ""), size=14, bold=True, gap=0.004)
    text(DISCLAIMER, size=8.5, bold=True, color="#b00000", gap=0.01)
    if run_info.get("note"):
        text("Note given with the upload: " + str(run_info["note"])[:600], size=8.5, gap=0.008)
    text("Summary", size=11, bold=True, gap=0.002)
    for label, value in summary_rows(analysis):
        page.row(label, value, size=9)
    page.y -= 0.008
    for note in [LIVER_VOLUME_NOTE] + [n for n in analysis.notes if n != LIVER_VOLUME_NOTE]:
        text("Note: " + note, size=8.5, color="#1f4fa0", gap=0.002)
    if analysis.flags:
        page.y -= 0.006
        text("Please note", size=11, bold=True, gap=0.002)
        for f in analysis.flags:
            text("• " + f.message, size=8.5, color="#a05a00", gap=0.002)
    page.y -= 0.01
    text("Lesions", size=11, bold=True, gap=0.004)
    head, rows = lesion_table(analysis)
    if rows:
        # as many rows as fit above the footnote and the model lines
        h, shown = draw_table(c, head, rows, top=page.y, bottom=0.21, left=0.06, width=0.88, head_h=0.048,
                              font_size=7.5, head_wrap=11)
        page.y -= h + 0.012
        if len(rows) > shown:
            text(f"... and {len(rows) - shown} more lesions (see lesions.csv)", size=8)
        text(
            "RECIST 1.1: measurable = longest axial diameter ≥ 10 mm (2 × slice thickness when slices are "
            "thicker than 5 mm); the two largest measurable lesions that are not of low confidence are target "
            "candidates. Confidence = the model's mean tumor probability over the lesion: check low ones first. "
            "Slices numbered from 1.",
            size=7.5,
            color="#444444",
        )
    elif no_liver(analysis):
        text(NO_LIVER_MESSAGE, size=9, bold=True, color="#a05a00")
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
    mono = [part for line in lines for part in _lines(line, _MONO, 7, 0.88 * _A4[0])]
    _draw_lines(c, mono, 0.06 * _A4[0], 0.03 * _A4[1], font=_MONO, size=7, color="#444444", va="bottom")
    c.showPage()

    # ---------------------------------------------------------------- page 2
    page = _Cursor(c, 0.97)
    page.text("Images", size=12, bold=True)
    page.y = 0.945
    page.text(
        "Green: liver (including tumor) · red: tumor · yellow: longest diameter · cyan: short axis · "
        "patient's right on the left",
        size=8,
    )
    slots = [("overlay", (0.04, 0.63, 0.92, 0.3)), ("montage", (0.04, 0.05, 0.92, 0.56))]
    for key, rect in slots:
        p = images.get(key)
        if p is None or not Path(p).is_file():
            continue
        _draw_image(c, Path(p), rect)
    _draw_footer_disclaimer(c, DISCLAIMER)
    c.showPage()
    c.save()
