"""Detached voxel files named by MetaImage (.mhd) and NRRD (.nhdr) headers, kept inside their folder.

A MetaImage header names its voxels with ``ElementDataFile = <path>`` and a detached NRRD
header with ``data file: <path>``; SimpleITK follows either path wherever it points, so a
header of a few bytes could make liverseg read (and show as an image) any file the process
can read: ``/etc/passwd``, the web app's ``secret_key``, another user's scan. This module
reads those fields itself, before SimpleITK sees the file, and accepts a detached file only
when it resolves strictly inside the header's own folder (links followed) and exists.

Both formats also allow a list of files (``LIST``) and a printf pattern
(``slice%03d.raw 1 40 1``); every file they expand to is checked the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

from liverseg.errors import CorruptFileError, UnsafeReferenceError

__all__ = ["UnsafeReferenceError", "detached_data_files", "check_detached_data", "check_header_fields",
           "MAX_HEADER_BYTES", "MAX_LIST_FILES"]

#: Longest text header read (bytes); real MetaImage/NRRD headers are well under 4 KiB.
MAX_HEADER_BYTES = 1 << 16
#: Most data files a LIST or pattern may name (one per slice of a large CT).
MAX_LIST_FILES = 4096

_PATTERN = re.compile(r"^(?P<fmt>\S*%\S*)\s+(?P<lo>-?\d+)\s+(?P<hi>-?\d+)\s+(?P<step>-?\d+)(?:\s+\d+)?$")


def _header_text(path: Path, *, nrrd: bool) -> tuple[list[str], list[str]]:
    """(header lines, lines after the header) of a text header, at most MAX_HEADER_BYTES read."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_HEADER_BYTES)
    text = raw.decode("latin-1")
    lines = text.splitlines()
    if nrrd:  # an NRRD header ends at its first blank line
        for i, line in enumerate(lines):
            if not line.strip():
                return lines[:i], lines[i + 1 :]
        return lines, []
    for i, line in enumerate(lines):  # MetaImage: ElementDataFile is the last header field
        if line.split("=", 1)[0].strip().lower() == "elementdatafile":
            return lines[: i + 1], lines[i + 1 :]
    return lines, []


