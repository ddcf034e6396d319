"""Synthetic liver tumors, after Hu et al., "Label-Free Liver Tumor Segmentation" (CVPR 2023).

Real tumor labels are scarce; Hu et al. showed that a model trained on healthy livers with
realistic synthetic lesions segments real ones nearly as well. The recipe, re-implemented
here from the paper's description:

1. **Location**: a random liver voxel whose lesion would not swallow vessels (bright
   voxels well above the local liver intensity) and would lie mostly (80 %) inside the
   liver; a few draws, the best kept, none if all would swallow vessels.
2. **Shape**: an ellipsoid with random axes and orientation, distorted by a smooth random
   displacement field (elastic deformation), kept inside the liver.
3. **Texture**: Gaussian noise upscaled from a coarse grid (smooth blotches), added to a
   lesion density mostly *below* the liver's (hypodense: metastases, cysts, HCC in the
   portal phase) and sometimes above it (hyperdense).
4. **Edge**: the mask is blurred with a Gaussian and the lesion blended into the liver
   with it, so tiny lesions fade into partial-volume blobs; an optional brighter rim
   (capsule / rim enhancement) and an optional mass effect (the surrounding liver pushed
   outwards).

Sizes are drawn log-uniformly between ``radius_mm`` bounds (3 mm to 60 mm diameter by
default), so small lesions, which models miss most, are common.

Labels: voxels where the blended lesion dominates (alpha > 0.5) become 2; only liver
voxels are touched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = ["SyntheticTumors", "TumorInfo"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TumorInfo:
    """What :meth:`SyntheticTumors.generate` placed: centre (voxel index), radius (mm) drawn,
    voxel count labelled 2, equivalent diameter (mm), and the lesion's HU shift from the liver."""

    centre: tuple[int, ...]
    radius_mm: float
    n_voxels: int
    diameter_mm: float
    delta_hu: float


