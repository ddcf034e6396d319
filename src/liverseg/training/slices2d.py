"""Training data for window-invariant 2D models: rendered CT slices plus real 8-bit exports.

:class:`DisplaySliceDataset` is the :class:`~liverseg.training.sampling.PatchDataset` of a
plan with ``input_kind="display"``. A sample is either

* an axial slice of a cached labelled volume (HU; drawn as ``PatchDataset`` draws slices:
  liver / tumor / random, synthetic tumors painted in HU), rendered to 8 bits in a random
  window (:func:`liverseg.training.render2d.random_render`), or
* with probability ``image_fraction``, a real 8-bit export with a mask (e.g. the CURVAS PNGs:
  :func:`find_image_slices`), used as it is apart from a random gamma; such slices are
  liver-only (``tumor_annotated=False``: the marginal loss supervises liver + tumor as one);

then degraded as exports are (:func:`liverseg.training.render2d.degrade`), scaled to 0..1
(``p / 255``), resized to the patch (:func:`liverseg.preprocessing.resize_slices`, as the
Predictor does), rotated/scaled a little (``Augmenter``; its mirroring is off, the 8
rotations/flips of ``degrade`` replace it), normalised in display units and
intensity-augmented.

Real slices come in groups (one group = one scanned volume; CURVAS ``curvas-VV-S-rR.png`` →
``curvas-VV``), and hold-outs are whole groups, never single slices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from liverseg.errors import InputError
from liverseg.preprocessing import Plan, resize_slices
from liverseg.preprocessing.display import render_window
from liverseg.training.augment import Augmenter
from liverseg.training.cache import CachedCase
from liverseg.training.render2d import RenderOptions, apply_gamma, degrade, random_render
from liverseg.training.sampling import PatchDataset
from liverseg.training.synthetic_tumors import SyntheticTumors

__all__ = [
    "DisplaySliceDataset",
    "ImageSlice",
    "ImageSliceConfig",
    "display_slice_dataset",
    "find_image_slices",
    "load_image_slice",
]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: a group id: the name up to its first number (``curvas-01-394-r3`` → ``curvas-01``)
_GROUP_RE = re.compile(r"^(\D*\d+)")


@dataclasses.dataclass(frozen=True)
class ImageSlice:
    """One 8-bit slice with its mask: ``group`` is the scanned volume it comes from."""

    image_path: Path
    label_path: Path
    group: str

    @property
    def name(self) -> str:
        return self.image_path.stem


def find_image_slices(folder: str | os.PathLike[str]) -> list[ImageSlice]:
    """Pairs ``<folder>/images/NAME.(png|jpg)`` with ``<folder>/labels/NAME.*`` (or ``masks/``).

    Raises:
        InputError: the folder has no ``images/`` with a matching mask folder, or no pairs.
    """
    root = Path(folder)
    images = root / "images"
    masks = next((root / m for m in ("labels", "masks") if (root / m).is_dir()), None)
    if not images.is_dir() or masks is None:
        raise InputError(f"2D slice folder {root} needs images/ and labels/ (or masks/) sub-folders of PNG/JPEG files")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
    out = []
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        if p.stem not in by_stem:
            raise InputError(f"2D slice {p.name} in {images} has no mask of the same name in {masks}")
        m = _GROUP_RE.match(p.stem)
        out.append(ImageSlice(p, by_stem[p.stem], m.group(1) if m else p.stem))
    if not out:
        raise InputError(f"no PNG/JPEG slices in {images}")
    return out


def load_image_slice(item: ImageSlice) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 greyscale picture, uint8 labels 0/1/2) of one slice.

    Colour pictures become luminance; a mask with values above 2 (0/255, JPEG) is
    thresholded at 128 to liver = 1.
    """
    from PIL import Image

    with Image.open(item.image_path) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    with Image.open(item.label_path) as im:
        lab = np.asarray(im.convert("L"), dtype=np.uint8)
    if lab.shape != pixels.shape:
        raise InputError(f"mask {item.label_path.name} is {lab.shape}, its image {pixels.shape}; they must match")
    if lab.max() > 2:
        lab = (lab >= 128).astype(np.uint8)
    return pixels, lab


