"""Display images: CT rendered to 8 bits in a window, and the 0..1 input of window-invariant 2D models.

A PNG/JPEG export of a CT slice carries no Hounsfield units: it is the slice rendered in
whatever window its exporter used (soft tissue, abdomen W400/L40, liver, per-slice
min–max, ...). A 2D model whose :class:`~liverseg.preprocessing.Plan` has
``input_kind="display"`` takes such an image as it is, ``p / 255`` in 0..1; a slice that
does have HU (DICOM, a one-slice NIfTI) is first rendered to 8 bits in the plan's
``display_window_hu`` (one of the windows the model was trained on), so both paths reach
the network as the same kind of picture. Training renders HU slices in many windows with
:func:`render_window` (see :mod:`liverseg.training.render2d`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NAMED_WINDOWS_HU",
    "display_from_8bit",
    "render_minmax",
    "render_window",
]

#: (width, level) in HU of the windows a CT slice is commonly exported in
NAMED_WINDOWS_HU: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "soft_tissue": (350.0, 50.0),
    "liver": (150.0, 60.0),
}


def render_window(hu: np.ndarray, *, width_hu: float, level_hu: float, gamma: float = 1.0) -> np.ndarray:
    """Render HU to 8-bit display values as a viewer's window does (uint8, same shape).

    ``p = 255 · clip((hu − (level − width/2)) / width, 0, 1) ** gamma``, rounded.

    Args:
        hu: CT values in HU.
        width_hu: window width (HU), > 0.
        level_hu: window centre (HU).
        gamma: display gamma applied to the 0..1 ramp (1: linear).

    >>> render_window(np.array([-160.0, 40.0, 240.0]), width_hu=400, level_hu=40).tolist()
    [0, 128, 255]
    """
    if not width_hu > 0:
        raise ValueError(f"window width must be positive (HU); got {width_hu}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive; got {gamma}")
    ramp = (np.asarray(hu, dtype=np.float32) - np.float32(level_hu - width_hu / 2.0)) / np.float32(width_hu)
    np.clip(ramp, 0.0, 1.0, out=ramp)
    if gamma != 1.0:
        ramp **= np.float32(gamma)
    return np.rint(ramp * 255.0).astype(np.uint8)


def render_minmax(hu: np.ndarray, *, gamma: float = 1.0) -> np.ndarray:
    """Render HU full-range: the image's own minimum black, its maximum white (uint8).

    A constant image renders black.
    """
    a = np.asarray(hu, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return render_window(a, width_hu=hi - lo, level_hu=(hi + lo) / 2.0, gamma=gamma)


def display_from_8bit(pixels: np.ndarray) -> np.ndarray:
    """8-bit display values (0–255) to the 0..1 network input (float32).

    >>> display_from_8bit(np.array([0, 255])).tolist()
    [0.0, 1.0]
    """
    return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
