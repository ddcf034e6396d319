"""Canonical voxel orientation: the networks see every scan the way DICOM stores an axial series.

The bundled models were trained on axial DICOM series whose arrays run (z → superior,
y → posterior, x → patient's left), i.e. an identity ITK direction in LPS. A NIfTI written
in RAS order (x → right, y → anterior, as many tools write it) holds the same anatomy
mirrored twice; a sagittal or coronal acquisition holds it transposed. Networks are not
invariant to that, so the Predictor turns every 3D volume into this canonical order first
(axis permutation and flips only, chosen from the direction matrix: no resampling) and turns
its answer back, so masks still lie on the input's own grid.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from liverseg.io.volume import Volume

__all__ = ["Reorientation"]


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """A permutation and flips of the three spatial (z, y, x) axes.

    ``perm[a]`` is the source array axis that becomes canonical axis ``a``; ``flip[a]``
    says whether canonical axis ``a`` is reversed after the permutation.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    @classmethod
    def from_direction(cls, direction: np.ndarray | Sequence[Sequence[float]]) -> "Reorientation":
        """The reorientation that makes ``direction`` (ITK, LPS, columns = x, y, z index axes) closest to identity.

        Each index axis goes to the world axis it is most aligned with (oblique scans: the
        nearest one). A direction where two index axes share a world axis (45° obliques)
        gives the identity.
        """
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        perm = [-1, -1, -1]
        flip = [False, False, False]
        for c in range(3):  # ITK index axis c (x, y, z) is array axis 2 - c
            w = int(np.argmax(np.abs(d[:, c])))
            perm[2 - w] = 2 - c
            flip[2 - w] = bool(d[w, c] < 0)
        if sorted(perm) != [0, 1, 2]:
            return cls()
        return cls(perm=tuple(perm), flip=tuple(flip))  # type: ignore[arg-type]

    def _axes(self, ndim: int) -> tuple[int, tuple[int, ...]]:
        lead = ndim - 3
        if lead < 0:
            raise ValueError(f"expected an array whose last three axes are (z, y, x); got {ndim} dimensions")
        return lead, tuple(lead + a for a, f in enumerate(self.flip) if f)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source → canonical, on the last three axes (leading axes, e.g. channels, untouched)."""
        lead, flips = self._axes(array.ndim)
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        return np.ascontiguousarray(np.flip(out, flips) if flips else out)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Canonical → source, on the last three axes."""
        lead, flips = self._axes(array.ndim)
        out = np.flip(array, flips) if flips else array
        inverse = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(out, tuple(range(lead)) + tuple(lead + int(i) for i in inverse)))

    def apply_volume(self, volume: Volume) -> Volume:
        """``volume`` in canonical order, with its geometry carried along (same world positions)."""
        d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(volume.origin, dtype=float)
        spacing_zyx = volume.spacing
        new_dir = np.zeros((3, 3))
        for a in range(3):
            src = self.perm[a]  # source array axis; ITK index 2 - src
            col = d[:, 2 - src].copy()
            if self.flip[a]:
                n = volume.array.shape[src]
                step = spacing_zyx[src] if spacing_zyx is not None else 1.0
                origin = origin + (n - 1) * step * col
                col = -col
            new_dir[:, 2 - a] = col
        spacing = tuple(spacing_zyx[p] for p in self.perm) if spacing_zyx is not None else None
        return dataclasses.replace(
            volume, array=self.apply(volume.array), spacing=spacing, origin=tuple(origin), direction=new_dir,
            metadata=dict(volume.metadata),
        )

    def invert_roi(self, roi: Sequence[tuple[int, int]], canonical_shape: Sequence[int]) -> list[tuple[int, int]]:
        """A canonical (start, stop) box per axis, as the same box on the source axes."""
        out: list[tuple[int, int]] = [(0, 0)] * 3
        for a, (start, stop) in enumerate(roi):
            if self.flip[a]:
                start, stop = canonical_shape[a] - stop, canonical_shape[a] - start
            out[self.perm[a]] = (int(start), int(stop))
        return out
