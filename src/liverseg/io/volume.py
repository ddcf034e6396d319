"""The :class:`Volume`: a CT (or label) array with the geometry to put it back on its grid."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Volume"]


@dataclasses.dataclass
class Volume:
    """An image on a physical grid.

    Conventions (shared by every module):

    * ``array`` is indexed (z, y, x); CT intensities are Hounsfield units.
    * ``spacing`` is the voxel size in mm as (z, y, x), or ``None`` when the file does
      not say it (PNG/JPEG slices): then nothing is reported in mm.
    * ``origin`` (mm) and ``direction`` follow ITK/SimpleITK (LPS world, origin as
      (x, y, z), ``direction`` a 3x3 matrix whose columns are the x, y, z index axes),
      so ``to_sitk``/``from_sitk`` are lossless and masks overlay in 3D Slicer.
    * A 2D slice is a Volume with one z-slice.

    >>> v = Volume(array=np.zeros((3, 4, 5), np.int16), spacing=(2.5, 0.8, 0.8))
    >>> v.shape, v.voxel_volume_ml
    ((3, 4, 5), 0.0016)
    """

    array: np.ndarray
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    modality: str = "CT"
    is_hu: bool = True
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (z, y, x); got shape {self.array.shape}")
        if self.spacing is not None:
            sp = tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"spacing must be three positive numbers in mm (z, y, x); got {self.spacing}")
            self.spacing = sp  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        """True for a single slice (one z-slice)."""
        return self.array.shape[0] == 1

    @property
    def voxel_volume_ml(self) -> float | None:
        """Volume of one voxel in mL, or ``None`` when the spacing is unknown."""
        if self.spacing is None:
            return None
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A new Volume on the same grid holding ``array`` (same shape), e.g. a label mask."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.array.shape}")
        fields = dict(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction.copy(),
            modality=self.modality,
            is_hu=self.is_hu,
            metadata=dict(self.metadata),
        )
        fields.update(changes)
        return Volume(array=array, **fields)

    def to_sitk(self) -> "Any":
        """This volume as a SimpleITK image (spacing 1 mm where unknown)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        sp = self.spacing if self.spacing is not None else (1.0, 1.0, 1.0)
        img.SetSpacing(tuple(float(s) for s in sp[::-1]))
        img.SetOrigin(tuple(self.origin))
        img.SetDirection(tuple(float(d) for d in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image: "Any", **fields: Any) -> "Volume":
        """A Volume from a 3D SimpleITK image (array copied as (z, y, x))."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D SimpleITK image; got {image.GetDimension()}D")
        arr = sitk.GetArrayFromImage(image)
        fields.setdefault("spacing", tuple(image.GetSpacing()[::-1]))
        return cls(
            array=arr,
            origin=tuple(image.GetOrigin()),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            **fields,
        )

    def affine_ras(self) -> np.ndarray:
        """The 4x4 voxel->world affine in NIfTI's RAS convention, for index order (x, y, z)."""
        sp = np.asarray(self.spacing if self.spacing is not None else (1.0, 1.0, 1.0))[::-1]
        lps = np.eye(4)
        lps[:3, :3] = self.direction @ np.diag(sp)
        lps[:3, 3] = self.origin
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ lps
