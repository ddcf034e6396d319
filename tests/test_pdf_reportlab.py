"""report.pdf and comparison.pdf drawn with ReportLab: real text in embedded DejaVu subsets, two A4 pages,
the lesion table above the text below it, and no matplotlib import for the report (issue 14, speed)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from liverseg.analysis import analyze
from liverseg.reporting import pdf as report_pdf
from liverseg.reporting import write_report_files
from liverseg.reporting.report import DISCLAIMER, NO_LIVER_MESSAGE
from liverseg.testing import phantom
from test_report_page import _many_lesions

RUN = {"case": "CT abdomen", "input": "CT abdomen.nii.gz", "note": "follow-up after TACE, compare with May",
       "device": "cpu", "created": "2025-01-01", "model": {"name": "tiny", "version": "0.1", "sha256": "ab" * 32}}


def _streams(data: bytes) -> list[bytes]:
    """Every stream of a PDF, Flate-decoded where it is compressed."""
    out = []
    for m in re.finditer(rb"obj\s*<<((?:(?!endobj).)*?)>>\s*stream\r?\n(.*?)endstream", data, re.S):
        head, body = m.group(1), m.group(2)
        if b"ASCII85Decode" in head:
            body = base64.a85decode(body.strip().removesuffix(b"~>"))
        out.append(zlib.decompress(body) if b"FlateDecode" in head else body)
    return out


def _page_text(data: bytes) -> str:
    """The content streams' shown strings (ReportLab keeps ASCII readable in its TTF subsets), joined."""
    shown = []
    for s in _streams(data):
        shown += [t.decode("latin-1").replace("\\(", "(").replace("\\)", ")") for t in
                  re.findall(rb"\(((?:[^()\\]|\\.)*)\)\s*Tj", s)]
    return "\n".join(shown)


def _record_text(monkeypatch) -> list[tuple[str, float, str, float]]:
    """(text, baseline y, font, size) of every string the canvas draws."""
    from reportlab.pdfgen.canvas import Canvas

    drawn: list[tuple[str, float, str, float]] = []
    for name in ("drawString", "drawCentredString"):
        original = getattr(Canvas, name)

        def record(self, x, y, text, *a, _original=original, **kw):
            drawn.append((text, y, self._fontname, self._fontsize))
            return _original(self, x, y, text, *a, **kw)

        monkeypatch.setattr(Canvas, name, record)
    return drawn


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A report of 50 lesions with flags and an upload note, and its PDF's bytes."""
    ct, labels = _many_lesions()
    out = tmp_path_factory.mktemp("many")
    paths = write_report_files(out, ct=ct, labels=labels, analysis=analyze(labels, ct), run_info=RUN)
    return paths, paths["pdf"].read_bytes()


def test_the_report_pdf_is_two_a4_pages_of_real_text_in_embedded_dejavu(many):
    _paths, data = many
    assert data[:5] == b"%PDF-"
    assert len(re.findall(rb"/Type /Page\b(?!s)", data)) == 2
    assert data.count(b"/MediaBox [ 0 0 595.2756 841.8898 ]") == 2  # A4 portrait
    assert b"/Title (liverseg report CT abdomen)" in data and b"/Creator (liverseg)" in data
    # the fonts: DejaVu subsets, embedded (FontFile2), with a ToUnicode map; no base-14 font at all
    fonts = set(re.findall(rb"/BaseFont /([A-Z]{6}\+[A-Za-z-]+)", data))
    assert {f.split(b"+")[1] for f in fonts} == {b"DejaVuSans", b"DejaVuSans-Bold", b"DejaVuSansMono"}
    assert data.count(b"/FontFile2") >= 3 and b"Helvetica" not in data
    cmaps = b"".join(s for s in _streams(data) if b"begincmap" in s)
    for ch in "—≥×·•±":  # drawn by the report's text (≥ in the RECIST footnote, • before each flag, ...)
        assert f"<{ord(ch):04x}>".encode() in cmaps.lower(), ch
    text = _page_text(data)
    assert "Liver and liver-tumor segmentation report" in text
    assert "not a medical device" in text and "qualified reader" in text  # the disclaimer, on both pages
    assert "Note given with the upload: follow-up after TACE" in text.replace("\n", " ")
    for cell in ("Lesion", "Volume (mL)", "Longest", "Short axis", "Slices", "RECIST", "Confidence"):
        assert cell in text, cell
    assert "more lesions (see lesions.csv)" in text and "Weights sha256: " + "ab" * 32 in text
    assert "Images" in text and "patient's right on the left" in text
    assert data.count(b"/Subtype /Image") == 2  # overlay.png and montage.png


