"""Safe extraction of zip archives of DICOM files.

An uploaded zip is untrusted: it may hold paths that climb out of the target
folder (``../``, absolute paths, drive letters), symbolic links, or be a zip
bomb (a small file that expands to gigabytes). :func:`extract_zip` checks the
whole central directory before writing anything and streams each member with a
byte budget, so neither a lying header nor a huge member can fill the disk.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from liverseg.errors import UPLOAD_DISK_FULL, ArchiveError, CorruptFileError, NoImagesError, ResourceError, is_disk_full

__all__ = ["ArchiveLimits", "extract_zip"]

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
#: Deepest folder nesting of a member accepted (a DICOM export is a few folders deep).
MAX_MEMBER_DEPTH = 32
#: Longest member path accepted (bytes, UTF-8).
MAX_MEMBER_PATH_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied to a zip before and while extracting it.

    Args:
        max_total_bytes: largest total uncompressed size (bytes); 4 GiB holds a
            several-thousand-slice CT.
        max_files: most members (files and folders).
        max_ratio: largest uncompressed/compressed ratio of one member bigger than
            ``ratio_min_bytes``, and of the whole archive once it expands beyond
            ``ratio_min_bytes`` in total (deflate of pure zeros reaches ~1000; DICOM slices ~2-300).
        ratio_min_bytes: members (and archives, in total) smaller than this are not
            ratio-checked (bytes).

    >>> ArchiveLimits(max_total_bytes=1 << 30).max_files
    20000
    """

    max_total_bytes: int = 4 * 1024 * _MiB
    max_files: int = 20000
    max_ratio: float = 500.0
    ratio_min_bytes: int = 16 * _MiB

    def __post_init__(self) -> None:
        for name in ("max_total_bytes", "max_files", "ratio_min_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}")
        if not self.max_ratio > 1:
            raise ValueError(f"max_ratio must be > 1; got {self.max_ratio}")


def _safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or ArchiveError when it would leave the target folder."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or p.is_absolute():
        raise ArchiveError(
            f"the zip holds an absolute path ({name!r}), which could write outside the extraction folder; "
            "re-create the archive with relative paths (e.g. `cd folder && zip -r ../scan.zip .`)"
        )
    if any(part == ".." for part in p.parts):
        raise ArchiveError(
            f"the zip holds a path that climbs out of its folder ({name!r}); refusing it as unsafe. "
            "Re-create the archive from the DICOM folder itself"
        )
    if len(p.parts) > MAX_MEMBER_DEPTH or len(norm.encode("utf-8", "surrogateescape")) > MAX_MEMBER_PATH_BYTES or any(
        len(part.encode("utf-8", "surrogateescape")) > 255 for part in p.parts
    ):
        raise ArchiveError(
            f"the zip holds a path no file system can store ({len(p.parts)} folders deep, {len(norm)} characters: "
            f"{_short(name)}); at most {MAX_MEMBER_DEPTH} folders, 255 bytes per name and {MAX_MEMBER_PATH_BYTES} "
            "bytes in all. Re-create the archive from the DICOM folder itself"
        )
    return p


