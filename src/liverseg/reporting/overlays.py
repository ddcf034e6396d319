"""Pictures to check a segmentation by eye: one slice with the mask, overlay.png, montage.png.

Slices are shown the radiological way (patient's right on the image's left, anterior at the
top) when the volume's direction says so; CT in an abdominal window (width 400, level 40 HU),
liver green, tumor red (filled with ``opacity`` and outlined).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from liverseg.io.volume import Volume

if TYPE_CHECKING:
    from liverseg.analysis import Analysis

__all__ = [
    "LIVER_RGB",
    "TUMOR_RGB",
    "overlay_slices",
    "render_slice_png",
    "render_slice_rgb",
    "write_montage_png",
    "write_overlay_png",
]

log = logging.getLogger(__name__)

LIVER_RGB = (40, 200, 60)
TUMOR_RGB = (235, 30, 30)
#: Abdominal soft-tissue window (width, level) in HU.
ABDOMEN_WINDOW = (400.0, 40.0)


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ display orientation


def display_transform(direction: np.ndarray) -> tuple[bool, bool, bool]:
    """``(transpose, flip_rows, flip_cols)`` that show an axial (y, x) slice radiologically.

    After the transform rows run anterior → posterior and columns patient right → left
    (LPS: +x is the patient's left, +y posterior). Identity direction needs nothing.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    # which world axis (L or P) each in-plane index axis (x = column 0, y = column 1) follows
    transpose = abs(d[0, 1]) > abs(d[0, 0])  # the y index axis runs left-right: swap
    if transpose:
        flip_cols = d[0, 1] < 0
        flip_rows = d[1, 0] < 0
    else:
        flip_cols = d[0, 0] < 0
        flip_rows = d[1, 1] < 0
    return bool(transpose), bool(flip_rows), bool(flip_cols)


def _orient(img: np.ndarray, tf: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, fr, fc = tf
    if transpose:
        img = np.swapaxes(img, 0, 1)
    if fr:
        img = img[::-1]
    if fc:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def _orient_point(yx: Sequence[float], shape_yx: tuple[int, int], tf: tuple[bool, bool, bool]) -> tuple[float, float]:
    """A (y, x) pixel position (in the volume's slice) in the displayed image."""
    y, x = float(yx[0]), float(yx[1])
    h, w = shape_yx
    transpose, fr, fc = tf
    if transpose:
        y, x = x, y
        h, w = w, h
    if fr:
        y = h - 1 - y
    if fc:
        x = w - 1 - x
    return y, x


def _pixel_mm(vol: Volume, tf: tuple[bool, bool, bool]) -> tuple[float, float] | None:
    if vol.spacing is None:
        return None
    sy, sx = vol.spacing[1], vol.spacing[2]
    return (sx, sy) if tf[0] else (sy, sx)


# ------------------------------------------------------------------ one slice


def _grey(ct: Volume, z: int, window: tuple[float, float]) -> np.ndarray:
    img = np.asarray(ct.array[z], dtype=np.float32)
    if ct.is_hu:
        width, level = float(window[0]), float(window[1])
        lo = level - width / 2.0
        g = (img - lo) / width
    else:  # an 8-bit PNG/JPEG already windowed: show it as it is
        top = 255.0 if img.max() <= 255 else float(img.max() or 1.0)
        g = img / top
    return (np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def render_slice_rgb(
    ct: Volume,
    labels: Volume | None,
    z: int,
    *,
    window: tuple[float, float] = ABDOMEN_WINDOW,
    opacity: float = 0.4,
    show_liver: bool = True,
    show_tumor: bool = True,
    outline: bool = True,
    orient: bool = True,
) -> np.ndarray:
    """Axial slice ``z`` as an (H, W, 3) uint8 RGB image with the mask blended in.

    Args:
        ct: the CT (HU; an 8-bit PNG slice is shown unwindowed).
        labels: label Volume on the same grid, or ``None`` for the CT alone.
        z: slice index (0-based).
        window: (width, level) in HU; (400, 40) is the abdominal window.
        opacity: fill opacity of the labels, 0 (outline only) to 1.
        show_liver, show_tumor: draw label 1 + 2 (liver) / label 2 (tumor).
        outline: draw each structure's outline at full opacity.
        orient: show the slice radiologically (see :func:`display_transform`).
    """
    if not 0 <= z < ct.shape[0]:
        raise ValueError(f"slice z={z} is outside the scan (0..{ct.shape[0] - 1})")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1]; got {opacity}")
    if len(window) != 2 or not window[0] > 0:
        raise ValueError(f"window must be (width > 0, level) in HU; got {window}")
    if labels is not None and labels.shape != ct.shape:
        raise ValueError(f"labels shape {labels.shape} differs from the CT's {ct.shape}")
    g = _grey(ct, z, window)
    rgb = np.repeat(g[..., None], 3, axis=2).astype(np.float32)
    if labels is not None:
        lab = np.asarray(labels.array[z])
        layers = []
        if show_liver:
            layers.append((lab >= 1, LIVER_RGB))
        if show_tumor:
            layers.append((lab == 2, TUMOR_RGB))
        for mask, colour in layers:
            if not mask.any():
                continue
            c = np.asarray(colour, np.float32)
            rgb[mask] = (1.0 - opacity) * rgb[mask] + opacity * c
            if outline:
                rgb[_outline(mask)] = c
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    return _orient(out, display_transform(ct.direction)) if orient else out


def render_slice_png(
    ct: Volume,
    labels: Volume | None,
    z: int,
    *,
    window: tuple[float, float] = ABDOMEN_WINDOW,
    opacity: float = 0.4,
    show_liver: bool = True,
    show_tumor: bool = True,
) -> bytes:
    """PNG bytes of :func:`render_slice_rgb` (for the web viewer), one pixel per voxel.

    >>> from liverseg.testing import phantom
    >>> ct, lab = phantom(shape=(8, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None),))
    >>> render_slice_png(ct, lab, 4)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    from PIL import Image

    rgb = render_slice_rgb(
        ct, labels, z, window=window, opacity=opacity, show_liver=show_liver, show_tumor=show_tumor
    )
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


# ------------------------------------------------------------------ overlay.png


def overlay_slices(labels: Volume, analysis: "Analysis", *, max_lesions: int = 3) -> list[tuple[int, str]]:
    """Slices for overlay.png: ``(z, title)`` through the largest lesions and the liver's centre."""
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    for les in analysis.lesions[:max_lesions]:
        if les.diameter_slice not in seen:
            seen.add(les.diameter_slice)
            out.append((les.diameter_slice, f"lesion {les.id}"))
    liver = np.asarray(labels.array) >= 1
    if liver.any():
        zc = int(round(float(ndimage.center_of_mass(liver.any(axis=(1, 2)))[0])))
        zc = min(max(zc, 0), labels.shape[0] - 1)
        if zc not in seen:
            out.append((zc, "liver centre"))
    if not out:
        out.append((labels.shape[0] // 2, "middle slice (no liver found)"))
    return sorted(out, key=lambda t: t[0])


def _size_text(value_mm: float | None, value_px: float | None) -> str:
    if value_mm is not None:
        return f"{value_mm:.1f} mm"
    if value_px is not None:
        return f"{value_px:.1f} px"
    return ""


def _nice_bar_mm(width_mm: float) -> int:
    """A scale bar length (mm) of at most a quarter of the image's width."""
    nice = [5, 10, 20, 25, 50, 100, 200]
    return max([n for n in nice if n <= width_mm / 4] or [nice[0]])


def write_overlay_png(
    path: str | Path,
    ct: Volume,
    labels: Volume,
    analysis: "Analysis",
    *,
    opacity: float = 0.35,
    panel_px: int = 396,
) -> Path:
    """overlay.png: axial slices through the largest lesions and the liver's centre.

    Lesions are labelled ``L<id>`` with their longest diameter (yellow line) and short axis
    (cyan); ``R`` / ``L`` mark the patient's sides and a scale bar in mm is drawn when the
    spacing is known; a legend below. Panels ``panel_px`` wide (height from the pixel
    spacing), on black. Drawn with Pillow: a matplotlib figure took 1–2.5 s for it.
    """
    from PIL import Image, ImageDraw

    if panel_px < 64:
        raise ValueError(f"panel_px must be >= 64; got {panel_px}")
    slices = overlay_slices(labels, analysis)
    tf = display_transform(ct.direction)
    pmm = _pixel_mm(ct, tf)
    sy, sx = pmm if pmm is not None else (1.0, 1.0)
    h, w = (ct.shape[2], ct.shape[1]) if tf[0] else (ct.shape[1], ct.shape[2])
    disp_w = int(panel_px)
    disp_h = max(1, int(round(disp_w * (h * sy) / (w * sx))))
    fx, fy = disp_w / w, disp_h / h  # display pixels per image pixel
    pad, title_h, legend_h = 6, 20, 26
    canvas = Image.new("RGB", (pad + len(slices) * (disp_w + pad), title_h + disp_h + legend_h + pad), (0, 0, 0))
    draw = ImageDraw.Draw(canvas, "RGBA")
    small, bold = _font(11), _font(12)
    shape_yx = (labels.shape[1], labels.shape[2])
    for n, (z, title) in enumerate(slices):
        x0, y0 = pad + n * (disp_w + pad), title_h
        img = Image.fromarray(render_slice_rgb(ct, labels, z, opacity=opacity))
        shrink = img.width > disp_w or img.height > disp_h
        canvas.paste(img.resize((disp_w, disp_h), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST), (x0, y0))
        caption = f"{title} (slice {z + 1} of {ct.shape[0]})"
        draw.text((x0 + (disp_w - draw.textlength(caption, font=small)) / 2, 3), caption, fill=(255, 255, 255), font=small)

        def at(p: Sequence[float]) -> tuple[float, float]:
            yy, xx = _orient_point(p, shape_yx, tf)
            return x0 + (xx + 0.5) * fx, y0 + (yy + 0.5) * fy

        for les in analysis.lesions:
            if les.diameter_slice != z:
                continue
            (ax0, ay0), (ax1, ay1) = (at(p) for p in les.long_axis_endpoints_px)
            draw.line([(ax0, ay0), (ax1, ay1)], fill=(255, 255, 0), width=2)
            if les.short_axis_endpoints_px is not None:
                (bx0, by0), (bx1, by1) = (at(p) for p in les.short_axis_endpoints_px)
                draw.line([(bx0, by0), (bx1, by1)], fill=(0, 255, 255), width=1)
            txt = f"L{les.id} {_size_text(les.longest_axial_diameter_mm, les.longest_axial_diameter_px)}"
            tx, ty = min(max(ax0, ax1) + 6, x0 + disp_w - 4), max(min(ay0, ay1) + 6, y0)
            box = draw.textbbox((tx, ty), txt, font=bold)
            draw.rounded_rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), radius=3, fill=(0, 0, 0, 128))
            draw.text((tx, ty), txt, fill=(255, 255, 0), font=bold)
        mid = y0 + disp_h / 2 - 6
        draw.text((x0 + 4, mid), "R", fill=(255, 255, 255), font=small)  # radiological: patient's right on the left
        draw.text((x0 + disp_w - 12, mid), "L", fill=(255, 255, 255), font=small)
        if pmm is not None:
            length = _nice_bar_mm(w * sx)
            bar = length / sx * fx
            bx1, by = x0 + disp_w - 10, y0 + disp_h - 22
            draw.rectangle((bx1 - bar, by, bx1, by + max(2, disp_h / 150)), fill=(255, 255, 255))
            label = f"{length} mm"
            draw.text((bx1 - bar / 2 - draw.textlength(label, font=small) / 2, by + 4), label, fill=(255, 255, 255),
                      font=small)
    # legend
    items = [(LIVER_RGB, "liver (incl. tumor)"), (TUMOR_RGB, "tumor")]
    widths = [14 + 6 + draw.textlength(t, font=small) for _, t in items]
    x = (canvas.width - (sum(widths) + 24 * (len(items) - 1))) / 2
    y = title_h + disp_h + 8
    for (colour, text), wdt in zip(items, widths):
        draw.rectangle((x, y, x + 14, y + 10), fill=tuple(colour))
        draw.text((x + 20, y - 2), text, fill=(255, 255, 255), font=small)
        x += wdt + 24
    path = Path(path)
    canvas.save(path, format="PNG", compress_level=3)  # faster and smaller than 6 on these pictures
    return path


def _font(size: int):
    """Pillow's bundled scalable font at ``size`` pixels (its bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def write_montage_png(
    path: str | Path,
    ct: Volume,
    labels: Volume,
    *,
    n_slices: int = 12,
    columns: int = 4,
    opacity: float = 0.35,
    tile_px: int = 234,
) -> Path:
    """montage.png: ``n_slices`` evenly spaced axial slices across the liver (or the scan).

    A grid of ``columns`` tiles, each ``tile_px`` wide (its height from the pixel spacing),
    titled "slice N" ("(tumor)" when the slice shows tumor), on black. Drawn with Pillow, not
    matplotlib: the figure machinery took ~4 s for this picture on the 2-core CPU.
    """
    from PIL import Image, ImageDraw

    if n_slices < 1 or columns < 1 or tile_px < 16:
        raise ValueError(f"n_slices and columns must be >= 1 and tile_px >= 16; got {n_slices}, {columns}, {tile_px}")
    lab = np.asarray(labels.array)
    zs_liver = np.flatnonzero((lab >= 1).any(axis=(1, 2)))
    lo, hi = (int(zs_liver[0]), int(zs_liver[-1])) if zs_liver.size else (0, lab.shape[0] - 1)
    zs = sorted(set(int(round(v)) for v in np.linspace(lo, hi, min(n_slices, hi - lo + 1))))
    cols = min(columns, len(zs))
    rows = int(np.ceil(len(zs) / cols))
    tf = display_transform(ct.direction)
    pmm = _pixel_mm(ct, tf) or (1.0, 1.0)
    h, w = (ct.shape[2], ct.shape[1]) if tf[0] else (ct.shape[1], ct.shape[2])
    tile_w = int(tile_px)
    tile_h = max(1, int(round(tile_w * (h * pmm[0]) / (w * pmm[1]))))
    pad, title_h = 4, 16
    canvas = Image.new("RGB", (pad + cols * (tile_w + pad), pad + rows * (title_h + tile_h + pad)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    for n, z in enumerate(zs):
        r, c = divmod(n, cols)
        x0, y0 = pad + c * (tile_w + pad), pad + r * (title_h + tile_h + pad)
        img = Image.fromarray(render_slice_rgb(ct, labels, z, opacity=opacity))
        shrink = img.width > tile_w or img.height > tile_h
        img = img.resize((tile_w, tile_h), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)
        canvas.paste(img, (x0, y0 + title_h))
        title = f"slice {z + 1}" + (" (tumor)" if (lab[z] == 2).any() else "")
        tw = draw.textlength(title, font=font)
        draw.text((x0 + (tile_w - tw) / 2, y0 + 1), title, fill=(255, 255, 255), font=font)
    path = Path(path)
    canvas.save(path, format="PNG", compress_level=3)  # faster and smaller than 6 on these pictures
    return path