@dataclasses.dataclass(frozen=True)
class ImageSliceConfig:
    """The real 8-bit slices a display stage trains on (a recipe's ``image_slices``).

    Args:
        folders: folders for :func:`find_image_slices`.
        validation_groups: groups (volumes) held out, never trained on.
        fraction: share of samples drawn from these slices (the rest: rendered volumes).
        render: :class:`~liverseg.training.render2d.RenderOptions` keyword arguments.
    """

    folders: tuple[str, ...]
    validation_groups: tuple[str, ...] = ()
    fraction: float = 0.3
    render: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folders", tuple(str(f) for f in self.folders))
        object.__setattr__(self, "validation_groups", tuple(str(g) for g in self.validation_groups))
        if not 0.0 <= float(self.fraction) <= 1.0:
            raise ValueError(f"image_slices fraction must be in [0, 1]; got {self.fraction}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ImageSliceConfig | None":
        if not d:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"image_slices: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**dict(d))

    def split(self) -> tuple[list[ImageSlice], list[ImageSlice]]:
        """(training slices, held-out slices), split by group; unknown held-out groups raise InputError."""
        items = [s for f in self.folders for s in find_image_slices(f)]
        groups = {s.group for s in items}
        missing = set(self.validation_groups) - groups
        if missing:
            raise InputError(f"image_slices validation_groups {sorted(missing)} are not among the groups {sorted(groups)}")
        held = set(self.validation_groups)
        train = [s for s in items if s.group not in held]
        if not train and self.fraction > 0:
            raise InputError("image_slices: every group is held out; leave some to train on or set fraction to 0")
        return train, [s for s in items if s.group in held]


class DisplaySliceDataset(PatchDataset):
    """2D training samples as a window-invariant model sees them (see the module docstring).

    Args:
        cases: cached labelled volumes (HU), as for ``PatchDataset``.
        images: real 8-bit slices with masks (liver-only); may be empty.
        image_fraction: share of samples drawn from ``images``.
        plan: a 2D plan with ``input_kind="display"``.
        render: the export simulation's probabilities.
        samples_per_epoch, foreground_fraction, tumor_fraction, augment, synthetic_tumors,
        seed, liver_only_synthetic_annotated, edge_fraction, edge_mm: as for ``PatchDataset``.
        liver_only_tumor_free: liver-only *volumes* count as tumor-free livers (fully
            supervised, e.g. CHAOS, 3D-IRCADb 7); the real 8-bit slices stay liver-only
            (marginal loss) whatever this says, since their livers may hold tumors.

    Returns the same dict as ``PatchDataset``; ``case_index`` is ``len(cases) + j`` for image j.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        *,
        images: Sequence[ImageSlice] = (),
        image_fraction: float = 0.3,
        plan: Plan,
        samples_per_epoch: int,
        render: RenderOptions = RenderOptions(),
        foreground_fraction: float = 0.5,
        tumor_fraction: float = 0.34,
        augment: bool = True,
        synthetic_tumors: SyntheticTumors | None = None,
        seed: int = 0,
        liver_only_synthetic_annotated: bool = False,
        liver_only_tumor_free: bool = False,
        edge_fraction: float = 0.0,
        edge_mm: float = 25.0,
    ) -> None:
        if plan.input_kind != "display" or len(plan.patch_size) != 2:
            raise ValueError("DisplaySliceDataset needs a 2D plan with input_kind='display'")
        if not 0.0 <= image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be in [0, 1]; got {image_fraction}")
        super().__init__(
            cases, plan=plan, samples_per_epoch=samples_per_epoch, foreground_fraction=foreground_fraction,
            tumor_fraction=tumor_fraction, augment=augment, synthetic_tumors=synthetic_tumors, seed=seed,
            mirror=False, liver_only_synthetic_annotated=liver_only_synthetic_annotated,
            edge_fraction=edge_fraction, edge_mm=edge_mm,
        )
        self.liver_only_tumor_free = bool(liver_only_tumor_free)
        self.images = list(images)
        self.image_fraction = float(image_fraction) if self.images else 0.0
        self.render = render
        self._loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if augment:
            self.augmenter = Augmenter(patch_size=plan.patch_size, mirror=False)

    def _image(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if j not in self._loaded:  # a few hundred 512² slices: keep them in memory
            self._loaded[j] = load_image_slice(self.images[j])
        return self._loaded[j]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= int(index) < self.samples_per_epoch:
            raise IndexError(f"sample index {index} out of range 0..{self.samples_per_epoch - 1}")
        rng = self._rng(index)
        synthetic = False
        if self.image_fraction and rng.random() < self.image_fraction:
            j = int(rng.integers(len(self.images)))
            pixels, label = self._image(j)
            if self.augmenter is not None and rng.random() < self.render.gamma_probability:
                lo, hi = self.render.gamma_range
                pixels = apply_gamma(pixels, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
            annotated, case_index = False, len(self.cases) + j
        else:
            spec = self._spec(index, rng)
            case = self.cases[spec.case_index]
            z = spec.centre[0]
            hu = np.asarray(case.image[z], dtype=np.float32)[None]
            lab = np.array(case.label[z], dtype=np.uint8)[None]
            hu, lab, synthetic = self._paint(hu, lab, case.spacing_mm, spec, (0, spec.centre[1], spec.centre[2]), rng,
                                             case.merged_tumor)
            if self.augmenter is not None:
                pixels, _ = random_render(hu[0], rng, options=self.render)
            else:  # no augmentation: the plan's own window, as the Predictor renders HU slices
                width, level = self.plan.display_window_hu  # type: ignore[misc]
                pixels = render_window(hu[0], width_hu=width, level_hu=level)
            label = lab[0]
            annotated = (case.tumor_annotated or self.liver_only_tumor_free
                         or (synthetic and self.liver_only_synthetic_annotated))
            case_index = spec.case_index
        if self.augmenter is not None:
            pixels, label = degrade(pixels, label, rng, options=self.render)
        size = self.plan.patch_size
        img = resize_slices(torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None], size)[0]
        lab_t = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=size, mode="nearest-exact")[0]
        if self.augmenter is not None:
            img, lab_t = self.augmenter.spatial(img, lab_t, rng)
        img = torch.from_numpy(self.plan.normalize(img.numpy()))
        if self.augmenter is not None:
            img = self.augmenter.intensity(img, rng)
        return {
            "image": img.float().contiguous(),
            "label": lab_t.round().to(torch.int64).contiguous(),
            "tumor_annotated": torch.tensor(bool(annotated)),
            "synthetic": torch.tensor(bool(synthetic)),
            "case_index": torch.tensor(case_index, dtype=torch.int64),
        }


def display_slice_dataset(
    cached: Sequence[CachedCase],
    *,
    stage: Any,
    plan: Plan,
    samples: int,
    seed: int,
    synthetic_tumors: SyntheticTumors | None,
) -> DisplaySliceDataset:
    """The trainer's hook: a :class:`DisplaySliceDataset` from a stage config
    (:class:`~liverseg.training.config.StageConfig`, its ``image_slices`` and sampling fields)."""
    try:
        cfg = ImageSliceConfig.from_dict(stage.image_slices)
        render = RenderOptions(**dict(cfg.render)) if cfg else RenderOptions()
    except (TypeError, ValueError) as exc:
        raise InputError(f"stage {stage.name!r}: image_slices: {exc}") from exc
    train_images: list[ImageSlice] = []
    if cfg is not None:
        train_images, held = cfg.split()
        log.info("2D slices: %d for training from %d groups, %d held out (%s)", len(train_images),
                 len({s.group for s in train_images}), len(held), ", ".join(cfg.validation_groups))
    return DisplaySliceDataset(
        cached,
        images=train_images,
        image_fraction=cfg.fraction if cfg else 0.0,
        plan=plan,
        samples_per_epoch=samples,
        render=render,
        foreground_fraction=stage.foreground_fraction,
        tumor_fraction=0.0 if stage.merge_tumor else stage.tumor_fraction,
        augment=stage.augment,
        synthetic_tumors=synthetic_tumors,
        seed=seed,
        liver_only_synthetic_annotated=stage.liver_only_synthetic_annotated,
        liver_only_tumor_free=getattr(stage, "liver_only", "marginal") == "tumor_free",
        edge_fraction=getattr(stage, "edge_fraction", 0.0),
        edge_mm=getattr(stage, "edge_mm", 25.0),
    )
