"""Throw-away tiny model bundles for tests (random-init or constant-output nnFormers).

Real bundles live in ``models/``; these are small enough to run in milliseconds.
``head_class`` makes a stage's network say one class everywhere (its output heads
are zeroed and the bias favours that class): a known answer for tests of the
cascade, the fallback and the geometry, without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from liverseg.models import build_model
from liverseg.models.bundle import Stage, save_bundle
from liverseg.preprocessing import Plan

TINY_3D = {"embed_dim": 4, "depths": [1, 1], "num_heads": [1, 1], "patch_size": [2, 2, 2],
           "window_size": [[2, 2, 2], [2, 2, 2]], "drop_path_rate": 0.0}
TINY_2D = {"embed_dim": 4, "depths": [1, 1], "num_heads": [1, 1], "patch_size": [2, 2],
           "window_size": [[4, 4], [4, 4]], "drop_path_rate": 0.0}
PLAN_KW = {"clip_hu": (-200.0, 300.0), "mean_hu": 90.0, "std_hu": 60.0}


def _state(architecture: str, kwargs: dict, head_class: int | None, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_model(architecture, **kwargs)
    if head_class is not None:
        with torch.no_grad():
            for head in net.heads:
                head.weight.zero_()
                head.bias.zero_()
                head.bias[head_class] = 10.0
    return net.state_dict()


def make_tiny_bundle(
    folder: Path,
    *,
    kind: str = "3d",
    cascade: bool = True,
    head_classes: Sequence[int | None] = (None, None),
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Save a tiny bundle to ``folder``; ``head_classes`` = (localize, segment) forced classes or None."""
    if kind == "2d":
        arch, kw = "nnformer-liver-2d", TINY_2D
        stages = [Stage("net", arch, kw, Plan(spacing_mm=None, patch_size=(32, 32), **PLAN_KW), role="segment")]
        states = {"net": _state(arch, kw, head_classes[-1], seed)}
    else:
        arch, kw = "nnformer-liver-3d", TINY_3D
        seg = Stage("fine", arch, kw, Plan(spacing_mm=(2.0, 2.0, 2.0), patch_size=(8, 16, 16), **PLAN_KW),
                    role="segment", roi_margin_mm=4.0 if cascade else None)
        states = {"fine": _state(arch, kw, head_classes[-1], seed)}
        stages = [seg]
        if cascade:
            loc = Stage("coarse", arch, kw, Plan(spacing_mm=(4.0, 4.0, 4.0), patch_size=(8, 16, 16), **PLAN_KW),
                        role="localize")
            stages = [loc, seg]
            states["coarse"] = _state(arch, kw, head_classes[0], seed + 1)
    return save_bundle(folder, name=name or f"tiny-{kind}", kind=kind, stages=stages, state_dicts=states,
                       info={"note": "test bundle, random weights"}, model_card="# tiny test bundle\nNot a model.\n")
