"""Slice images for the study dashboard, rendered on the server.

A study's CT and label volumes are read once and kept in a small LRU cache (a few
studies; each entry is the CT plus its mask, e.g. ~125 MB for 512x512x240 int16; the
embedded job backend puts a finished job's own volumes there, so its first dashboard reads
neither file), then
each slice is windowed and overlaid by :func:`liverseg.reporting.render_slice_png`.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any, Callable

__all__ = ["VolumeCache", "load_study_volumes", "WINDOW_PRESETS"]

#: Window presets (width, level) in HU.
WINDOW_PRESETS = {"abdomen": (400.0, 40.0), "liver": (150.0, 60.0)}


def load_study_volumes(input_path: Path, mask_path: Path) -> tuple[Any, Any]:
    """The CT Volume (read as the job read it) and the label Volume on its grid."""
    import numpy as np
    import SimpleITK as sitk

    from liverseg.io import Volume, read_volume

    ct = read_volume(input_path)
    img = sitk.ReadImage(str(mask_path))
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    labels = Volume.from_sitk(img, spacing=ct.spacing, modality="SEG", is_hu=False)
    if labels.shape != ct.shape:
        raise ValueError(f"mask shape {labels.shape} differs from the scan's {ct.shape}")
    labels = labels.with_array(labels.array.astype(np.uint8))
    return ct, labels


class VolumeCache:
    """Least-recently-used cache of loaded study volumes (thread-safe).

    Args:
        size: studies kept in memory (>= 1).
        loader: ``key -> value`` called on a miss (outside the lock; one load per key at a time).
    """

    def __init__(self, *, size: int = 4, loader: Callable[[str], Any]) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        self.size = size
        self.loader = loader
        self._data: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._data:
                    return self._data[key]
            value = self.loader(key)
            with self._lock:
                self._keep(key, value)
                self._key_locks.pop(key, None)
            return value

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` for ``key`` (most recently used), as if it had just been loaded."""
        with self._lock:
            self._keep(key, value)

    def _keep(self, key: str, value: Any) -> None:
        """Store ``value`` as the most recently used entry and evict the oldest beyond ``size`` (lock held)."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._data