def test_the_lesion_table_never_runs_over_the_text_below(tmp_path, monkeypatch):
    from reportlab.pdfbase.pdfmetrics import getAscentDescent

    ct, labels = _many_lesions()
    drawn = _record_text(monkeypatch)
    tables = []
    real = report_pdf.draw_table

    def recording(*a, **kw):
        h, shown = real(*a, **kw)
        tables.append((kw["top"] - h, shown))
        return h, shown

    monkeypatch.setattr(report_pdf, "draw_table", recording)
    write_report_files(tmp_path / "out", ct=ct, labels=labels, analysis=analyze(labels, ct), run_info=RUN)
    assert len(tables) == 1
    table_bottom = tables[0][0] * report_pdf._A4[1]

    def top(t):
        return t[1] + getAscentDescent(t[2], t[3])[0]

    def bottom(t):
        return t[1] + getAscentDescent(t[2], t[3])[1]

    more = [t for t in drawn if t[0].startswith("... and")]
    assert len(more) == 1 and more[0][0] == f"... and {50 - tables[0][1]} more lesions (see lesions.csv)"
    below = more + [t for t in drawn if t[0].startswith("RECIST 1.1:")]
    assert len(below) == 2
    footnote = drawn[drawn.index(below[1]):]
    footnote = footnote[: next(i for i, t in enumerate(footnote) if t[0].startswith("Model:"))]
    assert all(top(t) <= table_bottom + 0.5 for t in below), (table_bottom, below)
    footer = [t for t in drawn if t[0].startswith("Model:")][0]
    assert min(bottom(t) for t in footnote) >= top(footer)


def test_no_liver_says_so_and_the_upload_note_is_printed(tmp_path, monkeypatch):
    ct, _ = phantom(shape=(8, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=())
    labels = ct.with_array(np.zeros(ct.shape, np.uint8), is_hu=False)
    drawn = _record_text(monkeypatch)
    write_report_files(tmp_path / "out", ct=ct, labels=labels, analysis=analyze(labels, ct), run_info=RUN)
    text = " ".join(t[0] for t in drawn)
    assert NO_LIVER_MESSAGE.split()[0] in text and "No liver was found" in text
    assert "No liver tumor was found" not in text
    assert "follow-up after TACE" in text and DISCLAIMER.split(":")[0] in text


def test_drawing_a_report_pdf_does_not_import_matplotlib(many, tmp_path):
    import shutil

    paths, _data = many
    folder = tmp_path / "case"
    folder.mkdir()
    for key in ("json", "overlay", "montage"):
        shutil.copy(paths[key], folder / paths[key].name)
    code = ("import sys; from liverseg.reporting.pdf import write_report_pdf_from_folder; "
            f"write_report_pdf_from_folder({str(folder)!r}); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_the_fonts_are_found_without_importing_matplotlib():
    folder = report_pdf._font_folder()
    assert all((folder / f).is_file() for f in report_pdf._FONT_FILES.values())
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    assert any(Path(p) in folder.parents for p in spec.submodule_search_locations)
    from reportlab.pdfbase import pdfmetrics

    report_pdf._register_fonts()
    for name in report_pdf._FONT_FILES:  # every character the reports print has a glyph (no boxes)
        face = pdfmetrics.getFont(name).face
        assert all(ord(ch) in face.charToGlyph for ch in "—–≥×·•²³µ±→ØΔ°"), name