def _short(name: str, n: int = 60) -> str:
    """A member name cut for messages."""
    return repr(name if len(name) <= n else name[: n // 2] + "…" + name[-n // 2:])


def check_zip(zf: zipfile.ZipFile, *, limits: ArchiveLimits = ArchiveLimits()) -> list[zipfile.ZipInfo]:
    """Check every member of an open zip against ``limits``; return the regular files to extract.

    Raises:
        ArchiveError: unsafe paths, symbolic links, encrypted members, too many
            files, too large in total, or a member compressed suspiciously well.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise ArchiveError(
            f"the zip holds {len(infos)} entries, more than the limit of {limits.max_files}; "
            "split it or upload the folder of the one series you want"
        )
    total = 0
    files: list[zipfile.ZipInfo] = []
    kinds: dict[str, str] = {}  # member path -> "dir" or "file"
    for info in infos:
        member = _safe_member_path(info.filename)
        parts = [q for q in member.parts if q not in ("", ".")]
        prefixes = ["/".join(parts[: d + 1]) for d in range(len(parts))]
        clash = next((q for q in prefixes[:-1] if kinds.get(q) == "file"), None)
        if prefixes and clash is None:
            last = prefixes[-1]
            if info.is_dir():
                clash = last if kinds.get(last) == "file" else None
            elif last in kinds:
                clash = last
        if clash is not None:
            raise ArchiveError(
                f"the zip holds {_short(clash)} twice, or both as a file and as a folder, which cannot be "
                "extracted; re-create the archive from the DICOM folder itself"
            )
        for q in prefixes[:-1]:
            kinds[q] = "dir"
        if prefixes:
            kinds[prefixes[-1]] = "dir" if info.is_dir() else "file"
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(
                f"the zip holds a symbolic link ({info.filename!r}); links can point outside the archive and "
                "are refused. Zip the real files instead (zip without -y)"
            )
        if info.flag_bits & 0x1:
            raise ArchiveError(f"the zip member {info.filename!r} is encrypted; upload an unencrypted archive")
        if info.is_dir():
            continue
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"the zip expands to more than {limits.max_total_bytes / _MiB:.0f} MiB (a zip bomb or far more "
                "than one CT series); refusing to extract it. Upload only the series you need"
            )
        if info.file_size >= limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise ArchiveError(
                f"the zip member {info.filename!r} expands {ratio:.0f}-fold ({info.compress_size} bytes -> "
                f"{info.file_size / _MiB:.0f} MiB), the signature of a zip bomb; refusing to extract it"
            )
        files.append(info)
    packed = sum(i.compress_size for i in files)
    if total >= limits.ratio_min_bytes and total > limits.max_ratio * max(packed, 1):
        raise ArchiveError(
            f"the zip's {len(files)} files expand {total / max(packed, 1):.0f}-fold in total ({packed} bytes -> "
            f"{total / _MiB:.0f} MiB; at most {limits.max_ratio:g}-fold is accepted), the signature of a zip bomb; "
            "refusing to extract it"
        )
    return files


def extract_zip(path: str | Path, dest: str | Path, *, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract the zip at ``path`` into folder ``dest`` safely; return the extracted file paths.

    Nothing is written until the whole central directory passed :func:`check_zip`;
    each member is then streamed with a byte budget (the declared size), so a
    header that lies about sizes cannot overrun the caps.

    Raises:
        ArchiveError: the archive is unsafe (see :func:`check_zip`).
        CorruptFileError: the archive is not a readable zip.
        NoImagesError: the archive holds no files.
    """
    path, dest = Path(path), Path(dest)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptFileError(f"{path.name} is not a readable zip archive ({exc}); re-create the zip") from exc
    out: list[Path] = []
    with zf:
        files = check_zip(zf, limits=limits)
        if not files:
            raise NoImagesError(f"the zip {path.name} holds no files; zip the folder of DICOM files itself")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info in files:
            target = (root / _safe_member_path(info.filename)).resolve()
            if root not in target.parents:
                raise ArchiveError(f"the zip member {info.filename!r} would land outside the extraction folder")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    left = info.file_size
                    while True:
                        chunk = src.read(min(_MiB, left + 1))
                        if not chunk:
                            break
                        left -= len(chunk)
                        written += len(chunk)
                        if left < 0 or written > limits.max_total_bytes:
                            raise ArchiveError(
                                f"the zip member {info.filename!r} expands beyond its declared size or the "
                                f"{limits.max_total_bytes / _MiB:.0f} MiB limit; refusing it"
                            )
                        dst.write(chunk)
            except OSError as exc:
                if is_disk_full(exc):
                    raise ResourceError(UPLOAD_DISK_FULL) from exc
                if not isinstance(exc, (zipfile.BadZipFile, EOFError)) and exc.errno is not None:
                    raise ArchiveError(
                        f"the zip member {_short(info.filename)} cannot be written ({exc.strerror}); re-create the "
                        "archive from the DICOM folder itself"
                    ) from exc
                raise CorruptFileError(
                    f"the zip member {info.filename!r} cannot be extracted ({type(exc).__name__}: {exc}); "
                    "the archive is damaged or uses an unsupported compression; re-create it"
                ) from exc
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
                raise CorruptFileError(
                    f"the zip member {info.filename!r} cannot be extracted ({type(exc).__name__}: {exc}); "
                    "the archive is damaged or uses an unsupported compression; re-create it"
                ) from exc
            out.append(target)
    log.debug("extracted %d files (%.1f MiB) from %s", len(out), written / _MiB, path.name)
    return out


def remove_tree(path: str | Path) -> None:
    """Remove an extraction folder, ignoring errors (used for temporary folders)."""
    shutil.rmtree(path, ignore_errors=True)
