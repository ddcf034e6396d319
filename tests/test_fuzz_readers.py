"""Property-based fuzzing of the readers (Hypothesis), each within a fixed time budget (issue 18).

Valid small files (NIfTI, .nii.gz, MHA, NRRD, PNG, DICOM, zip) are damaged by Hypothesis:
header fields overwritten, bytes flipped, streams cut, text headers given random values,
zip members given hostile names. For every variant, ``read_volume`` must either return a
sane Volume (3D array, finite positive spacing, finite orientation) or raise an
:class:`~liverseg.errors.InputError` with a message; any other exception is a bug. Each
reader gets at most ``LIVERSEG_FUZZ_EXAMPLES`` examples (default 400) and
``LIVERSEG_FUZZ_SECONDS`` seconds (default 15); after that the remaining examples return at
once, so the whole run stays within about 7 x 15 s.

Run: ``pytest -m slow tests/test_fuzz_readers.py`` (``LIVERSEG_FUZZ_SECONDS=300
LIVERSEG_FUZZ_EXAMPLES=100000`` for a longer run).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bad_inputs as bi  # noqa: E402
from liverseg.errors import InputError  # noqa: E402
from liverseg.io import Volume, extract_zip, read_volume  # noqa: E402

pytestmark = pytest.mark.slow

BUDGET_S = float(os.environ.get("LIVERSEG_FUZZ_SECONDS", "15"))
#: Examples per reader at most; the time budget usually ends a run first.
MAX_EXAMPLES = int(os.environ.get("LIVERSEG_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))


class Budget:
    """Seconds left for one reader's fuzz run; examples after it return at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start, self.examples = seconds, None, 0
        self.failing = False  # once an example failed, every replay runs (shrinking must see it fail again)

    def spent(self) -> bool:
        if self.start is None:
            self.start = time.monotonic()
        if not self.failing and time.monotonic() - self.start > self.seconds:
            return True
        self.examples += 1
        return False

    def run(self, fn, *args) -> None:
        """``fn(*args)`` unless the budget is spent; a failure keeps later replays running."""
        if self.spent():
            return
        try:
            fn(*args)
        except BaseException:
            self.failing = True
            raise


def _check_read(name: str, data: bytes) -> None:
    """read_volume on these bytes: a sane Volume or an InputError, nothing else, within a few seconds."""
    with tempfile.TemporaryDirectory(prefix="liverseg-fuzz-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        t0 = time.monotonic()
        try:
            vol = read_volume(path)
        except InputError as exc:
            assert str(exc).strip(), "an InputError without a message"
            return
        finally:
            assert time.monotonic() - t0 < 20, f"{name}: a read took {time.monotonic() - t0:.0f} s"
        assert isinstance(vol, Volume) and vol.array.ndim == 3 and min(vol.shape) >= 1
        assert vol.spacing is None or all(np.isfinite(s) and s > 0 for s in vol.spacing)
        assert np.all(np.isfinite(vol.direction)) and np.all(np.isfinite(vol.origin))


def _mutate(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(base)
    for offset, value in edits:
        out[offset % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=12)
HEADER_EDITS = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=8)
CUTS = st.one_of(st.none(), st.integers(0, 4000))

NIFTI = bi.nifti_bytes(bi.phantom_xyz((4, 32, 32)))
budgets = {k: Budget(BUDGET_S) for k in ("nifti", "nifti-gz", "png", "mha", "nrrd", "dicom", "zip")}


@FUZZ
@given(edits=HEADER_EDITS, cut=CUTS)
def test_fuzz_nifti_headers(edits, cut):
    budgets["nifti"].run(lambda: _check_read("scan.nii", _mutate(NIFTI, edits, cut)))


@FUZZ
@given(edits=HEADER_EDITS, payload_edits=EDITS, cut=CUTS)
def test_fuzz_nifti_gz(edits, payload_edits, cut):
    def body() -> None:
        compressed = bi.gz(_mutate(NIFTI, edits, None))
        _check_read("scan.nii.gz", _mutate(compressed, [(18 + o, v) for o, v in payload_edits], cut))

    budgets["nifti-gz"].run(body)


PNG = bi.png_of((np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8))


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_fuzz_png(edits, cut):
    budgets["png"].run(lambda: _check_read("slice.png", _mutate(PNG, edits, cut)))


_NUMBER = st.one_of(st.integers(-5, 70000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "x", "1e308", "-0", "nan"]))
_TYPES = st.sampled_from(["MET_SHORT", "MET_UCHAR", "MET_FLOAT", "MET_DOUBLE", "MET_INT", "MET_BOGUS", ""])


