"""The :class:`Plan`: every number preprocessing needs, saved with a model.

Like nnU-Net's plans: the target spacing, the HU clipping window and the z-score
statistics of the training foreground, and the patch and batch size. A Plan travels
in the model bundle's ``config.json`` so prediction preprocesses exactly as training did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

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
        input_kind: ``"hu"`` (the network sees clipped, z-scored HU) or ``"display"``
            (window-invariant 2D models: the network sees a 0..1 display image, 8-bit / 255;
            then ``clip_hu``, ``mean_hu`` and ``std_hu`` are in those 0..1 display units,
            not HU, see :mod:`liverseg.preprocessing.display`).
        display_window_hu: ``input_kind="display"`` only: (width, level) in HU in which a
            slice that has HU is rendered to 8 bits before the network (e.g. (400, 40)).

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
    input_kind: Literal["hu", "display"] = "hu"
    display_window_hu: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.input_kind not in ("hu", "display"):
            raise ValueError(f"input_kind must be 'hu' or 'display'; got {self.input_kind!r}")
        if self.input_kind == "display":
            if self.display_window_hu is None or len(self.display_window_hu) != 2 or not float(self.display_window_hu[0]) > 0:
                raise ValueError(
                    "a display plan needs display_window_hu = (width, level) in HU with width > 0, "
                    f"e.g. (400, 40); got {self.display_window_hu}"
                )
            object.__setattr__(self, "display_window_hu", tuple(float(v) for v in self.display_window_hu))
        elif self.display_window_hu is not None:
            raise ValueError("display_window_hu is only for input_kind='display'; leave it out of an HU plan")
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

    def model_input(self, array: np.ndarray, *, is_hu: bool = True) -> np.ndarray:
        """What the network sees (float32): HU plans :meth:`normalize` HU; display plans take
        8-bit display values (``is_hu=False``: ``p / 255``) or render HU in
        ``display_window_hu`` to 8 bits first (``is_hu=True``), then normalise in display units.
        """
        if self.input_kind == "hu":
            return self.normalize(array)
        from liverseg.preprocessing.display import display_from_8bit, render_window

        pixels = array
        if is_hu:
            width, level = self.display_window_hu  # type: ignore[misc]
            pixels = render_window(array, width_hu=width, level_hu=level)
        return self.normalize(display_from_8bit(pixels))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spacing_mm"] = list(self.spacing_mm) if self.spacing_mm is not None else None
        d["clip_hu"] = list(self.clip_hu)
        d["patch_size"] = list(self.patch_size)
        if self.input_kind == "hu":  # HU plans keep the keys older bundles have
            del d["input_kind"], d["display_window_hu"]
        else:
            d["display_window_hu"] = list(self.display_window_hu)  # type: ignore[arg-type]
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
        if d.get("display_window_hu") is not None:
            d["display_window_hu"] = tuple(d["display_window_hu"])
        return cls(**d)
