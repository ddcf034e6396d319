"""Recognise a file's format by its content (magic bytes), not by its name alone."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from liverseg.errors import CorruptFileError, EmptyFileError, InputError, UnsupportedFormatError

__all__ = ["sniff_format", "FORMATS", "PathNotFoundError"]


class PathNotFoundError(InputError, FileNotFoundError):
    """The input path does not exist (an InputError, so the CLI exits 2; also a FileNotFoundError)."""

#: What :func:`sniff_format` can answer.
FORMATS = ("folder", "nifti", "nifti-gz", "metaimage", "nrrd", "zip", "dicom", "png", "jpeg")

_NAME_HINTS = {
    ".nii": "NIfTI",
    ".nii.gz": "gzip-compressed NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".zip": "zip",
    ".dcm": "DICOM",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return True
    return len(head) >= 12 and head[4:8] in (b"n+2\0", b"ni2\0")


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def _looks_like_dicom_without_preamble(path: Path) -> bool:
    """Old ACR-NEMA style files start straight with group 0x0008 elements."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID", "Rows"])
    except Exception:  # pydicom raises many kinds on non-DICOM bytes
        return False
    return any(k in ds for k in ("Modality", "SOPClassUID", "Rows"))


def sniff_format(path: str | Path) -> str:
    """The format of ``path``, read from its first bytes: one of :data:`FORMATS`.

    Raises:
        PathNotFoundError: ``path`` does not exist (an InputError and a FileNotFoundError).
        EmptyFileError: the file has no content.
        CorruptFileError: the content contradicts the name (a text file named ``.nii``),
            or a gzip file is damaged before its header ends.
        UnsupportedFormatError: a format liverseg does not read.

    >>> sniff_format("scan.nii.gz")  # doctest: +SKIP
    'nifti-gz'
    """
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise PathNotFoundError(f"{path} does not exist; check the path (a file, or a folder of DICOM files)")
    if not path.is_file():
        raise UnsupportedFormatError(f"{path.name} is not a regular file or folder")
    with open(path, "rb") as fh:
        head = fh.read(1024)
    hint = _NAME_HINTS.get(_suffix(path))
    if not head:
        raise EmptyFileError(f"{path.name} is empty (0 bytes): the upload or copy did not complete; send the file again")
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(552)
        except (EOFError, OSError, zlib.error) as exc:
            raise CorruptFileError(
                f"{path.name} is a gzip file damaged before its first bytes could be read ({exc}); "
                "the file is truncated or corrupt: copy or download it again"
            ) from exc
        if _is_nifti_header(inner):
            return "nifti-gz"
        raise UnsupportedFormatError(
            f"{path.name} is gzip-compressed but does not hold a NIfTI image; liverseg reads .nii.gz, "
            "MHA/NRRD, DICOM (folder or .zip), PNG and JPEG"
        )
    if _is_nifti_header(head):
        return "nifti"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head.lstrip().startswith((b"ObjectType", b"NDims")):
        return "metaimage"
    if _looks_like_text(head[:256]):
        text = head.decode("utf-8", errors="replace")
        what = f"is named like {hint} but holds" if hint else "holds"
        err = CorruptFileError if hint else UnsupportedFormatError
        raise err(
            f"{path.name} {what} plain text, not an image (it begins {text[:40]!r}); "
            "give the scan file itself (NIfTI, MHA/NRRD, DICOM folder or .zip, PNG/JPEG)"
        )
    if _looks_like_dicom_without_preamble(path):
        return "dicom"
    if hint:
        raise CorruptFileError(
            f"{path.name} is named like {hint} but its content is not {hint} (unrecognised leading bytes "
            f"{head[:8].hex()}); the file is damaged or mislabelled: export it again"
        )
    raise UnsupportedFormatError(
        f"{path.name}: unrecognised file format; liverseg reads NIfTI (.nii/.nii.gz), MHA/NRRD, "
        "a DICOM folder or .zip, and PNG/JPEG slices"
    )
