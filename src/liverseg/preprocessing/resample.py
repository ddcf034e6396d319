"""Resampling between voxel grids (torch interpolation: fast on CPU, no SimpleITK round trip)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resampled_shape", "resample_array", "resample_to_shape", "resize_slices"]


def resampled_shape(shape: Sequence[int], spacing_from: Sequence[float], spacing_to: Sequence[float]) -> tuple[int, ...]:
    """Shape of an array of ``shape`` voxels at ``spacing_from`` mm resampled to ``spacing_to`` mm.

    >>> resampled_shape((100, 512, 512), (1.6, 0.74, 0.74), (2.5, 1.5, 1.5))
    (64, 253, 253)
    """
    return tuple(max(1, int(round(n * a / b))) for n, a, b in zip(shape, spacing_from, spacing_to))


def resample_to_shape(array: np.ndarray | torch.Tensor, shape: Sequence[int], *, order: int = 1) -> np.ndarray | torch.Tensor:
    """Resample a (D, H, W) or (C, D, H, W) array to the spatial ``shape``.

    Args:
        array: image (channels first when 4D); numpy in, numpy out; torch in, torch out.
        shape: target spatial size (D, H, W) in voxels.
        order: 0 nearest (labels), 1 (tri)linear (images, probabilities).
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear); got {order}")
    is_numpy = isinstance(array, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
    squeeze = t.ndim == 3
    if squeeze:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(f"expected a (D, H, W) or (C, D, H, W) array; got shape {tuple(t.shape)}")
    shape = tuple(int(s) for s in shape)
    if tuple(t.shape[1:]) == shape:
        out = t
    else:
        dtype = t.dtype
        src = t[None].float()
        if order == 0:
            out = F.interpolate(src, size=shape, mode="nearest-exact")[0].to(dtype)
        else:
            out = F.interpolate(src, size=shape, mode="trilinear", align_corners=False)[0]
            if not dtype.is_floating_point:
                out = out.round().to(dtype)
    if squeeze:
        out = out[0]
    return out.numpy() if is_numpy else out


def resample_array(
    array: np.ndarray, spacing_from: Sequence[float], spacing_to: Sequence[float], *, order: int = 1
) -> np.ndarray:
    """Resample a (D, H, W) or (C, D, H, W) array from ``spacing_from`` to ``spacing_to`` (mm, z, y, x)."""
    spatial = array.shape[-3:]
    return resample_to_shape(array, resampled_shape(spatial, spacing_from, spacing_to), order=order)


def resize_slices(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (B, C, H, W) slices to ``size`` (H, W) pixels the way the 2D models see them.

    Bilinear, ``align_corners=False``, antialiased when any side shrinks. This is the one
    definition of the 2D convention: training (``PatchDataset``), validation and the
    Predictor all resize a whole axial slice to the plan's patch with it, and resize the
    network's output back to the slice with it.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    down = any(a > b for a, b in zip(x.shape[2:], size))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)
