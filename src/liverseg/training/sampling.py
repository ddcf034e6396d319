"""Training patches with foreground / tumor oversampling: :class:`PatchDataset`.

Per sample (index ``i`` of epoch ``e``, random state from ``(seed, e, i)`` so DataLoader
workers and DDP ranks with a ``DistributedSampler`` draw different, reproducible samples):

1. pick a case (uniformly) and a mode: centred on **tumor** (``tumor_fraction`` of samples;
   a real lesion, or a synthetic one painted there when the case has none and synthetic
   tumors are on), on **liver** (the rest of ``foreground_fraction``), on a liver **edge**
   (``edge_fraction``: a slice within ``edge_mm`` of the liver's first or last axial slice,
   inside or beyond it, where the dome meets the heart and the tip meets bowel and kidney),
   or **random**;
2. crop a slightly larger region around the centre (3D; 2D: the whole axial slice);
3. paint synthetic tumors (HU, liver voxels only, labels -> 2);
4. spatial augmentation (rotation/scaling/optional elastic, mirroring) which also cuts the
   centre patch (2D: the slice is first resized to the patch size);
5. ``plan.normalize`` (clip + z-score), then intensity augmentation.

Returns ``dict(image=float32 (1, *patch), label=int64 (1, *patch), tumor_annotated=bool,
synthetic=bool, case_index=int64)``.

Liver-only cases (``tumor_annotated=False``) keep ``tumor_annotated=False`` even when
synthetic tumors are painted into them (their real tumor status stays unknown), unless
``liver_only_synthetic_annotated=True`` says their livers are known to be tumor-free
(e.g. CHAOS, a healthy-organ challenge): then samples with synthetic tumors count as
tumor-annotated, as in Hu et al., who train on healthy livers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from liverseg.preprocessing import Plan, resize_slices
from liverseg.training.augment import Augmenter, center_crop
from liverseg.training.cache import CachedCase
from liverseg.training.synthetic_tumors import SyntheticTumors

__all__ = ["PatchDataset", "SampleSpec", "crop_padded"]

log = logging.getLogger(__name__)

#: HU used to pad crops that reach past the scan (air).
PAD_HU = -1024


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """Where a sample comes from: case index, mode (``"tumor"``, ``"synthetic"``, ``"liver"``,
    ``"edge"``, ``"random"``) and the centre voxel (z, y, x) in the cached case."""

    case_index: int
    mode: str
    centre: tuple[int, int, int]


def crop_padded(array: np.ndarray, centre: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """The ``size`` box of ``array`` centred on ``centre``, padded with ``pad_value`` outside it."""
    size = tuple(int(s) for s in size)
    start = [int(c) - s // 2 for c, s in zip(centre, size)]
    src, dst = [], []
    for st, s, n in zip(start, size, array.shape):
        a, b = max(st, 0), min(st + s, n)
        if b <= a:
            a = b = max(0, min(st, n))
        src.append(slice(a, b))
        dst.append(slice(a - st, a - st + (b - a)))
    out = np.full(size, pad_value, dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchDataset(torch.utils.data.Dataset):
    """Random training patches from cached cases, with tumor/liver oversampling and augmentation.

    Args:
        cases: from :func:`~liverseg.training.prepare_cache`.
        plan: ``patch_size`` (3 sides: 3D patches; 2: whole axial slices resized to it) and
            the intensity normalisation.
        samples_per_epoch: ``len(dataset)``.
        foreground_fraction: share of samples centred on liver or tumor.
        tumor_fraction: share of samples centred on tumor (part of ``foreground_fraction``),
            real or, where a case has none, synthetic.
        augment: apply spatial and intensity augmentation.
        synthetic_tumors: paint synthetic tumors (``None``: off).
        seed: base seed.
        elastic: add elastic deformation to the spatial augmentation (slower).
        mirror: mirror along each axis (with ``augment``).
        liver_only_synthetic_annotated: see the module docstring.
        liver_only_tumor_free: liver-only cases count as fully annotated (their livers hold
            no tumor), so every sample from them is supervised as liver vs tumor.
        contrast_phase: with ``augment``, change the contrast phase in HU before normalising
            (:meth:`~liverseg.training.augment.Augmenter.contrast_phase`).
        edge_fraction, edge_mm: see :class:`~liverseg.training.config.StageConfig`.
        augment_options: further keyword arguments of
            :class:`~liverseg.training.augment.Augmenter` (``spatial_probability``,
            ``rotation_deg``, ``scale_range``, ``intensity_preset``, ``light_scale``,
            ``light_offset``).

    >>> ds = PatchDataset(cached, plan=plan, samples_per_epoch=250,
    ...                   synthetic_tumors=SyntheticTumors())  # doctest: +SKIP
    >>> ds.set_epoch(3); ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 48, 128, 128])
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        *,
        plan: Plan,
        samples_per_epoch: int,
        foreground_fraction: float = 0.5,
        tumor_fraction: float = 0.34,
        augment: bool = True,
        synthetic_tumors: SyntheticTumors | None = None,
        seed: int = 0,
        elastic: bool = False,
        mirror: bool = True,
        liver_only_synthetic_annotated: bool = False,
        liver_only_tumor_free: bool = False,
        contrast_phase: bool = False,
        edge_fraction: float = 0.0,
        edge_mm: float = 25.0,
        augment_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one cached case")
        if int(samples_per_epoch) < 1:
            raise ValueError(f"samples_per_epoch must be at least 1; got {samples_per_epoch}")
        if not 0.0 <= tumor_fraction <= foreground_fraction <= 1.0:
            raise ValueError(
                "need 0 <= tumor_fraction <= foreground_fraction <= 1 (tumor-centred samples are part of the "
                f"foreground-centred ones); got tumor_fraction={tumor_fraction}, foreground_fraction={foreground_fraction}"
            )
        if not 0.0 <= edge_fraction <= 1.0 - foreground_fraction + 1e-9 or edge_mm <= 0:
            raise ValueError(
                "need 0 <= edge_fraction <= 1 - foreground_fraction (edge samples come from the random "
                f"remainder) and edge_mm > 0; got edge_fraction={edge_fraction}, edge_mm={edge_mm}"
            )
        if len(plan.patch_size) == 3 and plan.spacing_mm is not None:
            for c in cases:
                if not np.allclose(c.spacing_mm, plan.spacing_mm, rtol=1e-3):
                    raise ValueError(
                        f"case {c.case_id} is cached at {c.spacing_mm} mm but the plan wants {plan.spacing_mm} mm; "
                        "prepare the cache with this plan"
                    )
        self.cases = list(cases)
        self.plan = plan
        self.samples_per_epoch = int(samples_per_epoch)
        self.foreground_fraction = float(foreground_fraction)
        self.tumor_fraction = float(tumor_fraction)
        self.edge_fraction = float(edge_fraction)
        self.edge_mm = float(edge_mm)
        self.synthetic_tumors = synthetic_tumors
        self.seed = int(seed)
        self.epoch = 0
        self.liver_only_synthetic_annotated = bool(liver_only_synthetic_annotated)
        self.liver_only_tumor_free = bool(liver_only_tumor_free)
        self.ndim = len(plan.patch_size)
        self.augmenter = (
            Augmenter(patch_size=plan.patch_size, elastic=elastic, mirror=mirror, contrast_phase=contrast_phase,
                      **dict(augment_options or {}))
            if augment else None
        )

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of samples (call before each epoch; with ``persistent_workers=False``
        DataLoader workers see it, as they copy the dataset at the start of every epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    # ------------------------------------------------------------------ drawing

    def _spec(self, index: int, rng: np.random.Generator) -> SampleSpec:
        ci = int(rng.integers(len(self.cases)))
        case = self.cases[ci]
        r = rng.random()
        mode = "random"
        if r < self.tumor_fraction:
            if case.has_tumor:
                mode = "tumor"
            elif self.synthetic_tumors is not None and not case.merged_tumor and len(case.liver_coords):
                mode = "synthetic"
            else:
                mode = "liver"
        elif r < self.foreground_fraction:
            mode = "liver"
        elif r < self.foreground_fraction + self.edge_fraction:
            mode = "edge"
        if mode in ("liver", "edge") and not len(case.liver_coords):
            mode = "random"
        if mode == "edge":
            return SampleSpec(ci, mode, self._edge_centre(case, rng))
        if mode == "tumor":
            centre = case.tumor_coords[int(rng.integers(len(case.tumor_coords)))]
        elif mode in ("liver", "synthetic"):
            centre = case.liver_coords[int(rng.integers(len(case.liver_coords)))]
        else:
            centre = np.asarray([int(rng.integers(n)) for n in case.shape])
        return SampleSpec(ci, mode, tuple(int(c) for c in centre))  # type: ignore[arg-type]

    def _edge_centre(self, case: CachedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        """A centre on a slice within ``edge_mm`` of the liver's first or last slice (either side of it);
        in-plane, a liver voxel of the liver slice nearest to it."""
        coords = case.liver_coords
        zs = coords[:, 0]
        end = int(zs.min()) if rng.random() < 0.5 else int(zs.max())
        reach = max(1, int(round(self.edge_mm / float(case.spacing_mm[0]))))
        z = int(np.clip(end + int(rng.integers(-reach, reach + 1)), 0, case.shape[0] - 1))
        near = coords[np.abs(zs - z) == np.abs(zs - z).min()]
        y, x = near[int(rng.integers(len(near)))][1:]
        return z, int(y), int(x)

    def spec(self, index: int) -> SampleSpec:
        """The case, mode and centre that sample ``index`` of the current epoch uses."""
        return self._spec(index, self._rng(index))

    # ------------------------------------------------------------------ samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= int(index) < self.samples_per_epoch:
            raise IndexError(f"sample index {index} out of range 0..{self.samples_per_epoch - 1}")
        rng = self._rng(index)
        spec = self._spec(index, rng)
        case = self.cases[spec.case_index]
        if self.ndim == 3:
            image, label, synthetic = self._region_3d(case, spec, rng)
        else:
            image, label, synthetic = self._slice_2d(case, spec, rng)
        img = torch.from_numpy(image)[None]
        lab = torch.from_numpy(label.astype(np.float32))[None]
        if self.augmenter is not None:
            img, lab = self.augmenter.spatial(img, lab, rng)
        elif tuple(img.shape[1:]) != self.plan.patch_size:
            img, lab = center_crop(img, self.plan.patch_size), center_crop(lab, self.plan.patch_size)
        if self.augmenter is not None:
            img = self.augmenter.contrast_phase(img, lab, rng)
        img = torch.from_numpy(self.plan.normalize(img.numpy()))
        if self.augmenter is not None:
            img = self.augmenter.intensity(img, rng)
        annotated = (
            case.tumor_annotated or self.liver_only_tumor_free or (synthetic and self.liver_only_synthetic_annotated)
        )
        return {
            "image": img.float().contiguous(),
            "label": lab.round().to(torch.int64).contiguous(),
            "tumor_annotated": torch.tensor(bool(annotated)),
            "synthetic": torch.tensor(bool(synthetic)),
            "case_index": torch.tensor(spec.case_index, dtype=torch.int64),
        }

    def _jitter(self, spec: SampleSpec, rng: np.random.Generator, size: Sequence[int]) -> np.ndarray:
        centre = np.asarray(spec.centre)
        if spec.mode == "random":
            return centre
        # keep the target in the patch but not always in its middle
        return centre + np.asarray([int(rng.integers(-(s // 4), s // 4 + 1)) for s in size])

    def _paint(
        self, image: np.ndarray, label: np.ndarray, spacing: Sequence[float], spec: SampleSpec,
        near: Sequence[int] | None, rng: np.random.Generator, merged: bool,
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        if self.synthetic_tumors is None or not (label > 0).any():
            return image, label, False
        forced = spec.mode == "synthetic"
        before = int((label == 2).sum())
        image, label = self.synthetic_tumors(image, label, spacing, rng, force=forced, near=near if forced else None)
        painted = int((label == 2).sum()) > before
        if merged:
            label[label == 2] = 1
        return image, label, painted

    def _region_3d(self, case: CachedCase, spec: SampleSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        size = self.augmenter.region_size if self.augmenter is not None else self.plan.patch_size
        centre = self._jitter(spec, rng, self.plan.patch_size)
        image = crop_padded(case.image, centre, size, PAD_HU).astype(np.float32)
        label = crop_padded(case.label, centre, size, 0)
        near = np.asarray(spec.centre) - (centre - np.asarray(size) // 2)
        image, label, painted = self._paint(image, label, case.spacing_mm, spec, near, rng, case.merged_tumor)
        return image, label, painted

    def _slice_2d(self, case: CachedCase, spec: SampleSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        z = spec.centre[0]
        image = np.asarray(case.image[z], dtype=np.float32)[None]
        label = np.array(case.label[z], dtype=np.uint8)[None]
        near = (0, spec.centre[1], spec.centre[2])
        image, label, painted = self._paint(image, label, case.spacing_mm, spec, near, rng, case.merged_tumor)
        size = self.plan.patch_size
        if tuple(image.shape[1:]) != size:
            image = resize_slices(torch.from_numpy(image)[None], size)[0, 0].numpy()  # (1, 1, H, W) in
            lt = torch.from_numpy(label.astype(np.float32))[None]
            label = F.interpolate(lt, size=size, mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
        else:
            image, label = image[0], label[0]
        return image, label, painted
