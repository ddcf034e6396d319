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


def _draw_panel(ax, ct: Volume, labels: Volume, z: int, title: str, analysis: "Analysis", *, opacity: float) -> None:
    tf = display_transform(ct.direction)
    rgb = render_slice_rgb(ct, labels, z, opacity=opacity)
    h, w = rgb.shape[:2]
    pmm = _pixel_mm(ct, tf)
    sy, sx = pmm if pmm is not None else (1.0, 1.0)
    ax.imshow(rgb, extent=(-0.5 * sx, (w - 0.5) * sx, (h - 0.5) * sy, -0.5 * sy), interpolation="nearest")
    ax.set_title(f"{title} (slice {z + 1} of {ct.shape[0]})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    shape_yx = (labels.shape[1], labels.shape[2])
    for les in analysis.lesions:
        if les.diameter_slice != z:
            continue
        (y0, x0), (y1, x1) = (_orient_point(p, shape_yx, tf) for p in les.long_axis_endpoints_px)
        ax.plot([x0 * sx, x1 * sx], [y0 * sy, y1 * sy], color="yellow", lw=1.2)
        if les.short_axis_endpoints_px is not None:
            (v0, u0), (v1, u1) = (_orient_point(p, shape_yx, tf) for p in les.short_axis_endpoints_px)
            ax.plot([u0 * sx, u1 * sx], [v0 * sy, v1 * sy], color="cyan", lw=1.0)
        txt = f"L{les.id} {_size_text(les.longest_axial_diameter_mm, les.longest_axial_diameter_px)}"
        ax.annotate(
            txt,
            xy=(max(x0, x1) * sx, min(y0, y1) * sy),
            xytext=(6, -6),
            textcoords="offset points",
            color="yellow",
            fontsize=8,
            fontweight="bold",
            bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.5, lw=0),
        )
    # orientation letters (radiological: patient's right on the left)
    ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="white", fontsize=8, va="center")
    ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="white", fontsize=8, va="center")
    if pmm is not None:
        _scale_bar(ax, width_mm=w * sx)


def _scale_bar(ax, *, width_mm: float) -> None:
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    nice = [5, 10, 20, 25, 50, 100, 200]
    length = max([n for n in nice if n <= width_mm / 4] or [nice[0]])
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        f"{length} mm",
        "lower right",
        pad=0.4,
        color="white",
        frameon=False,
        size_vertical=max(width_mm / 150, 0.5),
        fontproperties=FontProperties(size=8),
    )
    ax.add_artist(bar)


def _legend(fig) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=np.asarray(LIVER_RGB) / 255, label="liver (incl. tumor)"),
        Patch(color=np.asarray(TUMOR_RGB) / 255, label="tumor"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)


def write_overlay_png(
    path: str | Path,
    ct: Volume,
    labels: Volume,
    analysis: "Analysis",
    *,
    opacity: float = 0.35,
    dpi: int = 110,
) -> Path:
    """overlay.png: axial slices through the largest lesions and the liver's centre.

    Lesions are labelled ``L<id>`` with their longest diameter (yellow line) and short axis
    (cyan); a scale bar in mm is drawn when the spacing is known.
    """
    plt = _mpl()
    slices = overlay_slices(labels, analysis)
    n = len(slices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 4.0), squeeze=False, facecolor="black")
    for ax, (z, title) in zip(axes[0], slices):
        _draw_panel(ax, ct, labels, z, title, analysis, opacity=opacity)
        ax.title.set_color("white")
    _legend(fig)
    for t in fig.legends[0].get_texts():
        t.set_color("white")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="black")
    plt.close(fig)
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
    canvas.save(path, format="PNG", compress_level=6)
    return path
