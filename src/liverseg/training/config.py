"""Training recipes: a typed :class:`TrainConfig`, read from and written to JSON.

A recipe names the data, the held-out validation cases, one or more stages (a
cascade lists a ``coarse`` localiser and a ``fine`` segmenter) and the optimisation
schedule. Every number has a default, so a recipe only states what it changes.

>>> cfg = TrainConfig.from_dict({
...     "name": "demo", "kind": "3d",
...     "stages": [{"name": "net", "architecture": "nnformer-liver-3d",
...                 "plan": {"spacing_mm": [2.5, 1.5, 1.5], "patch_size": [32, 64, 64]}}],
... })
>>> cfg.stages[0].role, cfg.optimizer.name, cfg.optimizer.lr
('segment', 'sgd', 0.01)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from liverseg.errors import InputError

__all__ = ["OptimizerConfig", "StageConfig", "TrainConfig", "load_config"]

_PLAN_KEYS = {"spacing_mm", "clip_hu", "mean_hu", "std_hu", "patch_size", "batch_size", "memory_budget_mb", "dims",
              "input_kind", "display_window_hu"}


def _check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")


@dataclasses.dataclass
class OptimizerConfig:
    """Optimiser and learning-rate schedule.

    Args:
        name: ``"sgd"`` (the nnFormer/nnU-Net recipe: Nesterov momentum, poly decay) or
            ``"adamw"`` (linear warm-up then cosine decay).
        lr: initial (peak for AdamW) learning rate; the paper uses 1e-2 for SGD.
        momentum: SGD momentum (Nesterov), 0.99 in the paper.
        weight_decay: L2 / decoupled weight decay, 3e-5 in the paper.
        poly_exponent: SGD learning rate ``lr · (1 − step/total)^poly_exponent``.
        warmup_fraction: AdamW: fraction of all iterations spent warming up linearly.
        min_lr_fraction: AdamW: the cosine ends at ``lr · min_lr_fraction``.
        grad_clip: gradient norm clipping (nnU-Net uses 12); 0 disables it.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.01
    grad_clip: float = 12.0

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optimizer name must be 'sgd' or 'adamw'; got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"optimizer lr must be positive; got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optimizer momentum must be in [0, 1); got {self.momentum}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optimizer weight_decay and grad_clip must be >= 0")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_fraction <= 1:
            raise ValueError("optimizer warmup_fraction must be in [0, 1) and min_lr_fraction in [0, 1]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OptimizerConfig":
        _check_keys(cls, d, "optimizer")
        return cls(**dict(d))


_AUGMENT_OPTIONS = frozenset(
    {"spatial_probability", "rotation_deg", "scale_range", "intensity_preset", "light_scale", "light_offset"}
)


@dataclasses.dataclass
class StageConfig:
    """One network to train.

    Args:
        name: stage name (``"coarse"``, ``"fine"``, ``"net"``); the key prefix in the bundle.
        architecture: a registry name (:data:`liverseg.models.MODEL_CONFIGS`).
        model_kwargs: overrides for :func:`liverseg.models.build_model` (``num_classes``, ...).
        role: ``"localize"`` (coarse liver mask for the next stage) or ``"segment"``.
        plan: overrides of the fingerprinted :class:`~liverseg.preprocessing.Plan`
            (``spacing_mm`` (z, y, x) mm, ``patch_size`` voxels, ``batch_size``, ``clip_hu``,
            ``mean_hu``, ``std_hu``) and planner options (``memory_budget_mb``, ``dims``).
        roi: ``"liver"`` crops each case to its liver bounding box (+ ``roi_margin_mm``);
            ``None`` keeps the whole volume.
        roi_margin_mm: margin (mm) around the liver box.
        merge_tumor: train liver vs background only (tumor counted as liver); implies 2 classes.
        synthetic_tumors: ``None``/``False`` off, ``True`` on with defaults, or a dict of
            keyword arguments for :class:`liverseg.training.synthetic_tumors.SyntheticTumors`.
        foreground_fraction: share of patches centred on liver (lesions included).
        tumor_fraction: share of patches centred on tumor (where the case has tumor), part of
            ``foreground_fraction``. Default 0: no tumor oversampling, patches centred on
            label > 0 against anywhere 1 : 1, as the calibration recipe (MONAI's
            ``RandCropByPosNegLabeld``, pos 1 : neg 1); oversampling lesions shifts the
            network's prior towards tumor and raises false-positive lesions.
        edge_fraction: share of patches centred on the slices within ``edge_mm`` of either end
            of the liver's axial extent, inside or beyond it (mode ``"edge"``; taken from the
            random remainder, so ``foreground_fraction + edge_fraction <= 1``): the dome under
            the heart and the caudal tip beside bowel and kidney, where a slice's liver is small
            and its neighbours look most like it. Default 0 (off).
        edge_mm: how far (mm) from the liver's first and last slice edge patches are centred.
        augment: spatial and intensity augmentation on or off.
        augment_options: with ``augment``, keyword arguments of
            :class:`liverseg.training.augment.Augmenter` that change its defaults:
            ``spatial_probability``, ``rotation_deg`` (in-plane, out-of-plane degrees),
            ``scale_range``, ``intensity_preset`` (``"nnunet"`` or ``"light"``), ``light_scale``,
            ``light_offset``. Empty (default): the nnU-Net-like defaults. 3D patch stages only.
            The calibration loop's set (with its 0..1 scaling, plan ``mean_hu`` −200, ``std_hu`` 450) is
            ``{"spatial_probability": 0.2, "rotation_deg": [5.73, 5.73], "scale_range": [0.9, 1.1],
            "intensity_preset": "light", "light_scale": 0.1, "light_offset": 0.1}``
            (``configs/experiments/probe-as-loop-2162.json``).
        elastic: add elastic deformation to the spatial augmentation (slower).
        contrast_phase: with ``augment``, simulate other contrast phases and scanners in HU
            (soft-tissue enhancement scaled, the liver brighter or darker than its
            neighbours, global HU shifts); see ``Augmenter.contrast_phase``.
        liver_only: how cases with a liver-only mask (no tumor annotation) are taught.
            ``"marginal"``: liver and tumor probabilities merged inside their liver (the
            partial-label loss of :mod:`liverseg.training.losses`), so their livers teach
            nothing about tumor vs liver; ``"tumor_free"``: taught as fully annotated livers
            with no tumor (the calibration recipe's rule; right for healthy-organ data such as
            CHAOS and for 3D-IRCADb 7, whose only tumor lies outside the liver). Default
            ``"tumor_free"``, the calibration's rule: with ``"marginal"`` half of the four
            labelled volumes reward calling parenchyma and vessels tumor as much as liver.
        liver_only_synthetic_annotated: treat liver-only cases as tumor-free, so patches with
            synthetic tumors painted into them are fully supervised (e.g. healthy CHAOS livers).
        deep_supervision: train with the network's multi-resolution outputs.
        dice_batch: the Dice term sums over the batch before dividing (nnU-Net's batch Dice,
            default) instead of averaging each sample's Dice (MONAI's default).
        dice_background: the Dice term includes the background channel (MONAI's default);
            default ``False`` (foreground classes only).
        image_slices: 2D display stages (plan ``input_kind="display"``): real 8-bit slices with
            masks to train on besides the rendered volumes, as
            :class:`liverseg.training.slices2d.ImageSliceConfig` keys (``folders``,
            ``validation_groups``, ``fraction``, ``render``).
        init_weights: a bundle (name or folder) whose weights for this stage's name start the
            training instead of a random initialisation (fine-tuning); ``None``: random.
        init_new_modules: with ``init_weights``, the top-level submodules of this stage's network
            that the bundle lacks and that start from a random initialisation (e.g. ``["refine"]``
            to give a plain-head bundle the refined head); every other weight must come from the
            bundle, and every bundle weight must fit. Empty: the bundle must match exactly.
        epochs, iterations_per_epoch, time_budget_minutes, optimizer: per-stage overrides
            of the :class:`TrainConfig` values (``None``: use those).
    """

    name: str
    architecture: str
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    role: Literal["localize", "segment"] = "segment"
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)
    roi: Literal["liver"] | None = None
    roi_margin_mm: float = 20.0
    merge_tumor: bool = False
    synthetic_tumors: bool | dict[str, Any] | None = None
    foreground_fraction: float = 0.5
    tumor_fraction: float = 0.0
    edge_fraction: float = 0.0
    edge_mm: float = 25.0
    augment: bool = True
    augment_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    elastic: bool = False
    contrast_phase: bool = False
    liver_only: Literal["marginal", "tumor_free"] = "tumor_free"
    liver_only_synthetic_annotated: bool = False
    deep_supervision: bool = True
    dice_batch: bool = True
    dice_background: bool = False
    image_slices: dict[str, Any] | None = None
    init_weights: str | None = None
    init_new_modules: list[str] = dataclasses.field(default_factory=list)
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    time_budget_minutes: float | None = None
    optimizer: OptimizerConfig | None = None

    def __post_init__(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"stage name must be non-empty, without dots or slashes; got {self.name!r}")
        if self.role not in ("localize", "segment"):
            raise ValueError(f"stage {self.name!r}: role must be 'localize' or 'segment'; got {self.role!r}")
        if self.liver_only not in ("marginal", "tumor_free"):
            raise ValueError(f"stage {self.name!r}: liver_only must be 'marginal' or 'tumor_free'; got {self.liver_only!r}")
        unknown_aug = set(self.augment_options) - _AUGMENT_OPTIONS
        if unknown_aug:
            raise ValueError(f"stage {self.name!r}: unknown augment_options {sorted(unknown_aug)}; known: "
                             f"{sorted(_AUGMENT_OPTIONS)}")
        if self.augment_options and self.plan.get("input_kind") == "display":
            raise ValueError(f"stage {self.name!r}: augment_options apply to 3D patch stages, not to 2D display "
                             "stages; remove them")
        for key in ("rotation_deg", "scale_range"):
            if key in self.augment_options:
                v = self.augment_options[key]
                if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
                    raise ValueError(f"stage {self.name!r}: augment_options {key} must be two numbers; got {v!r}")
                self.augment_options[key] = tuple(float(x) for x in v)
        if self.roi not in (None, "liver"):
            raise ValueError(f"stage {self.name!r}: roi must be 'liver' or null; got {self.roi!r}")
        unknown = set(self.plan) - _PLAN_KEYS
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown plan keys {sorted(unknown)}; known: {sorted(_PLAN_KEYS)}")
        if self.roi_margin_mm < 0:
            raise ValueError(f"stage {self.name!r}: roi_margin_mm must be >= 0 mm; got {self.roi_margin_mm}")
        for key in ("foreground_fraction", "tumor_fraction", "edge_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"stage {self.name!r}: {key} must be in [0, 1]; got {getattr(self, key)}")
        if self.tumor_fraction > self.foreground_fraction and not self.merge_tumor:
            raise ValueError(
                f"stage {self.name!r}: tumor_fraction ({self.tumor_fraction}) is part of foreground_fraction "
                f"({self.foreground_fraction}) and cannot exceed it"
            )
        if self.foreground_fraction + self.edge_fraction > 1 + 1e-9:
            raise ValueError(
                f"stage {self.name!r}: edge_fraction ({self.edge_fraction}) comes from the random remainder: "
                f"foreground_fraction + edge_fraction must be <= 1; got {self.foreground_fraction + self.edge_fraction}"
            )
        if self.init_new_modules and not self.init_weights:
            raise ValueError(f"stage {self.name!r}: init_new_modules {self.init_new_modules} needs init_weights (the "
                             "bundle the other weights come from)")
        if isinstance(self.init_new_modules, str) or not all(isinstance(m, str) and m for m in self.init_new_modules):
            raise ValueError(f"stage {self.name!r}: init_new_modules must be a list of module names, e.g. "
                             f"[\"refine\"]; got {self.init_new_modules!r}")
        if not 0 < self.edge_mm <= 200:
            raise ValueError(f"stage {self.name!r}: edge_mm must be in (0, 200] mm; got {self.edge_mm}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 1; got {self.epochs}")
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            raise ValueError(f"stage {self.name!r}: iterations_per_epoch must be >= 1")
        if isinstance(self.optimizer, Mapping):
            self.optimizer = OptimizerConfig.from_dict(self.optimizer)
        if self.merge_tumor:
            nc = self.model_kwargs.get("num_classes", 2)
            if nc != 2:
                raise ValueError(f"stage {self.name!r}: merge_tumor trains 2 classes; model_kwargs num_classes is {nc}")
            self.model_kwargs = {**self.model_kwargs, "num_classes": 2}

    @property
    def num_classes(self) -> int:
        """Output classes: 2 with ``merge_tumor``, else ``model_kwargs['num_classes']`` (default 3)."""
        return 2 if self.merge_tumor else int(self.model_kwargs.get("num_classes", 3))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageConfig":
        _check_keys(cls, d, f"stage {d.get('name')!r}")
        return cls(**dict(d))


@dataclasses.dataclass
class TrainConfig:
    """A training recipe.

    Args:
        name: the model (bundle) name, e.g. ``"liver-tumor-3d"``.
        kind: ``"3d"`` (volumes) or ``"2d"`` (single slices).
        stages: one stage, or a ``localize`` + ``segment`` cascade (trained in order).
        data: data roots or CSV manifests (LiTS, MSD/nnU-Net, IRCADb, CHAOS layouts);
            the CLI's ``--data`` replaces these.
        validation_cases: ids of held-out cases (as :func:`liverseg.training.datasets.find_cases`
            names them); never trained on, scored every ``val_every`` epochs.
        spacing_overrides: case id → voxel spacing (z, y, x) mm for files whose header is wrong.
        axes_overrides: case id → permutation of the (z, y, x) axes as read, for files whose
            header stores the axes in the wrong order (see ``Case.axes_override``).
        epochs: epochs per stage.
        iterations_per_epoch: optimiser steps per epoch (patches = this × batch size).
        time_budget_minutes: per stage; training stops cleanly after the epoch step in which
            it is spent, still validating and saving. ``None``: no limit.
        batch_size: overrides the plan's batch size (``None``: keep it).
        seed: seeds Python, NumPy and torch, and the patch sampler.
        num_threads: torch CPU threads (``None``: leave torch's default).
        num_workers: DataLoader worker processes.
        val_every: validate every N epochs (and after the last).
        checkpoint_every_minutes: write ``checkpoint.pt`` at least this often (and each epoch end).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision on CUDA.
        cache_dir: where preprocessed arrays are cached (default ``<out>/cache``).
        val_overlap: sliding-window overlap for validation (0–1).
        optimizer: see :class:`OptimizerConfig`.
    """

    name: str
    stages: list[StageConfig]
    kind: Literal["3d", "2d"] = "3d"
    data: list[str] = dataclasses.field(default_factory=list)
    validation_cases: list[str] = dataclasses.field(default_factory=list)
    spacing_overrides: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    axes_overrides: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    epochs: int = 50
    iterations_per_epoch: int = 50
    time_budget_minutes: float | None = None
    batch_size: int | None = None
    seed: int = 0
    num_threads: int | None = None
    num_workers: int = 0
    val_every: int = 5
    checkpoint_every_minutes: float = 10.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    cache_dir: str | None = None
    val_overlap: float = 0.25
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name; got {self.name!r}")
        if self.kind not in ("3d", "2d"):
            raise ValueError(f"kind must be '3d' or '2d'; got {self.kind!r}")
        self.stages = [s if isinstance(s, StageConfig) else StageConfig.from_dict(s) for s in self.stages]
        if not self.stages:
            raise ValueError("stages must list at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique; got {names}")
        if len(self.stages) > 1 and self.stages[0].role != "localize":
            raise ValueError("in a cascade the first stage must have role 'localize'")
        if isinstance(self.optimizer, Mapping):
            self.optimizer = OptimizerConfig.from_dict(self.optimizer)
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(p) for p in self.data]
        for key in ("epochs", "iterations_per_epoch", "val_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(f"time_budget_minutes must be positive (minutes); got {self.time_budget_minutes}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {self.num_workers}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {self.device!r}")
        if not 0 <= self.val_overlap < 1:
            raise ValueError(f"val_overlap must be in [0, 1); got {self.val_overlap}")
        for cid, sp in self.spacing_overrides.items():
            if len(sp) != 3 or min(float(s) for s in sp) <= 0:
                raise ValueError(f"spacing_overrides[{cid!r}] must be three positive mm values (z, y, x); got {sp}")

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise InputError(f"the config has no stage {name!r}; its stages are {[s.name for s in self.stages]}")

    def resolved(self, stage: StageConfig) -> dict[str, Any]:
        """Loop settings for ``stage``: its overrides on top of the recipe's values."""
        return {
            "epochs": stage.epochs or self.epochs,
            "iterations_per_epoch": stage.iterations_per_epoch or self.iterations_per_epoch,
            "time_budget_minutes": stage.time_budget_minutes if stage.time_budget_minutes is not None else self.time_budget_minutes,
            "optimizer": stage.optimizer or self.optimizer,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        _check_keys(cls, d, "config")
        return cls(**dict(d))

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a :class:`TrainConfig` from a JSON file; InputError says what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"training config {str(p)!r} does not exist; give a JSON recipe such as configs/liver-tumor-3d.json")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"training config {p} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(f"training config {p} must hold a JSON object")
    try:
        return TrainConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"training config {p}: {exc}") from exc
