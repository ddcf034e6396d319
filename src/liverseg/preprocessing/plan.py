"""The :class:`Plan`: every number preprocessing needs, saved with a model.

Like nnU-Net's plans: the target spacing, the HU clipping window and the z-score
statistics of the training foreground, and the patch and batch size. A Plan travels
in the model bundle's ``config.json`` so prediction preprocesses exactly as training did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Preprocessing numbers for one network.

    Args:
        spacing_mm: target voxel size (z, y, x) in mm; ``None`` for 2D slices, which are
            used on their own pixel grid.
        clip_hu: (low, high) HU window applied before normalisation, e.g. the 0.5/99.5
            percentiles of the foreground (liver) intensities.
        mean_hu: mean HU of the clipped foreground, subtracted.
        std_hu: standard deviation (HU) of the clipped foreground, divided by.
        patch_size: network input size in voxels, (z, y, x) for 3D or (y, x) for 2D.
        batch_size: training batch size.

    >>> plan = Plan(spacing_mm=(2.5, 1.5, 1.5), clip_hu=(-100.0, 250.0), mean_hu=100.0, std_hu=50.0,
    ...             patch_size=(48, 96, 96))
    >>> float(plan.normalize(np.array([100.0]))[0])
    0.0
    """

    spacing_mm: tuple[float, float, float] | None
    clip_hu: tuple[float, float]
    mean_hu: float
    std_hu: float
    patch_size: tuple[int, ...]
    batch_size: int = 2

    def __post_init__(self) -> None:
        if self.spacing_mm is not None:
            sp = tuple(float(s) for s in self.spacing_mm)
            if len(sp) != 3 or min(sp) <= 0:
                raise ValueError(f"spacing_mm must be three positive numbers (z, y, x) in mm; got {self.spacing_mm}")
            object.__setattr__(self, "spacing_mm", sp)
        lo, hi = (float(v) for v in self.clip_hu)
        if not lo < hi:
            raise ValueError(f"clip_hu must be (low, high) with low < high; got {self.clip_hu}")
        object.__setattr__(self, "clip_hu", (lo, hi))
        if not float(self.std_hu) > 0:
            raise ValueError(f"std_hu must be positive; got {self.std_hu}")
        object.__setattr__(self, "mean_hu", float(self.mean_hu))
        object.__setattr__(self, "std_hu", float(self.std_hu))
        ps = tuple(int(p) for p in self.patch_size)
        if len(ps) not in (2, 3) or min(ps) < 1:
            raise ValueError(f"patch_size must be 2 or 3 positive sizes; got {self.patch_size}")
        object.__setattr__(self, "patch_size", ps)
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """Clip to ``clip_hu`` and z-score: returns float32."""
        out = np.clip(np.asarray(array, dtype=np.float32), *self.clip_hu)
        out -= np.float32(self.mean_hu)
        out /= np.float32(self.std_hu)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spacing_mm"] = list(self.spacing_mm) if self.spacing_mm is not None else None
        d["clip_hu"] = list(self.clip_hu)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown Plan fields {sorted(unknown)}; expected {sorted(fields)}")
        d = dict(d)
        if d.get("spacing_mm") is not None:
            d["spacing_mm"] = tuple(d["spacing_mm"])
        d["clip_hu"] = tuple(d["clip_hu"])
        d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)
