"""Bad and hostile inputs made by code (no binary fixtures): NIfTI headers patched field by field,
PNG headers that lie about their size, zip bombs, DICOM with broken tags.

Used by the hardening tests (issue 18) and the bad-input corpus.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

# NIfTI-1 header field offsets (bytes) and struct formats
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET = 40, 70, 72, 76, 108
SCL_SLOPE, SCL_INTER, XYZT_UNITS, QFORM_CODE, SFORM_CODE = 112, 116, 123, 252, 254
SROW_X, SROW_Y, SROW_Z = 280, 296, 312


def phantom_xyz(shape_zyx=(8, 40, 40), *, seed: int = 0) -> np.ndarray:
    """A small CT-like int16 array in NIfTI (x, y, z) order: air around a soft-tissue body."""
    from liverseg.testing import phantom

    ct, _ = phantom(shape=shape_zyx, spacing=(4.0, 2.0, 2.0), lesions=(), seed=seed)
    return np.ascontiguousarray(ct.array.transpose(2, 1, 0))


def nifti_bytes(data_xyz: np.ndarray, *, zooms=(2.0, 2.0, 4.0), patch: dict[int, bytes] | None = None,
                tail: bytes = b"") -> bytes:
    """An uncompressed single-file NIfTI-1 of ``data_xyz`` with header bytes overwritten by ``patch``."""
    img = nib.Nifti1Image(data_xyz, np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    raw = bytearray(img.to_bytes())
    for offset, value in (patch or {}).items():
        raw[offset: offset + len(value)] = value
    return bytes(raw) + tail


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def i16(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def header_only_nifti(dim_xyz: tuple[int, ...], *, datatype: int = 4, bitpix: int = 16,
                      zooms=(1.0, 1.0, 1.0)) -> bytes:
    """352 bytes of NIfTI header claiming ``dim_xyz`` voxels, and no voxels at all."""
    raw = bytearray(nifti_bytes(np.zeros((2, 2, 2), np.int16))[:352])
    dims = [len(dim_xyz), *dim_xyz] + [1] * (7 - len(dim_xyz))
    raw[DIM: DIM + 16] = i16(*dims)
    raw[DATATYPE: DATATYPE + 4] = i16(datatype, bitpix)
    raw[PIXDIM + 4: PIXDIM + 16] = f32(*zooms)
    return bytes(raw)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def flip_bytes(data: bytes, *, n: int = 20, start_fraction: float = 0.5) -> bytes:
    """``data`` with ``n`` bytes inverted from the middle on (damage a gzip stream's payload)."""
    out = bytearray(data)
    start = int(len(out) * start_fraction)
    for k in range(n):
        out[start + 7 * k] ^= 0xFF
    return bytes(out)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels (the IDAT holds one row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_of(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def zip_bomb(n_members: int, member_bytes: int) -> bytes:
    """``n_members`` members of ``member_bytes`` zeros each (every member under any per-member ratio check)."""
    return zip_of({f"m{k:03d}.dcm": bytes(member_bytes) for k in range(n_members)})


def dicom_series(folder: Path, *, n: int = 4, edit=None, **kwargs) -> list[Path]:
    """A small valid CT series in ``folder``; ``edit(ds, k)`` may change each dataset before it is saved."""
    import pydicom

    from liverseg.testing import phantom, write_dicom_series

    ct, _ = phantom(shape=(n, 64, 64), spacing=(2.0, 1.0, 1.0), lesions=(), noise_hu=0.0)
    paths = write_dicom_series(ct, folder, **kwargs)
    if edit is not None:
        for k, p in enumerate(sorted(paths)):
            ds = pydicom.dcmread(p)
            edit(ds, k)
            ds.save_as(p)
    return paths


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