def _upscale(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(Tri)linear upscaling of a coarse 3D grid (or a stack of them: (C, ...)) to ``shape``."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))
    stacked = t.ndim == 4
    t = t if stacked else t[None]
    # size-1 axes stay size 1 (a single slice)
    out = F.interpolate(t[None], size=tuple(int(n) for n in shape), mode="trilinear", align_corners=True)[0]
    return (out if stacked else out[0]).numpy()


def _sigma_vox(sigma_mm: float, spacing: Sequence[float], shape: Sequence[int]) -> tuple[float, ...]:
    return tuple(0.0 if n == 1 else sigma_mm / s for s, n in zip(spacing, shape))


class SyntheticTumors:
    """Paint synthetic tumors into the liver of a CT (HU) and label them 2.

    Args:
        probability: chance that a call paints any tumor (``force=True`` overrides).
        max_count: at most this many tumors per call (1 .. max_count, fewer more likely).
        radius_mm: (smallest, largest) mean radius in mm, drawn log-uniformly.
        hypodense_probability: share of lesions darker than the liver (the rest brighter).
        hypo_delta_hu: (min, max) HU by which a hypodense lesion is darker than the liver.
        hyper_delta_hu: (min, max) HU by which a hyperdense lesion is brighter.
        texture_std_hu: (min, max) standard deviation of the lesion's texture in HU.
        texture_scale_mm: (min, max) grain size of the texture in mm.
        edge_sigma_mm: (min, max) Gaussian blur of the lesion's edge in mm (at most 0.3 x radius).
        distortion: displacement amplitude of the shape as a fraction of the radius.
        vessel_delta_hu: voxels brighter than the local liver median by this much are vessels.
        capsule_probability: chance of a brighter rim around a hypodense lesion.
        mass_effect_probability: chance of pushing the surrounding liver outwards.
        min_lesion_hu: lesion density floor in HU (a hypodense lesion stays above water-ish).

    Example (``image`` in HU, ``label`` 0/1/2, ``spacing`` in mm (z, y, x)):

    >>> synth = SyntheticTumors(probability=1.0, radius_mm=(3.0, 10.0))
    >>> image2, label2 = synth(image, label, (2.5, 1.5, 1.5), np.random.default_rng(0))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        probability: float = 0.5,
        max_count: int = 3,
        radius_mm: tuple[float, float] = (1.5, 30.0),
        hypodense_probability: float = 0.9,
        hypo_delta_hu: tuple[float, float] = (30.0, 100.0),
        hyper_delta_hu: tuple[float, float] = (15.0, 50.0),
        texture_std_hu: tuple[float, float] = (3.0, 15.0),
        texture_scale_mm: tuple[float, float] = (2.0, 8.0),
        edge_sigma_mm: tuple[float, float] = (0.5, 2.0),
        distortion: float = 0.2,
        vessel_delta_hu: float = 40.0,
        capsule_probability: float = 0.15,
        mass_effect_probability: float = 0.2,
        min_lesion_hu: float = 0.0,
    ) -> None:
        def _range(name: str, v: tuple[float, float], lo: float = 0.0) -> tuple[float, float]:
            a, b = (float(x) for x in v)
            if not (lo <= a <= b and math.isfinite(b)):
                raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high; got {v}")
            return a, b

        for name, p in (
            ("probability", probability),
            ("hypodense_probability", hypodense_probability),
            ("capsule_probability", capsule_probability),
            ("mass_effect_probability", mass_effect_probability),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {p}")
        if int(max_count) < 1:
            raise ValueError(f"max_count must be at least 1; got {max_count}")
        self.probability = float(probability)
        self.max_count = int(max_count)
        self.radius_mm = _range("radius_mm", radius_mm)
        if self.radius_mm[0] <= 0:
            raise ValueError(f"radius_mm must be positive mm; got {radius_mm}")
        self.hypodense_probability = float(hypodense_probability)
        self.hypo_delta_hu = _range("hypo_delta_hu", hypo_delta_hu)
        self.hyper_delta_hu = _range("hyper_delta_hu", hyper_delta_hu)
        self.texture_std_hu = _range("texture_std_hu", texture_std_hu)
        self.texture_scale_mm = _range("texture_scale_mm", texture_scale_mm)
        if self.texture_scale_mm[0] <= 0:
            raise ValueError(f"texture_scale_mm must be positive; got {texture_scale_mm}")
        self.edge_sigma_mm = _range("edge_sigma_mm", edge_sigma_mm)
        if not 0.0 <= distortion < 1.0:
            raise ValueError(f"distortion must be in [0, 1); got {distortion}")
        self.distortion = float(distortion)
        self.vessel_delta_hu = float(vessel_delta_hu)
        self.capsule_probability = float(capsule_probability)
        self.mass_effect_probability = float(mass_effect_probability)
        self.min_lesion_hu = float(min_lesion_hu)

    def __repr__(self) -> str:
        return f"SyntheticTumors(probability={self.probability}, max_count={self.max_count}, radius_mm={self.radius_mm})"

    # ------------------------------------------------------------------ public

    def __call__(
        self,
        image_hu: np.ndarray,
        label: np.ndarray,
        spacing_mm: Sequence[float],
        rng: np.random.Generator,
        *,
        force: bool = False,
        near: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(image, label)`` with 0..``max_count`` synthetic tumors (new arrays; inputs untouched).

        Args:
            image_hu: (z, y, x) CT in HU (any numeric dtype; a float32 copy is returned).
            label: (z, y, x) labels, liver = 1 or 2; tumors are painted where label > 0.
            spacing_mm: voxel size (z, y, x) in mm (a single slice: z may be anything).
            rng: random generator (the result is a function of it).
            force: paint at least one tumor regardless of ``probability``.
            near: voxel index; the first tumor is centred on the liver voxel nearest a
                random point within a few mm of it (to put it into a training patch).
        """
        image, label, _ = self.generate(image_hu, label, spacing_mm, rng, force=force, near=near)
        return image, label

    def generate(
        self,
        image_hu: np.ndarray,
        label: np.ndarray,
        spacing_mm: Sequence[float],
        rng: np.random.Generator,
        *,
        force: bool = False,
        near: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[TumorInfo]]:
        """Like ``__call__`` and also the list of :class:`TumorInfo` placed."""
        image = np.array(image_hu, dtype=np.float32, copy=True)
        label = np.array(label, dtype=np.uint8, copy=True)
        if image.shape != label.shape or image.ndim != 3:
            raise ValueError(f"image and label must be 3D arrays of one shape; got {image.shape} and {label.shape}")
        spacing = tuple(float(s) for s in spacing_mm)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers (z, y, x); got {spacing_mm}")
        if not force and rng.random() >= self.probability:
            return image, label, []
        liver = label > 0
        if liver.sum() < 8:
            return image, label, []
        # fewer tumors are more likely: P(k) ~ 1/k
        weights = 1.0 / np.arange(1, self.max_count + 1)
        count = int(rng.choice(np.arange(1, self.max_count + 1), p=weights / weights.sum()))
        placed: list[TumorInfo] = []
        coords: np.ndarray | None = None
        for i in range(count):
            if near is None or i > 0:
                coords = np.argwhere(label > 0) if coords is None else coords
            info = self._one(image, label, spacing, rng, coords=coords, near=near if i == 0 else None)
            if info is not None:
                placed.append(info)
        return image, label, placed

    # ------------------------------------------------------------------ internals

    def _draw_radius(self, rng: np.random.Generator) -> float:
        lo, hi = self.radius_mm
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def _one(
        self,
        image: np.ndarray,
        label: np.ndarray,
        spacing: tuple[float, float, float],
        rng: np.random.Generator,
        *,
        coords: np.ndarray | None,
        near: Sequence[int] | None,
    ) -> TumorInfo | None:
        liver = label > 0
        radius = self._draw_radius(rng)
        sp = np.asarray(spacing)
        shape = np.asarray(image.shape)
        best: tuple[float, Any] | None = None
        for attempt in range(6):
            if near is not None:
                jitter = rng.normal(0.0, 0.25 * radius + 2.0, size=3) / sp
                target = np.clip(np.asarray(near, float) + jitter, 0, shape - 1)
                centre = self._nearest_liver(liver, target)
                if centre is None:
                    return None
            else:
                assert coords is not None
                centre = coords[int(rng.integers(len(coords)))]
            cand = self._candidate(image, label, spacing, centre, radius, rng)
            if cand is None:
                continue
            # prefer lesions clear of vessels and mostly inside the liver (not cut flat by its edge)
            score = cand["vessel_frac"] + 0.5 * max(0.0, 0.8 - cand["inside"])
            if best is None or score < best[0]:
                best = (score, cand)
            if score < 0.02:
                break
            if cand["vessel_frac"] >= 0.02:
                radius = max(self.radius_mm[0], radius * 0.85)  # smaller lesions fit between vessels
        if best is None or best[1]["vessel_frac"] > 0.1:
            return None
        return self._paint(image, label, spacing, best[1], rng)

    @staticmethod
    def _nearest_liver(liver: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        t = np.round(target).astype(int)
        r = 2
        while r < max(liver.shape) * 2:
            sl = tuple(slice(max(0, c - r), c + r + 1) for c in t)
            local = np.argwhere(liver[sl])
            if len(local):
                local = local + np.asarray([s.start for s in sl])
                return local[np.argmin(((local - target) ** 2).sum(1))]
            r *= 2
        return None

    def _candidate(
        self,
        image: np.ndarray,
        label: np.ndarray,
        spacing: tuple[float, float, float],
        centre: np.ndarray,
        radius: float,
        rng: np.random.Generator,
    ) -> dict[str, Any] | None:
        """Shape (soft mask alpha in a local box) for a lesion at ``centre``; None if nothing fits."""
        sp = np.asarray(spacing)
        axes = radius * rng.uniform(0.75, 1.25, size=3)
        # a soft edge, but never so soft that it washes a small lesion out
        edge_sigma = min(rng.uniform(*self.edge_sigma_mm), 0.3 * radius)
        half_mm = axes.max() * (1.0 + self.distortion) + 3.0 * edge_sigma + 2.0 * max(sp[1:])
        half = np.ceil(half_mm / sp).astype(int)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, image.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        bshape = tuple(int(b - a) for a, b in zip(lo, hi))
        grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, sp)], indexing="ij")
        pts = np.stack(grids, axis=-1)  # (..., 3) mm offsets from the centre
        # elastic distortion: a smooth random displacement field (coarse noise, upscaled)
        if self.distortion > 0:
            coarse = rng.normal(0.0, 1.0, size=(3, *[4 if n > 1 else 1 for n in bshape])).astype(np.float32)
            disp = np.moveaxis(_upscale(coarse, bshape), 0, -1)
            pts = pts + disp * (self.distortion * radius)
        rot = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        local = pts @ rot.T
        q = ((local / axes) ** 2).sum(-1)
        hard = (q <= 1.0).astype(np.float32)
        if hard.sum() == 0:  # smaller than a voxel: keep the centre voxel
            hard[tuple(np.clip(centre - lo, 0, np.asarray(bshape) - 1))] = 1.0
        alpha = ndimage.gaussian_filter(hard, _sigma_vox(edge_sigma, spacing, bshape), mode="constant")
        # blur can lower a tiny lesion's peak below 0.5: rescale so the core stays visible
        peak = float(alpha.max())
        if peak > 0:
            alpha = np.minimum(alpha / max(peak, 1e-3), 1.0) if peak < 0.6 else alpha
        liver_box = label[box] > 0
        alpha *= liver_box
        if (alpha > 0.5).sum() == 0:
            return None
        img_box = image[box]
        liver_vals = img_box[liver_box]
        liver_med = float(np.median(liver_vals))
        vessels = liver_box & (ndimage.uniform_filter(img_box, size=[min(3, n) for n in bshape]) > liver_med + self.vessel_delta_hu)
        core = alpha > 0.5
        vessel_frac = float(vessels[core].mean())
        inside = float(core.sum()) / max(float((hard > 0.5).sum()), 1.0)  # share of the shape inside the liver
        return {"inside": min(inside, 1.0), "box": box, "alpha": alpha, "core": core, "liver_med": liver_med, "radius": radius,
                "centre": tuple(int(c) for c in centre), "vessel_frac": vessel_frac, "lo": lo, "shape": bshape}

    def _paint(
        self,
        image: np.ndarray,
        label: np.ndarray,
        spacing: tuple[float, float, float],
        cand: dict[str, Any],
        rng: np.random.Generator,
    ) -> TumorInfo:
        box, alpha, bshape = cand["box"], cand["alpha"], cand["shape"]
        liver_med = cand["liver_med"]
        if rng.random() < self.hypodense_probability:
            delta = -rng.uniform(*self.hypo_delta_hu)
            delta = max(delta, min(0.0, self.min_lesion_hu - liver_med))  # not below the floor
        else:
            delta = rng.uniform(*self.hyper_delta_hu)
        # texture: coarse Gaussian noise, upscaled (smooth blotches), times a random std
        scale_mm = rng.uniform(*self.texture_scale_mm)
        coarse_shape = [max(2, int(math.ceil(n * s / scale_mm)) + 1) if n > 1 else 1 for n, s in zip(bshape, spacing)]
        noise = rng.normal(0.0, 1.0, size=coarse_shape).astype(np.float32)
        texture = _upscale(noise, bshape)
        texture = texture / max(float(texture.std()), 1e-3) * rng.uniform(*self.texture_std_hu)
        # some lesions are darker in their centre (necrosis) than at the edge
        shift = np.float32(delta) + texture
        if delta < 0 and rng.random() < 0.3:
            shift = shift + np.float32(0.3 * delta) * np.clip((alpha - 0.5) * 2.0, 0.0, 1.0)
        region = image[box]
        if rng.random() < self.mass_effect_probability and cand["radius"] > 4.0:
            warped = self._mass_effect(region, alpha, cand, spacing, rng)
            region = np.where(label[box] > 0, warped, region)  # the liver's outline stays put
        # blend: shift the liver's own intensities (keeps the scan's noise and grain)
        out = region + alpha * shift
        if delta < 0 and rng.random() < self.capsule_probability:
            rim = np.clip(4.0 * alpha * (1.0 - alpha), 0.0, 1.0)
            out = out + rim * np.float32(rng.uniform(10.0, 30.0)) * (label[box] > 0)
        image[box] = out
        lab_box = label[box]
        core = (alpha > 0.5) & (lab_box > 0)
        lab_box[core] = 2
        n = int(core.sum())
        vox_ml = float(np.prod(spacing))
        if bshape[0] == 1:  # one slice: equivalent circle diameter in the plane
            diameter = 2.0 * math.sqrt(n * spacing[1] * spacing[2] / math.pi)
        else:
            diameter = 2.0 * (3.0 * n * vox_ml / (4.0 * math.pi)) ** (1.0 / 3.0)
        return TumorInfo(cand["centre"], float(cand["radius"]), n, float(diameter), float(delta))

    def _mass_effect(
        self,
        region: np.ndarray,
        alpha: np.ndarray,
        cand: dict[str, Any],
        spacing: tuple[float, float, float],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Push the tissue around the lesion outwards (sample it from nearer the centre)."""
        c = np.asarray(cand["centre"]) - np.asarray(cand["lo"])
        sp = np.asarray(spacing)
        grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in region.shape], indexing="ij")
        off_mm = [(g - ci) * s for g, ci, s in zip(grids, c, sp)]
        r_mm = np.sqrt(sum(o * o for o in off_mm)) + 1e-3
        strength = rng.uniform(0.1, 0.3) * cand["radius"]
        push = strength * np.exp(-((r_mm / (1.5 * cand["radius"])) ** 2))  # mm inwards to sample from
        src = [g - (o / r_mm) * push / s if n > 1 else g for g, o, s, n in zip(grids, off_mm, sp, region.shape)]
        return ndimage.map_coordinates(region, src, order=1, mode="nearest").astype(np.float32)
