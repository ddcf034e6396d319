"""Training-time rendering of CT slices as users export them: many windows, gamma, JPEG, geometry.

A window-invariant 2D model (plan ``input_kind="display"``) is trained on 8-bit pictures,
not on HU. :func:`random_render` turns an HU slice into such a picture in a randomly drawn
window; :func:`degrade` then does to any 8-bit picture (rendered here, or a real export such
as the CURVAS PNGs) what exporting and sharing does: 90° rotations and flips, crops and
padding, resizing, JPEG compression. Labels follow every geometric step (nearest).

Windows drawn by :func:`random_render` (width, level in HU; the named ones jittered by ±15 %
in width and ±15 HU in level):

* ``abdomen`` W400/L40, ``soft_tissue`` W350/L50, ``liver`` W150/L60
  (:data:`liverseg.preprocessing.display.NAMED_WINDOWS_HU`);
* ``minmax``: the slice's own minimum to maximum (air black, bone white);
* ``narrow``: a narrow contrast window with fat black, width log-uniform in 180–320 HU,
  level uniform in 90–160 HU (as some sites export soft tissue: the CURVAS PNGs look like
  about W250/L130, liver ≈ 95/255 with fat black);
* ``random``: width log-uniform in 150–1500 HU, level uniform in −50–200 HU;
* ``wide``: a full-range export of the scanner's stored values, air at or near black: the low
  end uniform in −1100…−950 HU, the high end uniform in 900…3100 HU (12-bit values scaled to
  8 bits; soft tissue spans only 10–20 grey levels). Off (weight 0) unless a config asks for it.

Each with a display gamma (log-uniform 0.6–1.6) on ``gamma_probability`` of samples.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np

from liverseg.preprocessing.display import NAMED_WINDOWS_HU, render_minmax, render_window

__all__ = ["DEFAULT_WINDOW_WEIGHTS", "RenderOptions", "apply_gamma", "degrade", "jpeg_roundtrip", "random_render"]

#: how often each window kind is drawn (normalised)
DEFAULT_WINDOW_WEIGHTS: dict[str, float] = {
    "abdomen": 0.17,
    "soft_tissue": 0.17,
    "liver": 0.13,
    "minmax": 0.13,
    "narrow": 0.15,
    "random": 0.25,
    "wide": 0.0,
}


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """Probabilities and ranges of the export simulation.

    Args:
        window_weights: window kind → relative frequency (kinds as in the module docstring).
        gamma_probability: share of samples with a display gamma (log-uniform in ``gamma_range``).
        gamma_range: (low, high) gamma.
        dihedral_probability: share of samples turned by a random non-identity element of
            the 8 rotations/flips of the square.
        crop_pad_probability: share of samples cropped (to 65–100 % of each side) or padded
            (by up to 20 % of each side with black), half each.
        resize_probability: share of samples stored at a smaller size (side × 0.4–1.0)
            before JPEG, as thumbnails and re-exports are.
        jpeg_probability: share of samples JPEG-compressed, quality drawn from ``jpeg_qualities``.
        jpeg_qualities: JPEG qualities (PIL's 1–95 scale) to draw from.
    """

    window_weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WINDOW_WEIGHTS))
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.6, 1.6)
    dihedral_probability: float = 0.4
    crop_pad_probability: float = 0.3
    resize_probability: float = 0.4
    jpeg_probability: float = 0.5
    jpeg_qualities: tuple[int, ...] = (95, 85, 75, 60, 40, 25)

    def __post_init__(self) -> None:
        unknown = set(self.window_weights) - set(DEFAULT_WINDOW_WEIGHTS)
        if unknown or not self.window_weights or min(self.window_weights.values()) < 0 or sum(self.window_weights.values()) <= 0:
            raise ValueError(
                f"window_weights must map some of {sorted(DEFAULT_WINDOW_WEIGHTS)} to non-negative weights "
                f"with a positive sum; got {self.window_weights}"
            )
        for name in ("gamma_probability", "dihedral_probability", "crop_pad_probability", "resize_probability",
                     "jpeg_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if not 0 < self.gamma_range[0] <= self.gamma_range[1]:
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high; got {self.gamma_range}")
        if not self.jpeg_qualities or not all(1 <= int(q) <= 95 for q in self.jpeg_qualities):
            raise ValueError(f"jpeg_qualities must be qualities in 1..95; got {self.jpeg_qualities}")


def _gamma(rng: np.random.Generator, options: RenderOptions) -> float:
    if rng.random() >= options.gamma_probability:
        return 1.0
    lo, hi = options.gamma_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_render(hu: np.ndarray, rng: np.random.Generator, *, options: RenderOptions = RenderOptions()) -> tuple[np.ndarray, str]:
    """Render an HU slice (y, x) to uint8 in a randomly drawn window; returns (pixels, window kind)."""
    kinds = list(options.window_weights)
    weights = np.asarray([options.window_weights[k] for k in kinds], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    gamma = _gamma(rng, options)
    if kind == "minmax":
        return render_minmax(hu, gamma=gamma), kind
    if kind == "random":
        width = float(np.exp(rng.uniform(np.log(150.0), np.log(1500.0))))
        level = float(rng.uniform(-50.0, 200.0))
    elif kind == "wide":
        lo, hi = float(rng.uniform(-1100.0, -950.0)), float(rng.uniform(900.0, 3100.0))
        width, level = hi - lo, (hi + lo) / 2.0
    elif kind == "narrow":
        width = float(np.exp(rng.uniform(np.log(180.0), np.log(320.0))))
        level = float(rng.uniform(90.0, 160.0))
    else:
        width, level = NAMED_WINDOWS_HU[kind]
        width *= float(rng.uniform(0.85, 1.15))
        level += float(rng.uniform(-15.0, 15.0))
    return render_window(hu, width_hu=width, level_hu=level, gamma=gamma), kind


def apply_gamma(pixels: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma on an 8-bit picture (uint8 out): ``255 · (p / 255) ** gamma``."""
    if gamma == 1.0:
        return np.asarray(pixels, np.uint8)
    ramp = np.asarray(pixels, np.float32) / 255.0
    return np.rint(255.0 * ramp ** np.float32(gamma)).astype(np.uint8)


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Encode a greyscale uint8 picture as JPEG at ``quality`` (1–95) and decode it again."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8), mode="L").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _resize(pixels: np.ndarray, label: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    img = np.asarray(Image.fromarray(pixels, mode="L").resize((w, h), Image.BILINEAR, reducing_gap=None))
    lab = np.asarray(Image.fromarray(label, mode="L").resize((w, h), Image.NEAREST))
    return img.astype(np.uint8), lab.astype(np.uint8)


def _crop_or_pad(pixels: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = pixels.shape
    if rng.random() < 0.5:  # crop: keep 65–100 % of each side at a random offset
        ch, cw = (max(8, int(round(n * rng.uniform(0.65, 1.0)))) for n in (h, w))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        return pixels[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
    ph = [int(rng.integers(0, max(1, int(0.1 * h)) + 1)) for _ in range(2)]
    pw = [int(rng.integers(0, max(1, int(0.1 * w)) + 1)) for _ in range(2)]
    pad = ((ph[0], ph[1]), (pw[0], pw[1]))
    return np.pad(pixels, pad, constant_values=0), np.pad(label, pad, constant_values=0)


def degrade(
    pixels: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, options: RenderOptions = RenderOptions()
) -> tuple[np.ndarray, np.ndarray]:
    """What export and sharing do to a uint8 picture (y, x): rotations/flips, crop or pad,
    a smaller stored size, JPEG. Returns (uint8 pixels, uint8 labels) of the same new shape."""
    img = np.asarray(pixels, np.uint8)
    lab = np.asarray(label, np.uint8)
    if rng.random() < options.dihedral_probability:
        k = int(rng.integers(8 - 1)) + 1  # one of the 7 non-identity symmetries of the square
        img, lab = np.rot90(img, k % 4), np.rot90(lab, k % 4)
        if k >= 4:
            img, lab = img[:, ::-1], lab[:, ::-1]
    if rng.random() < options.crop_pad_probability:
        img, lab = _crop_or_pad(img, lab, rng)
    img, lab = np.ascontiguousarray(img), np.ascontiguousarray(lab)
    if rng.random() < options.resize_probability:
        f = float(rng.uniform(0.4, 1.0))
        img, lab = _resize(img, lab, (max(16, int(round(img.shape[0] * f))), max(16, int(round(img.shape[1] * f)))))
    if rng.random() < options.jpeg_probability:
        img = jpeg_roundtrip(img, int(options.jpeg_qualities[int(rng.integers(len(options.jpeg_qualities)))]))
    return img, lab
