"""Data augmentation for training patches, built from MONAI transforms.

Two stages, each drawn from a caller-given ``numpy.random.Generator`` so a sample is
reproducible from (seed, epoch, index):

* :meth:`Augmenter.spatial` on the HU crop and its labels: rotation + scaling
  (``RandAffine``) or optional elastic deformation (``Rand3DElastic``/``Rand2DElastic``),
  which also cut the centre patch out of the slightly larger crop, then mirroring
  (``RandFlip``) along each axis;
* :meth:`Augmenter.contrast_phase` (optional) on the HU patch, with its labels: other
  contrast phases and scanners. Enhancing soft tissue (liver, spleen, vessels, kidneys) is
  scaled about 40 HU by a monotone, continuous curve (from near non-contrast to a bright
  arterial-like phase), the liver (with its lesions) is shifted against its neighbours
  through a smooth mask (fatty or poorly enhancing livers, no sharp edge at the label's
  outline for the network to learn), and the whole scan is offset by a few HU;
* :meth:`Augmenter.intensity` on the z-scored patch, nnU-Net's recipe: Gaussian noise,
  Gaussian blur, brightness, contrast (scaling about the mean), gamma and simulated low
  resolution (``RandSimulateLowResolution``).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

__all__ = ["Augmenter", "center_crop"]


def center_crop(array: np.ndarray | torch.Tensor, size: Sequence[int]) -> np.ndarray | torch.Tensor:
    """The centre ``size`` of the last ``len(size)`` axes (which must be at least that large)."""
    size = tuple(int(s) for s in size)
    sp = array.shape[-len(size):]
    if any(a < s for a, s in zip(sp, size)):
        raise ValueError(f"cannot crop {tuple(size)} out of {tuple(sp)}")
    sl = tuple(slice((a - s) // 2, (a - s) // 2 + s) for a, s in zip(sp, size))
    return array[(Ellipsis, *sl)]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class Augmenter:
    """Spatial and intensity augmentation of one patch.

    Args:
        patch_size: output size (z, y, x) or (y, x) in voxels.
        spatial_probability: chance of a rotation + scaling per sample.
        rotation_deg: largest rotation in degrees: (in the axial plane, out of it) for 3D;
            the first number for 2D.
        scale_range: (smallest, largest) zoom factor.
        elastic: also use elastic deformation (slower) ...
        elastic_probability: ... on this share of samples.
        mirror: flip each axis with probability 0.5.
        intensity: apply the intensity transforms.
        contrast_phase: enable :meth:`contrast_phase` (otherwise it returns its input).
        phase_probability: chance of the soft-tissue enhancement curve per sample.
        enhancement_scale: (lowest, highest) factor on soft-tissue HU above 40 HU; 0.35
            makes a portal-venous liver (~110 HU) and vessels (~180 HU) look nearly
            non-contrast (~65 / ~90 HU).
        liver_shift_probability: chance of shifting the liver against its surroundings ...
        liver_shift_hu: ... by a value drawn from this range (HU).
        global_shift_hu: largest offset of the whole patch (HU; scanner calibration).
        intensity_preset: ``"nnunet"`` (default): noise, blur, brightness, contrast, simulated
            low resolution and gamma (inverted too), nnU-Net's set; ``"light"``: only a random
            scale (``1 + U(-light_scale, light_scale)``, p 0.5) and shift (``U(-light_offset,
            light_offset)``, p 0.5) of the normalised image, the calibration loop's
            ``RandScaleIntensityd`` / ``RandShiftIntensityd``.
        light_scale: largest relative scale of the ``"light"`` preset.
        light_offset: largest shift of the ``"light"`` preset, in normalised units (z-score:
            HU / ``std_hu``; 0.35 at 130 HU is 10 % of a 450 HU window, the loop's 0.1 of 0..1).

    >>> aug = Augmenter(patch_size=(16, 32, 32))
    >>> aug.region_size
    (19, 42, 42)
    """

    def __init__(
        self,
        *,
        patch_size: Sequence[int],
        spatial_probability: float = 0.3,
        rotation_deg: tuple[float, float] = (15.0, 8.0),
        scale_range: tuple[float, float] = (0.85, 1.2),
        elastic: bool = False,
        elastic_probability: float = 0.2,
        mirror: bool = True,
        intensity: bool = True,
        contrast_phase: bool = False,
        phase_probability: float = 0.5,
        enhancement_scale: tuple[float, float] = (0.35, 1.3),
        liver_shift_probability: float = 0.3,
        liver_shift_hu: tuple[float, float] = (-45.0, 25.0),
        global_shift_hu: float = 20.0,
        intensity_preset: Literal["nnunet", "light"] = "nnunet",
        light_scale: float = 0.1,
        light_offset: float = 0.35,
    ) -> None:
        ps = tuple(int(p) for p in patch_size)
        if len(ps) not in (2, 3) or min(ps) < 1:
            raise ValueError(f"patch_size must be 2 or 3 positive sizes; got {patch_size}")
        for name, p in (("spatial_probability", spatial_probability), ("elastic_probability", elastic_probability),
                        ("phase_probability", phase_probability), ("liver_shift_probability", liver_shift_probability)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {p}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high; got {scale_range}")
        if intensity_preset not in ("nnunet", "light"):
            raise ValueError(f"intensity_preset must be 'nnunet' or 'light'; got {intensity_preset!r}")
        if not 0 <= light_scale < 1 or light_offset < 0:
            raise ValueError(f"light_scale must be in [0, 1) and light_offset >= 0; got {light_scale}, {light_offset}")
        self.patch_size = ps
        self.ndim = len(ps)
        self.intensity_preset = intensity_preset
        self.spatial_probability = float(spatial_probability)
        self.elastic = bool(elastic)
        self.elastic_probability = float(elastic_probability)
        self.mirror = bool(mirror)
        self.use_intensity = bool(intensity)
        if not 0 < enhancement_scale[0] <= enhancement_scale[1]:
            raise ValueError(f"enhancement_scale must be (low, high) with 0 < low <= high; got {enhancement_scale}")
        if not liver_shift_hu[0] <= liver_shift_hu[1] or global_shift_hu < 0:
            raise ValueError("liver_shift_hu must be (low, high) with low <= high and global_shift_hu >= 0 (HU)")
        self.use_contrast_phase = bool(contrast_phase)
        self.phase_probability = float(phase_probability)
        self.enhancement_scale = (float(enhancement_scale[0]), float(enhancement_scale[1]))
        self.liver_shift_probability = float(liver_shift_probability)
        self.liver_shift_hu = (float(liver_shift_hu[0]), float(liver_shift_hu[1]))
        self.global_shift_hu = float(global_shift_hu)
        rot_in, rot_out = (math.radians(r) for r in rotation_deg)
        keys = ["image", "label"]
        # MONAI's scale_range is added to 1 (a zoom factor of 1 + s; > 1 shows a smaller field)
        scale = (lo - 1.0, hi - 1.0)
        if self.ndim == 3:
            rotate = ((-rot_in, rot_in), (-rot_out, rot_out), (-rot_out, rot_out))
            scales = (scale, scale, scale)
        else:
            rotate = ((-rot_in, rot_in),)
            scales = (scale, scale)
        modes = ("bilinear", "nearest")
        pads = ("border", "zeros")
        self._affine = RandAffined(
            keys, prob=1.0, spatial_size=ps, rotate_range=rotate, scale_range=scales, mode=modes, padding_mode=pads
        )
        if self.ndim == 3:
            self._elastic = Rand3DElasticd(
                keys, sigma_range=(5.0, 8.0), magnitude_range=(50.0, 150.0), spatial_size=ps, prob=1.0,
                rotate_range=rotate, scale_range=scales, mode=modes, padding_mode=pads,
            )
        else:
            self._elastic = Rand2DElasticd(
                keys, spacing=(16, 16), magnitude_range=(0.5, 2.0), spatial_size=ps, prob=1.0,
                rotate_range=rotate, scale_range=scales, mode=modes, padding_mode=pads,
            )
        self._flips = Compose([RandFlipd(keys, prob=0.5, spatial_axis=ax) for ax in range(self.ndim)])
        if intensity_preset == "light":
            self._intensity = Compose(
                [
                    RandScaleIntensityd("image", factors=float(light_scale), prob=0.5),
                    RandShiftIntensityd("image", offsets=float(light_offset), prob=0.5),
                ]
            )
        else:
            smooth = {"sigma_x": (0.5, 1.0), "sigma_y": (0.5, 1.0), "sigma_z": (0.5, 1.0)}
            self._intensity = Compose(
                [
                    RandGaussianNoised("image", prob=0.1, std=0.1),
                    RandGaussianSmoothd("image", prob=0.2, **smooth),
                    RandScaleIntensityd("image", factors=0.25, prob=0.15),
                    RandScaleIntensityFixedMeand("image", factors=0.25, preserve_range=True, prob=0.15),
                    RandSimulateLowResolutiond(
                        "image", prob=0.25, zoom_range=(0.5, 1.0), upsample_mode="trilinear" if self.ndim == 3 else "bilinear"
                    ),
                    RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5), invert_image=True, retain_stats=True),
                    RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
                ]
            )

    @property
    def region_size(self) -> tuple[int, ...]:
        """Size of the crop to take before :meth:`spatial` (room for rotation and zoom-out)."""
        if self.ndim == 2:
            return self.patch_size
        z, y, x = self.patch_size
        return (int(math.ceil(z * 1.15)), int(math.ceil(y * 1.3)), int(math.ceil(x * 1.3)))

    def spatial(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate/scale (or deform) and mirror; returns the centre patch (float image, float label).

        Args:
            image: (1, *region) float32 (HU).
            label: (1, *region) float32 labels.
            rng: source of the random draws.
        """
        d = {"image": image, "label": label}
        r = rng.random()
        if self.elastic and r < self.elastic_probability:
            self._elastic.set_random_state(seed=int(rng.integers(2**31)))
            d = self._elastic(d)
        elif r < self.spatial_probability + (self.elastic_probability if self.elastic else 0.0):
            self._affine.set_random_state(seed=int(rng.integers(2**31)))
            d = self._affine(d)
        else:
            d = {k: center_crop(v, self.patch_size) if tuple(v.shape[1:]) != self.patch_size else v for k, v in d.items()}
        if self.mirror:
            self._flips.set_random_state(seed=int(rng.integers(2**31)))
            d = self._flips(d)
        return _plain(d["image"]), _plain(d["label"])

    def contrast_phase(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Another contrast phase / scanner, in HU: enhancement curve, liver shift, global offset.

        Args:
            image: (1, *patch) float32 HU.
            label: (1, *patch) labels (liver = label > 0, lesions included).
            rng: source of the random draws.

        The curve maps HU ``h`` to ``40 + (h - 40) · s`` between 40 and 350 HU and stays
        continuous and monotone outside (fat, air and bone keep their values; bone above
        350 HU is stretched back to its own range by 1000 HU), so no tissue changes order.

        >>> aug = Augmenter(patch_size=(4, 4, 4), contrast_phase=True, phase_probability=1.0,
        ...                 liver_shift_probability=0.0, global_shift_hu=0.0, enhancement_scale=(0.5, 0.5))
        >>> img = torch.tensor([-100.0, 40.0, 140.0, 350.0, 1000.0]).reshape(1, 5, 1, 1)
        >>> aug.contrast_phase(img, torch.zeros_like(img), np.random.default_rng(0)).flatten().tolist()
        [-100.0, 40.0, 90.0, 195.0, 1000.0]
        """
        if not self.use_contrast_phase:
            return image
        x = image.numpy().astype(np.float32, copy=True)
        if rng.random() < self.phase_probability:
            s = float(rng.uniform(*self.enhancement_scale))
            lo, hi, top = 40.0, 350.0, 1000.0
            knee = lo + (hi - lo) * s  # where 350 HU goes
            x = np.interp(x, [-2000.0, lo, hi, top, 4000.0], [-2000.0, lo, knee, top, 4000.0]).astype(np.float32)
            # np.interp clamps outside its knots: keep values beyond them as they were
            x = np.where(image.numpy() > 4000.0, image.numpy(), x)
        if rng.random() < self.liver_shift_probability:
            from scipy import ndimage

            liver = label.numpy()[0] > 0.5
            if liver.any():
                soft = ndimage.gaussian_filter(liver.astype(np.float32), sigma=1.5)
                x[0] += float(rng.uniform(*self.liver_shift_hu)) * soft
        if self.global_shift_hu > 0:
            x += float(rng.uniform(-self.global_shift_hu, self.global_shift_hu))
        return torch.from_numpy(x)

    def intensity(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The intensity preset on a z-scored (1, *patch) image: nnU-Net's noise, blur, brightness,
        contrast, low resolution and gamma, or the light scale + shift."""
        if not self.use_intensity:
            return image
        self._intensity.set_random_state(seed=int(rng.integers(2**31)))
        return _plain(self._intensity({"image": image})["image"]).float()
