"""Explicit registry of nnFormer configurations: name → constructor kwargs.

``build_model(name, **overrides)`` builds :class:`~liverseg.models.nnformer.NNFormer`
from ``MODEL_CONFIGS[name]`` with ``overrides`` on top (``in_channels``,
``num_classes``, ``deep_supervision`` or any architecture kwarg). ``MODEL_INPUT_SIZES``
gives the crop (voxels, z y x — or y x in 2D) each configuration is meant for; the
network accepts any size, this is only what training and the sliding window use by
default and what ``benchmarks/model_speed.py`` times.

The liver configurations were chosen by measuring (see docs/model_speed.md).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from liverseg.models.baselines import BASELINE_CONFIGS, build_baseline
from liverseg.models.nnformer import NNFormer

__all__ = ["MODEL_CONFIGS", "MODEL_INPUT_SIZES", "build_model"]

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's Synapse configuration (Zhou et al., Table 1 setup): 150.05 M parameters with 14 classes.
    "nnformer-synapse": {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 14,
        "embed_dim": 192,
        "depths": (2, 2, 2, 2),
        "num_heads": (6, 12, 24, 48),
        "patch_size": (2, 4, 4),
        "window_size": (4, 4, 8, 4),
        "drop_path_rate": 0.2,
    },
    # The paper's BraTS configuration (4 MR modalities, 128³ crops): the mid size.
    "nnformer-brats": {
        "spatial_dims": 3,
        "in_channels": 4,
        "num_classes": 4,
        "embed_dim": 96,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "patch_size": (4, 4, 4),
        "window_size": (4, 4, 8, 4),
        "drop_path_rate": 0.2,
    },
    # CPU-sized liver + tumor model on a ~1.5 × 0.8 × 0.8 mm-like grid (background / liver / tumor).
    # Same structure as Synapse (4 stages, windows 4, 4, 8, 4 → the two deepest stages global at
    # 64 × 128 × 128), a sixth of the width.
    "nnformer-liver-3d": {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 3,
        "embed_dim": 32,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "patch_size": (2, 4, 4),
        "window_size": (4, 4, 8, 4),
        "drop_path_rate": 0.1,
    },
    # Liver localiser on a coarse, near-isotropic ~4–5 mm whole-body grid (background / liver / tumor
    # logits; only the liver is used): stride 4 everywhere, windows that make stages 2 and 3 global.
    "nnformer-liver-3d-coarse": {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 3,
        "embed_dim": 16,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "patch_size": (4, 4, 4),
        "window_size": ((4, 4, 4), (4, 4, 4), (4, 6, 6), (2, 3, 3)),
        "drop_path_rate": 0.0,
    },
    # One-stage liver + tumor model on a 2.5 mm isotropic grid, 80 × 96 × 96 crops (200 × 240 × 240 mm:
    # the whole liver with the heart, stomach, spleen and kidneys around it): 5 × 10 × 10 mm tokens,
    # windows that tile each stage's map exactly, the last two stages global.
    "nnformer-liver-3d-iso": {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 3,
        "embed_dim": 32,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "patch_size": (2, 4, 4),
        "window_size": ((4, 4, 4), (4, 4, 4), (5, 6, 6), (5, 3, 3)),
        "drop_path_rate": 0.1,
    },
    # Single 256 × 256 abdominal-window slices: the same blocks with 2D windows.
    "nnformer-liver-2d": {
        "spatial_dims": 2,
        "in_channels": 1,
        "num_classes": 3,
        "embed_dim": 32,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "patch_size": (4, 4),
        "window_size": (8, 8, 16, 8),
        "drop_path_rate": 0.1,
    },
}

# The one-stage model with a convolutional full-resolution head (a stem skip at stride 2): outlines
# at 5 mm instead of in 10 mm token steps (NNFormer(refine_head=True)).
MODEL_CONFIGS["nnformer-liver-3d-refine"] = {**MODEL_CONFIGS["nnformer-liver-3d-iso"], "refine_head": True}

#: the crop each configuration is designed for, in voxels ((z, y, x) in 3D, (y, x) in 2D)
MODEL_INPUT_SIZES: dict[str, tuple[int, ...]] = {
    "nnformer-synapse": (64, 128, 128),
    "nnformer-brats": (128, 128, 128),
    "nnformer-liver-3d": (64, 128, 128),
    "nnformer-liver-3d-coarse": (64, 96, 96),
    "nnformer-liver-3d-iso": (80, 96, 96),
    "nnformer-liver-3d-refine": (80, 96, 96),
    "nnformer-liver-2d": (256, 256),
}


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered nnFormer, with ``overrides`` replacing registry kwargs.

    A name in :data:`liverseg.models.baselines.BASELINE_CONFIGS` (``"unet-3d-baseline"``)
    builds that convolutional baseline instead, for controlled comparisons.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names), or the
            resulting arguments are invalid (the reason from :class:`NNFormer`).

    Example:
        >>> net = build_model("nnformer-liver-3d", deep_supervision=True)
        >>> net = build_model("nnformer-liver-2d", in_channels=3)
    """
    if name in BASELINE_CONFIGS:
        return build_baseline(name, **overrides)
    if name not in MODEL_CONFIGS:
        names = sorted(MODEL_CONFIGS) + sorted(BASELINE_CONFIGS)
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(names)}")
    kwargs = copy.deepcopy(MODEL_CONFIGS[name])
    kwargs.update(overrides)
    return NNFormer(**kwargs)
