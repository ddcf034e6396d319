"""Gaussian-weighted sliding-window inference: the same windows, weights and sums as MONAI's
``monai.inferers.sliding_window_inference(..., mode="gaussian", padding_mode="constant")``.

Why not MONAI's function itself: importing any part of MONAI runs its package ``__init__``,
which imports every MONAI submodule (scipy.signal, matplotlib, scikit-image, …). On the
2-core workplace CPU that took 4.5–10 s, as long as or longer than the network on a whole CT
(``docs/speed_profile.md``), and a cold ``liverseg predict`` pays it every time. This module
is the part of that function the Predictor uses, written after MONAI 1.6's code (windows from
``dense_patch_slices``, the importance map of ``compute_importance_map``, accumulate
``output · w`` and ``Σ w``, divide); ``tests/test_sliding_window.py`` checks it against MONAI.
Training and validation still use MONAI.

>>> import torch
>>> out = sliding_window_inference(torch.zeros(1, 1, 10, 12), (8, 8), lambda x: x + 1, overlap=0.5)
>>> tuple(out.shape), float(out.max())
((1, 1, 10, 12), 1.0)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["gaussian_importance_map", "sliding_window_inference", "window_slices"]


def window_slices(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows (index slices) that cover ``image_size``, in MONAI's order (last axis fastest).

    ``image_size`` must be at least ``roi_size`` on every axis (pad first). The step between
    windows is ``int(roi · (1 − overlap))`` (at least 1; the whole axis when the window equals
    it); the last window on an axis is moved back to end at the image's edge.

    >>> [s[0] for s in window_slices((10,), (4,), 0.5)]
    [slice(0, 4, None), slice(2, 6, None), slice(4, 8, None), slice(6, 10, None)]
    """
    if len(image_size) != len(roi_size):
        raise ValueError(f"image_size {tuple(image_size)} and roi_size {tuple(roi_size)} differ in length")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1); got {overlap}")
    starts: list[list[int]] = []
    for n, r in zip(image_size, roi_size):
        r = min(int(r), int(n))
        step = int(r) if r == n else max(int(r * (1 - overlap)), 1)
        count = next((d for d in range(int(math.ceil(n / step))) if d * step + r >= n), 0) + 1
        starts.append([d * step - max(d * step + r - n, 0) for d in range(count)])
    sizes = [min(int(r), int(n)) for n, r in zip(image_size, roi_size)]
    out: list[tuple[slice, ...]] = [()]
    for axis_starts, size in zip(starts, sizes):
        out = [prefix + (slice(s, s + size),) for prefix in out for s in axis_starts]
    return out


def gaussian_importance_map(patch_size: Sequence[int], *, sigma_scale: float = 0.125,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Gaussian window weights (float32, ``patch_size``): σ = ``sigma_scale`` × the window's side
    per axis, peak 1, clamped below at its smallest value (and at least 1e-3), as MONAI's.
    """
    weights: torch.Tensor | None = None
    for i, n in enumerate(patch_size):
        x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float, device=device)
        x = torch.exp(x**2 / (-2 * (n * sigma_scale) ** 2))
        weights = x if weights is None else weights.unsqueeze(-1) * x[(None,) * i]
    assert weights is not None
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights.to(torch.float), min=floor)


def sliding_window_inference(
    inputs: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    cval: float = 0.0,
) -> torch.Tensor:
    """Run ``predictor`` on overlapping windows of ``inputs`` and blend them with Gaussian weights.

    Args:
        inputs: (B, C, *spatial) tensor (2 or 3 spatial axes).
        roi_size: the window (the network's patch), one size per spatial axis.
        predictor: window batch (N, C, *roi_size) → output (N, K, *roi_size) of the same size.
        overlap: fraction (0 ≤ overlap < 1) by which neighbouring windows overlap.
        sw_batch_size: windows per ``predictor`` call.
        cval: value padded around an image smaller than the window (then cropped off again).

    Returns:
        (B, K, *spatial) float tensor: Σ output · w / Σ w over the windows covering each voxel.
    """
    nd = inputs.ndim - 2
    if len(roi_size) != nd:
        raise ValueError(f"inputs have {nd} spatial axes but roi_size is {tuple(roi_size)}")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be at least 1; got {sw_batch_size}")
    batch, _, *size = inputs.shape
    roi = [int(r) for r in roi_size]
    pad: list[int] = []  # F.pad order: last axis first
    for k in range(nd - 1, -1, -1):
        diff = max(roi[k] - size[k], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        inputs = F.pad(inputs, pad=pad, mode="constant", value=cval)
    image = list(inputs.shape[2:])
    slices = window_slices(image, roi, overlap)
    weight = gaussian_importance_map([min(r, n) for r, n in zip(roi, image)], device=inputs.device)
    weight = weight.to(inputs.dtype)[None, None]
    windows = [(b, s) for b in range(batch) for s in slices]
    output: torch.Tensor | None = None
    count: torch.Tensor | None = None
    for first in range(0, len(windows), int(sw_batch_size)):
        group = windows[first: first + int(sw_batch_size)]
        data = torch.cat([inputs[(slice(b, b + 1), slice(None), *s)] for b, s in group])
        out = predictor(data)
        if tuple(out.shape[2:]) != tuple(data.shape[2:]):
            raise ValueError(f"the predictor returned windows of {tuple(out.shape[2:])}, expected {tuple(data.shape[2:])}")
        if output is None:
            output = torch.zeros([batch, out.shape[1], *image], dtype=inputs.dtype, device=inputs.device)
            count = torch.zeros([1, 1, *image], dtype=inputs.dtype, device=inputs.device)
            for s in slices:
                count[(slice(None), slice(None), *s)] += weight
        out = out.to(inputs.dtype) * weight
        for p, (b, s) in zip(out, group):
            output[(slice(b, b + 1), slice(None), *s)] += p
    assert output is not None and count is not None
    output /= count
    if any(pad):
        crop = [slice(pad[2 * (nd - 1 - k)], pad[2 * (nd - 1 - k)] + size[k]) for k in range(nd)]
        output = output[(slice(None), slice(None), *crop)]
    return output
