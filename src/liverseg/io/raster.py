"""Single 2D slices saved as PNG or JPEG (no spacing, no HU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import warnings as _warnings

from liverseg.errors import CorruptFileError, DimensionError, NotCTError
from liverseg.io.limits import check_pixels
from liverseg.io.volume import Volume

__all__ = ["read_raster"]


def read_raster(path: str | Path, *, fmt: str) -> Volume:
    """Read a PNG/JPEG slice as a one-slice Volume (z = 1).

    8-bit images stay uint8, 16-bit grey PNGs uint16; colour (RGB, palette, CMYK)
    becomes luminance (ITU-R 601) and alpha is dropped. The Volume has
    ``spacing=None`` and ``is_hu=False``: the file carries neither, and liverseg's 2D
    path expects an abdominal-window 8-bit image.

    The pixel count is checked (:func:`liverseg.io.limits.check_pixels`) before any pixel
    is decoded, and Pillow's own decompression-bomb check is an error here, not a warning.

    Raises:
        CorruptFileError: truncated or undecodable image.
        DimensionError: an image too large to be a CT slice (a decompression bomb).
        NotCTError: the pixels are random noise, not a picture of anything.
    """
    from PIL import Image

    path = Path(path)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DimensionError(f"{path.name}: refused as a decompression bomb ({exc}); a CT slice has about 512 x 512 "
                                 "pixels") from exc
        except Exception as exc:
            raise CorruptFileError(
                f"{path.name}: the {fmt.upper()} image cannot be opened ({exc}); the file is damaged"
            ) from exc
    warnings: list[str] = []
    with img:
        w, h = img.size
        check_pixels(path.name, w, h)
        if getattr(img, "n_frames", 1) > 1:
            warnings.append(f"the image has {img.n_frames} frames; only the first is read")
        mode = img.mode
        try:
            img.load()
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.array(img).astype(np.uint16)
            elif mode in ("I", "F"):
                arr = np.array(img)
                if arr.min() >= 0 and arr.max() <= 65535 and np.array_equal(arr, np.rint(arr)):
                    arr = arr.astype(np.uint16)
                else:
                    arr = arr.astype(np.float32)
            elif mode in ("L", "1"):
                arr = np.array(img.convert("L"), dtype=np.uint8)
            elif mode == "LA":
                arr = np.array(img.getchannel("L"), dtype=np.uint8)
            else:  # RGB, RGBA, P, CMYK, YCbCr ...
                rgb = np.array(img.convert("RGB"))
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                    arr = rgb[..., 0].copy()
                else:
                    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                    arr = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                    warnings.append("colour image turned to grey (luminance)")
        except (OSError, ValueError, SyntaxError) as exc:
            raise CorruptFileError(
                f"{path.name}: the {fmt.upper()} image is truncated or damaged ({exc}); export it again"
            ) from exc
    _refuse_noise(path.name, arr)
    warnings.append(f"{fmt.upper()} carries no voxel size and no Hounsfield units: nothing is reported in mm")
    return Volume(
        array=arr[None],
        spacing=None,
        modality="CT",
        is_hu=False,
        metadata={"format": fmt, "warnings": warnings, "image_mode": mode, "modality_assumed": True},
    )


def _refuse_noise(name: str, arr: np.ndarray) -> None:
    """Refuse an image whose neighbouring pixels are uncorrelated: random noise, not a CT slice.

    Any picture of anatomy (even a noisy CT, even JPEG-compressed) has strongly correlated
    neighbours (correlation > 0.8 on CT slices); uniform random pixels have about 0.
    """
    a = np.asarray(arr, np.float64)
    if a.ndim != 2 or min(a.shape) < 8 or a.std() == 0:
        return
    left, right = a[:, :-1].ravel(), a[:, 1:].ravel()
    up, down = a[:-1, :].ravel(), a[1:, :].ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = max(float(np.corrcoef(left, right)[0, 1]), float(np.corrcoef(up, down)[0, 1]))
    if np.isfinite(r) and r < 0.2:
        raise NotCTError(
            f"{name} looks like random noise, not a CT slice (neighbouring pixels are uncorrelated, r = {r:.2f}); "
            "give an axial CT slice exported from a viewer"
        )