@FUZZ
@given(dims=st.lists(_NUMBER, min_size=1, max_size=5), spacing=st.lists(_NUMBER, min_size=0, max_size=4),
       ndims=_NUMBER, etype=_TYPES, channels=_NUMBER, payload=st.integers(0, 40000),
       data_file=st.sampled_from(["LOCAL", "LOCAL", "/etc/passwd", "../x.raw", "missing.raw", "LIST", "x%03d.raw 1 5 1"]))
def test_fuzz_metaimage(dims, spacing, ndims, etype, channels, payload, data_file):
    header = (f"ObjectType = Image\nNDims = {ndims}\nDimSize = {' '.join(dims)}\nElementSpacing = {' '.join(spacing)}\n"
              f"ElementNumberOfChannels = {channels}\nElementType = {etype}\nElementDataFile = {data_file}\n")
    budgets["mha"].run(_check_read, "scan.mha", header.encode() + bytes(payload))


@FUZZ
@given(sizes=st.lists(_NUMBER, min_size=1, max_size=5), spacing=st.lists(_NUMBER, min_size=0, max_size=4),
       kind=st.sampled_from(["short", "uchar", "float", "double", "int64", "bogus"]),
       encoding=st.sampled_from(["raw", "gzip", "ascii", "bzip2", "bogus"]), payload=st.binary(max_size=3000))
def test_fuzz_nrrd(sizes, spacing, kind, encoding, payload):
    header = (f"NRRD0004\ntype: {kind}\ndimension: {len(sizes)}\nsizes: {' '.join(sizes)}\n"
              f"spacings: {' '.join(spacing)}\nencoding: {encoding}\n\n")
    budgets["nrrd"].run(_check_read, "scan.nrrd", header.encode() + payload)


def _dicom_file() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        paths = bi.dicom_series(Path(tmp) / "s", n=1)
        return paths[0].read_bytes()


DICOM = _dicom_file()


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(128, 1200), st.integers(0, 255)), min_size=1, max_size=10), cut=CUTS)
def test_fuzz_dicom(edits, cut):
    budgets["dicom"].run(_check_read, "slice.dcm", _mutate(DICOM, edits, None if cut is None else 132 + cut))


_NAMES = st.one_of(
    st.text(min_size=1, max_size=80),
    st.sampled_from(["../x", "/abs", "a/../../b", "C:\\win", "x", "x/", "x/y", ".", "a//b", "\\..\\y", "n/" * 40]),
)


@FUZZ
@given(members=st.lists(st.tuples(_NAMES, st.binary(max_size=200)), min_size=1, max_size=8))
def test_fuzz_zip_members(members):
    budgets["zip"].run(_check_zip, members)


def _check_zip(members: list[tuple[str, bytes]]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            try:
                zf.writestr(name, data)
            except (ValueError, UnicodeEncodeError, IndexError):  # names zipfile itself cannot write
                pass
    with tempfile.TemporaryDirectory(prefix="liverseg-fuzz-") as tmp:
        archive, dest = Path(tmp) / "x.zip", Path(tmp) / "out"
        archive.write_bytes(buf.getvalue())
        try:
            written = extract_zip(archive, dest)
        except InputError as exc:
            assert str(exc).strip()
            return
        root = dest.resolve()
        for p in written:
            assert root in p.resolve().parents, p  # nothing lands outside the extraction folder
        _check_read("x.zip", buf.getvalue())


def test_every_reader_was_fuzzed():
    """Runs after the fuzz tests (file order): each reader saw examples within its budget."""
    ran = {k: b.examples for k, b in budgets.items() if b.start is not None}
    if not ran:
        pytest.skip("run the whole file to fuzz the readers")
    assert all(n >= 10 for n in ran.values()), ran