def _expand(value: str, rest: list[str], name: str) -> list[str] | None:
    """The file names a data-file value stands for; None when the voxels are inside the header file."""
    value = value.strip()
    if value.upper() in ("LOCAL", ""):
        return None
    if value.upper().startswith("LIST"):
        files = [ln.strip() for ln in rest if ln.strip()]
        if not files:
            raise CorruptFileError(f"{name}: the header says its voxels are in a LIST of files but lists none")
        if len(files) > MAX_LIST_FILES:
            raise CorruptFileError(f"{name}: the header lists {len(files)} data files (limit {MAX_LIST_FILES})")
        return files
    m = _PATTERN.match(value)
    if m and "%" in m["fmt"]:
        lo, hi, step = int(m["lo"]), int(m["hi"]), int(m["step"])
        if step == 0 or (hi - lo) / step < 0 or abs(hi - lo) // abs(step) + 1 > MAX_LIST_FILES:
            raise CorruptFileError(f"{name}: the header's data-file pattern {value!r} has an unusable range")
        try:
            return [m["fmt"] % i for i in range(lo, hi + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{name}: the header's data-file pattern {value!r} is not valid ({exc})") from exc
    return [value]


def detached_data_files(path: str | Path, *, fmt: str) -> list[str] | None:
    """The voxel file names a MetaImage (``fmt="metaimage"``) or NRRD header gives, as written.

    None when the voxels are in the file itself (``ElementDataFile = LOCAL``, an attached
    NRRD). Raises :class:`~liverseg.errors.CorruptFileError` for a header that names files
    in a form liverseg cannot check.
    """
    path = Path(path)
    nrrd = fmt == "nrrd"
    header, rest = _header_text(path, nrrd=nrrd)
    value: str | None = None
    for line in header:
        if nrrd:
            if line.startswith("#") or ":" not in line:
                continue
            key, _, val = line.partition(":")
            if key.strip().lower() in ("data file", "datafile"):
                value = val.lstrip("=")
        else:
            key, sep, val = line.partition("=")
            if sep and key.strip().lower() == "elementdatafile":
                value = val
    if value is None:
        if nrrd:
            return None
        raise CorruptFileError(
            f"{path.name}: the MetaImage header has no ElementDataFile field, so its voxels cannot be found; "
            "export the image again (an .mha file keeps header and voxels together)"
        )
    names = _expand(value, rest, path.name)
    for n in names or ():
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in n) or len(n) > 4096:
            raise CorruptFileError(
                f"{path.name}: the header names a voxel file with control characters or binary bytes in its name "
                f"({n[:40]!r}); the header is damaged"
            )
    return names


def check_detached_data(path: str | Path, *, fmt: str) -> list[Path]:
    """Refuse a header whose voxel files lie outside its own folder; return the resolved files.

    Relative names are taken from the header's folder, as MetaIO and NRRD do. Every name
    must resolve (links followed) to an existing regular file strictly inside that folder;
    an absolute path is accepted only when it does too.

    Raises:
        UnsafeReferenceError: a file outside the header's folder, or a missing one; the
            message names the field and what to do.

    >>> check_detached_data("case/scan.mhd", fmt="metaimage")  # doctest: +SKIP
    [PosixPath('/data/case/scan.raw')]
    """
    path = Path(path)
    names = detached_data_files(path, fmt=fmt)
    if names is None:
        return []
    field = "data file" if fmt == "nrrd" else "ElementDataFile"
    folder = path.resolve().parent
    resolved: list[Path] = []
    for name in names:
        target = Path(name) if Path(name).is_absolute() else folder / name
        real = target.resolve()
        if not real.is_relative_to(folder) or real == folder:
            raise UnsafeReferenceError(
                f"{path.name}: refused, its header ({field} = {name}) points to a file outside the header's own "
                "folder, which liverseg never reads. Put the voxel file next to the header and name it without a "
                "folder (or upload header and voxel file together in one .zip), or convert to .mha / .nrrd / .nii.gz, "
                "which keep the voxels inside the file"
            )
        if not real.is_file():
            raise UnsafeReferenceError(
                f"{path.name}: its header ({field} = {name}) names a voxel file that is not beside it; "
                "upload the header and its voxel file together in one .zip, or convert to .mha / .nrrd / .nii.gz"
            )
        resolved.append(real)
    return resolved


def _ints(value: str) -> list[int] | None:
    try:
        return [int(v) for v in value.split()]
    except ValueError:
        return None


def check_header_fields(path: str | Path, *, fmt: str) -> None:
    """Refuse a MetaImage/NRRD text header whose dimension fields are not what the format allows.

    SimpleITK (MetaIO) loops without end on ``NDims = -5``, and trusts other counts, so the
    fields that size the image (NDims/DimSize/ElementNumberOfChannels, NRRD dimension/sizes)
    are checked here first: small positive integers, as many sizes as dimensions.

    Raises:
        CorruptFileError: a missing, negative, zero or non-integer count, with the field's name.
    """
    path = Path(path)
    nrrd = fmt == "nrrd"
    header, _ = _header_text(path, nrrd=nrrd)
    fields: dict[str, str] = {}
    for line in header:
        if nrrd:
            if line.startswith("#") or ":" not in line:
                continue
            key, _, val = line.partition(":")
        else:
            key, sep, val = line.partition("=")
            if not sep:
                continue
        fields[key.strip().lower()] = val.lstrip("=").strip()
    ndims_key, sizes_key = ("dimension", "sizes") if nrrd else ("ndims", "dimsize")
    shown = {"ndims": "NDims", "dimsize": "DimSize"}  # the names as the format writes them
    ndims = _ints(fields.get(ndims_key, ""))
    if not ndims or len(ndims) != 1 or not 1 <= ndims[0] <= 16:
        raise CorruptFileError(
            f"{path.name}: the header's {shown.get(ndims_key, ndims_key)} is {fields.get(ndims_key)!r}, not a number of dimensions "
            "(1 to 16); the header is damaged"
        )
    sizes = _ints(fields.get(sizes_key, ""))
    if sizes is None or len(sizes) != ndims[0] or any(n < 1 for n in sizes):
        raise CorruptFileError(
            f"{path.name}: the header's {shown.get(sizes_key, sizes_key)} is {fields.get(sizes_key)!r}, not {ndims[0]} positive whole "
            "numbers; the header is damaged"
        )
    channels = fields.get("elementnumberofchannels")
    if not nrrd and channels is not None and (_ints(channels) is None or len(_ints(channels) or []) != 1
                                             or not 1 <= (_ints(channels) or [0])[0] <= 64):
        raise CorruptFileError(
            f"{path.name}: the header's ElementNumberOfChannels is {channels!r}, not 1 to 64; the header is damaged"
        )
