"""The trainer: patches → nnFormer → Dice + CE, with validation, checkpoints and logs.

:func:`train` runs a :class:`~liverseg.training.config.TrainConfig`: it finds the
cases, plans the preprocessing (fingerprint of the training cases + the recipe's
overrides), caches the preprocessed arrays, and trains each stage in order. Each
stage writes to ``<out>/<stage>/``:

* ``checkpoint.pt`` — everything needed to continue exactly (model, optimiser, AMP
  scaler, epoch and step, elapsed time, RNG states, best metric, history); written to a
  temporary file and renamed, at each epoch end and at least every
  ``checkpoint_every_minutes``. Checkpoints are for this trainer only (torch pickle);
  the shipped bundle is safetensors (:mod:`liverseg.training.export`).
* ``last.safetensors`` / ``best.safetensors`` — the latest weights and those with the
  best validation score (mean of liver and tumor Dice; liver Dice for a 2-class stage).
* ``plan.json``, ``log.csv`` (epoch, time, loss, lr, validation Dice), ``curve.png``,
  ``stage.json`` (what was trained on what, and how well it did).

Validation predicts each held-out case whole with MONAI's sliding-window inferer
(Gaussian weighting) on the stage's own grid (its spacing, and for a ``roi="liver"``
stage the reference liver's box + margin), and scores Dice per case: liver = labels
1 + 2, tumor = label 2 (a case with no tumor in prediction and reference scores 1; a
liver-only case gets no tumor score).

With a time budget, the learning-rate schedule runs on ``max(step / total steps,
elapsed / budget)``, so the poly (or cosine) decay still reaches its end when the
budget, not the epoch count, ends the run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from liverseg.errors import InputError, TrainingError
from liverseg.preprocessing.plan import Plan
from liverseg.preprocessing.resample import resize_slices
from liverseg.training.config import OptimizerConfig, StageConfig, TrainConfig
from liverseg.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from liverseg.training.losses import DeepSupervisionLoss, DiceCELoss

__all__ = ["CaseScore", "StageResult", "TrainResult", "train", "validate", "learning_rate", "dice_score"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
CURVE_PNG = "curve.png"
BEST = "best.safetensors"
LAST = "last.safetensors"
PLAN_JSON = "plan.json"
STAGE_JSON = "stage.json"
CSV_FIELDS = ["epoch", "time_s", "iterations", "loss", "lr", "val_liver_dice", "val_tumor_dice", "val_score"]


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class CaseScore:
    """Validation Dice of one held-out case (``tumor_dice`` None: not scored, with the reason)."""

    case_id: str
    liver_dice: float
    tumor_dice: float | None
    tumor_note: str | None = None


@dataclasses.dataclass
class StageResult:
    """What one stage's training produced (also written as ``stage.json``)."""

    name: str
    role: str
    directory: str
    architecture: str
    model_kwargs: dict[str, Any]
    plan: dict[str, Any]
    roi: str | None
    roi_margin_mm: float | None
    merge_tumor: bool
    epochs_done: int
    iterations_done: int
    train_seconds: float
    stopped_by: str
    best_epoch: int | None
    best_score: float | None
    best_metrics: dict[str, Any] | None
    last_metrics: dict[str, Any] | None
    train_cases: list[str]
    validation_cases: list[str]
    device: str
    world_size: int
    optimizer: dict[str, Any]
    synthetic_tumors: Any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "StageResult":
        p = Path(directory) / STAGE_JSON
        if not p.is_file():
            raise TrainingError(f"{p} is missing: train that stage first (liverseg train ... --stage NAME)")
        d = json.loads(p.read_text())
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class TrainResult:
    """The stages trained by :func:`train`, by name."""

    out_dir: Path
    stages: dict[str, StageResult]


# --------------------------------------------------------------------------- small helpers


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (LiTS convention).

    >>> dice_score(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / denom


def learning_rate(opt: OptimizerConfig, progress: float, *, step: int = 0, total_steps: int = 1) -> float:
    """Learning rate at ``progress`` in [0, 1] of the run.

    SGD: poly decay ``lr · (1 − progress)^poly_exponent``. AdamW: linear warm-up over
    ``warmup_fraction`` of the run (at least one step), then cosine down to
    ``lr · min_lr_fraction``.

    >>> learning_rate(OptimizerConfig(), 0.0), round(learning_rate(OptimizerConfig(), 0.5), 5)
    (0.01, 0.00536)
    """
    progress = min(max(float(progress), 0.0), 1.0)
    if opt.name == "sgd":
        return opt.lr * (1.0 - progress) ** opt.poly_exponent
    warm = opt.warmup_fraction
    if warm > 0 and progress < warm:
        return opt.lr * max(progress / warm, (step + 1) / max(1.0, warm * total_steps))
    t = (progress - warm) / max(1e-12, 1.0 - warm)
    lo = opt.lr * opt.min_lr_fraction
    return lo + 0.5 * (opt.lr - lo) * (1.0 + math.cos(math.pi * t))


def _make_optimizer(opt: OptimizerConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.momentum > 0, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def _load_init_weights(model: nn.Module, state: dict, *, new_modules: Sequence[str], source: str) -> None:
    """Load a bundle's weights into ``model`` for fine-tuning.

    Without ``new_modules`` the weights must match exactly. With them, the parameters under those
    top-level submodules (and only those) may be missing from the bundle and keep their random
    initialisation; any other missing or unexpected weight is an error.
    """
    if not new_modules:
        model.load_state_dict(state, strict=True)
        return
    result = model.load_state_dict(state, strict=False)
    prefixes = tuple(f"{m}." for m in new_modules)
    stray = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if stray or result.unexpected_keys:
        raise TrainingError(
            f"init_weights bundle {source!r} does not fit this network outside init_new_modules "
            f"{list(new_modules)}: missing {stray[:5]}, unexpected {list(result.unexpected_keys)[:5]}; "
            "check the architecture and init_new_modules"
        )
    fresh = [k for k in result.missing_keys if k.startswith(prefixes)]
    if not fresh:
        raise TrainingError(f"init_new_modules {list(new_modules)} name no weights the bundle {source!r} lacks; "
                            "leave init_new_modules empty")
    log.info("%d weight tensors of %s start from scratch (not in %s)", len(fresh), list(new_modules), source)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    os.replace(tmp, path)


def _plot_curve(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    ep = [r["epoch"] for r in rows]
    ax.plot(ep, [r["loss"] for r in rows], "k.-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (Dice + CE)")
    ax2 = ax.twinx()
    for key, style, label in (("val_liver_dice", "b.-", "val liver Dice"), ("val_tumor_dice", "r.-", "val tumor Dice")):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), style, label=label)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Dice")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- data (the data side's API)


def _case_id(case: Any) -> str:
    return str(getattr(case, "case_id", None) or getattr(case, "id"))


def _find_cases(config: TrainConfig) -> list[Any]:
    from liverseg.training.datasets import find_cases, warn_unit_spacing

    if not config.data:
        raise InputError("no training data given: pass --data PATH (a LiTS / MSD / IRCADb / CHAOS folder or a CSV manifest)")
    for p in config.data:
        if not Path(p).exists():
            raise InputError(f"training data {p!r} does not exist; give a dataset folder or a CSV manifest")
    overrides = {k: tuple(float(s) for s in v) for k, v in config.spacing_overrides.items()}
    cases: dict[str, Any] = {}
    for root in config.data:
        found = find_cases(root, check_unit_spacing=False)
        for c in found:
            if c.case_id in cases and Path(cases[c.case_id].image_path) != Path(c.image_path):
                raise InputError(f"two data folders hold a case with id {c.case_id!r}; give each case once")
            cases[c.case_id] = c
    unknown = set(overrides) - set(cases)
    if unknown:
        raise InputError(f"spacing_overrides name cases that were not found: {sorted(unknown)}; the cases are {sorted(cases)}")
    axes = {k: tuple(int(a) for a in v) for k, v in config.axes_overrides.items()}
    unknown = set(axes) - set(cases)
    if unknown:
        raise InputError(f"axes_overrides name cases that were not found: {sorted(unknown)}; the cases are {sorted(cases)}")
    out = [cases[k].with_spacing(overrides[k]) if k in overrides else cases[k] for k in sorted(cases)]
    out = [c.with_axes(axes[c.case_id]) if c.case_id in axes else c for c in out]
    for c in out:
        warn_unit_spacing(c)
    if not out:
        raise InputError(f"no labelled cases found in {config.data}; see docs for the supported layouts")
    return out


def _split_cases(cases: list[Any], validation_ids: Sequence[str]) -> tuple[list[Any], list[Any]]:
    ids = [_case_id(c) for c in cases]
    unknown = [v for v in validation_ids if v not in ids]
    if unknown:
        raise InputError(f"validation case(s) {unknown} are not among the cases found: {ids}")
    val = [c for c in cases if _case_id(c) in set(validation_ids)]
    tr = [c for c in cases if _case_id(c) not in set(validation_ids)]
    if not tr:
        raise InputError("every case is held out for validation; leave at least one case to train on")
    return tr, val


def _make_plan(config: TrainConfig, stage: StageConfig, cases: list[Any], *, seed: int) -> Plan:
    from liverseg.training.planning import fingerprint, make_plan

    over = dict(stage.plan)
    if config.batch_size is not None:
        over["batch_size"] = config.batch_size
    fixed = {k: over.pop(k) for k in ("clip_hu", "mean_hu", "std_hu", "input_kind", "display_window_hu") if k in over}
    for key in ("spacing_mm", "patch_size"):
        if over.get(key) is not None:
            over[key] = tuple(over[key])
    if config.kind == "2d" and "patch_size" not in over:
        over.setdefault("dims", 2)
    fp = fingerprint(cases, seed=seed)
    plan = make_plan(fp, roi=stage.roi, **over)
    if fixed:
        for key in ("clip_hu", "display_window_hu"):
            if fixed.get(key) is not None:
                fixed[key] = tuple(fixed[key])
        plan = dataclasses.replace(plan, **fixed)
    return plan


def _cache(cases: list[Any], stage: StageConfig, plan: Plan, cache_dir: Path, info: DistInfo) -> list[Any]:
    from liverseg.training.cache import prepare_cache

    if not cases:
        return []
    kwargs = dict(plan=plan, cache_dir=cache_dir, roi=stage.roi, roi_margin_mm=stage.roi_margin_mm,
                  merge_tumor=stage.merge_tumor, progress=info.is_main)
    if info.is_main:
        out = prepare_cache(cases, **kwargs)
        barrier(info)
        return out
    barrier(info)
    return prepare_cache(cases, **kwargs)


def _synthetic(stage: StageConfig, seed: int) -> Any:
    if not stage.synthetic_tumors:
        return None
    from liverseg.training.synthetic_tumors import SyntheticTumors

    params = stage.synthetic_tumors if isinstance(stage.synthetic_tumors, dict) else {}
    return SyntheticTumors(**params)


def _patch_dataset(cached: list[Any], stage: StageConfig, plan: Plan, samples: int, seed: int) -> Any:
    from liverseg.training.sampling import PatchDataset

    if plan.input_kind == "display":  # window-invariant 2D: rendered slices + real 8-bit exports
        from liverseg.training.slices2d import display_slice_dataset

        return display_slice_dataset(cached, stage=stage, plan=plan, samples=samples, seed=seed,
                                     synthetic_tumors=_synthetic(stage, seed))
    return PatchDataset(
        cached,
        plan=plan,
        samples_per_epoch=samples,
        foreground_fraction=stage.foreground_fraction,
        tumor_fraction=0.0 if stage.merge_tumor else stage.tumor_fraction,
        augment=stage.augment,
        synthetic_tumors=_synthetic(stage, seed),
        seed=seed,
        elastic=stage.elastic,
        liver_only_synthetic_annotated=stage.liver_only_synthetic_annotated,
        liver_only_tumor_free=stage.liver_only == "tumor_free",
        contrast_phase=stage.contrast_phase,
        edge_fraction=stage.edge_fraction,
        edge_mm=stage.edge_mm,
        augment_options=stage.augment_options,
    )


def _cached_arrays(c: Any, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The case's network input (float32; HU normalised, or rendered for display plans) and labels, (z, y, x)."""
    return plan.model_input(np.asarray(c.image)), np.asarray(c.label)


def _cached_annotated(c: Any) -> bool:
    return bool(getattr(c, "tumor_annotated", True))


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    model: nn.Module,
    cached: Sequence[Any],
    *,
    plan: Plan,
    num_classes: int,
    device: torch.device | str = "cpu",
    overlap: float = 0.25,
    amp: bool = False,
) -> list[CaseScore]:
    """Dice per held-out case, predicting each whole case by Gaussian-weighted sliding window.

    ``cached`` items (:class:`~liverseg.training.cache.CachedCase`) carry ``image`` (z, y, x)
    HU, normalised here with ``plan``, and ``label`` (z, y, x) 0/1/2 on the stage's grid,
    ``case_id`` and ``tumor_annotated``. A 2D plan (``len(patch_size) == 2``) predicts
    slice by slice, each slice resized to the patch and the logits resized back.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    was_training = model.training
    model.eval()
    scores: list[CaseScore] = []
    roi = tuple(plan.patch_size)
    use_amp = amp and device.type == "cuda"
    try:
        for c in cached:
            image, label = _cached_arrays(c, plan)
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
            with torch.autocast(device_type=device.type, enabled=use_amp):
                if len(roi) == 2:  # whole axial slices resized to the patch, as PatchDataset trains them
                    preds = []
                    size = tuple(x.shape[1:])
                    for z0 in range(0, x.shape[0], 8):
                        out = model(resize_slices(x[z0 : z0 + 8, None].to(device), roi)).float()
                        preds.append(resize_slices(out, size).argmax(1).cpu())
                    pred = torch.cat(preds).numpy()
                else:
                    out = sliding_window_inference(x[None, None].to(device), roi, 1, model, overlap=overlap, mode="gaussian")
                    pred = out.argmax(1)[0].cpu().numpy()
            liver = dice_score(pred >= 1, label >= 1)
            if num_classes < 3:
                tumor, note = None, "2-class stage (tumor merged into liver)"
            elif not _cached_annotated(c):
                tumor, note = None, "liver-only annotation: tumor status unknown"
            else:
                tumor, note = dice_score(pred == 2, label == 2), None
            scores.append(CaseScore(case_id=_case_id(c), liver_dice=liver, tumor_dice=tumor, tumor_note=note))
    finally:
        model.train(was_training)
    return scores


def _summarise(scores: Sequence[CaseScore]) -> dict[str, Any]:
    liver = [s.liver_dice for s in scores]
    tumor = [s.tumor_dice for s in scores if s.tumor_dice is not None]
    out: dict[str, Any] = {
        "liver_dice_mean": float(np.mean(liver)) if liver else None,
        "tumor_dice_mean": float(np.mean(tumor)) if tumor else None,
        "per_case": [dataclasses.asdict(s) for s in scores],
    }
    parts = [v for v in (out["liver_dice_mean"], out["tumor_dice_mean"]) if v is not None]
    out["score"] = float(np.mean(parts)) if parts else None
    return out


# --------------------------------------------------------------------------- the loop


class _SkipSampler(torch.utils.data.Sampler[int]):
    """A DistributedSampler's indices for this rank, minus the first ``skip`` (mid-epoch resume)."""

    def __init__(self, base: torch.utils.data.DistributedSampler, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _select_device(config: TrainConfig, info_local_rank: int = 0) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for, but torch sees no CUDA GPU; use device 'cpu' or 'auto'")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", info_local_rank)))
    return torch.device("cpu")


def train(
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    stages: Sequence[str] | None = None,
    data: Sequence[str | os.PathLike[str]] | None = None,
) -> TrainResult:
    """Train the stages of ``config`` (all, or those named in ``stages``) into ``out_dir``.

    Args:
        config: the recipe.
        out_dir: output folder; each stage writes ``<out_dir>/<stage>/`` (see module docs).
        resume: continue each stage from its ``checkpoint.pt`` (a finished stage is kept).
        stages: names of the stages to train (default: all, in order).
        data: dataset folders / manifests replacing ``config.data``.

    Launched by ``torchrun``, every process calls this; rank 0 writes the files.

    >>> # train(load_config("configs/liver-tumor-3d.json"), out_dir="runs/3d", data=["../shared/data/labeled"])
    """
    if data is not None:
        config = dataclasses.replace(config, data=[str(p) for p in data])
    names = [s.name for s in config.stages] if stages is None else list(stages)
    todo = [config.stage(n) for n in names]
    out = Path(out_dir)
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    device = _select_device(config)
    info = init_distributed(device.type)
    try:
        cases = _find_cases(config)
        train_cases, val_cases = _split_cases(cases, config.validation_cases)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _atomic_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
            log.info("training on %d case(s), validating on %d: %s", len(train_cases), len(val_cases),
                     [_case_id(c) for c in val_cases])
        results = {}
        for stage in todo:
            results[stage.name] = _train_stage(config, stage, train_cases, val_cases, out, resume=resume, info=info, device=device)
        return TrainResult(out_dir=out, stages=results)
    finally:
        shutdown_distributed(info)


def _train_stage(
    config: TrainConfig,
    stage: StageConfig,
    train_cases: list[Any],
    val_cases: list[Any],
    out: Path,
    *,
    resume: bool,
    info: DistInfo,
    device: torch.device,
) -> StageResult:
    from tqdm.auto import tqdm

    from liverseg.models import build_model

    sdir = out / stage.name
    settings = config.resolved(stage)
    epochs: int = settings["epochs"]
    iters: int = settings["iterations_per_epoch"]
    budget_s = settings["time_budget_minutes"] * 60.0 if settings["time_budget_minutes"] else None
    opt_cfg: OptimizerConfig = settings["optimizer"]
    ckpt_path = sdir / CHECKPOINT
    ckpt = None
    if resume and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a damaged checkpoint: say which and what to do
            raise TrainingError(f"checkpoint {ckpt_path} is unreadable ({exc}); delete it to start the stage afresh") from exc
        if ckpt.get("stage") != stage.name:
            raise TrainingError(f"checkpoint {ckpt_path} belongs to stage {ckpt.get('stage')!r}, not {stage.name!r}")
    elif resume:
        log.warning("no checkpoint at %s: stage %s starts from scratch", ckpt_path, stage.name)
    if info.is_main:
        sdir.mkdir(parents=True, exist_ok=True)

    # plan: fingerprinted from the training cases, or the checkpoint's (exact resume)
    if ckpt:
        plan = Plan.from_dict(ckpt["plan"])
    else:  # rank 0 plans, the others take its plan
        plan = _make_plan(config, stage, train_cases, seed=config.seed) if info.is_main else None
        plan = Plan.from_dict(broadcast_object(plan.to_dict() if plan else None, info))
    if info.is_main:
        _atomic_text(sdir / PLAN_JSON, json.dumps(plan.to_dict(), indent=2) + "\n")
    cache_dir = (Path(config.cache_dir) if config.cache_dir else out / "cache") / stage.name
    cached_train = _cache(train_cases, stage, plan, cache_dir, info)
    cached_val = _cache(val_cases, stage, plan, cache_dir, DistInfo()) if info.is_main else []
    batch = plan.batch_size
    dataset = _patch_dataset(cached_train, stage, plan, iters * batch * info.world_size, config.seed)

    _seed_everything(config.seed)
    num_classes = stage.num_classes
    model_kwargs = {**stage.model_kwargs, "num_classes": num_classes}
    model = build_model(stage.architecture, **model_kwargs, deep_supervision=stage.deep_supervision).to(device)
    if stage.init_weights and not ckpt:
        from liverseg.models.bundle import load_bundle

        init = load_bundle(stage.init_weights)
        if stage.name not in init.state_dicts:
            raise TrainingError(f"init_weights bundle {stage.init_weights!r} has no stage {stage.name!r}; "
                                f"it has {sorted(init.state_dicts)}")
        _load_init_weights(model, init.state_dicts[stage.name], new_modules=stage.init_new_modules,
                           source=stage.init_weights)
        log.info("stage %s starts from bundle %s (sha256 %s)", stage.name, stage.init_weights, init.sha256)
    optimizer = _make_optimizer(opt_cfg, model.parameters())
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = DeepSupervisionLoss(DiceCELoss(num_classes=num_classes, batch_dice=stage.dice_batch,
                                                include_background=stage.dice_background))

    epoch, step_in_epoch, global_step, elapsed = 0, 0, 0, 0.0
    best_score, best_epoch, history, run_loss = None, None, [], [0.0, 0]
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        elapsed, best_score, best_epoch = ckpt["elapsed_s"], ckpt["best_score"], ckpt["best_epoch"]
        history, run_loss = ckpt["history"], ckpt["running_loss"]
        _set_rng_state(ckpt["rng"])
        log.info("resuming stage %s at epoch %d step %d (%.0f s trained)", stage.name, epoch, step_in_epoch, elapsed)
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    total_steps = epochs * iters
    last_ckpt_time = time.monotonic()

    def save_checkpoint(done: bool = False) -> None:
        nonlocal last_ckpt_time
        if not info.is_main:
            return
        _atomic_torch_save(
            {
                "stage": stage.name,
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "elapsed_s": elapsed,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "history": history,
                "running_loss": run_loss,
                "rng": _rng_state(),
                "plan": plan.to_dict(),
                "config": config.to_dict(),
                "finished": done,
            },
            ckpt_path,
        )
        last_ckpt_time = time.monotonic()

    stopped_by = "epochs"
    last_metrics: dict[str, Any] | None = None
    finished = epoch >= epochs or bool(budget_s and elapsed >= budget_s)
    if finished and history:
        log.info("stage %s already finished (%d epochs, %.0f s); keeping it", stage.name, epoch, elapsed)
        stopped_by = history[-1].get("stopped_by") or "epochs"
    model.train()
    while not finished and epoch < epochs:
        t_epoch = time.monotonic()
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        base = torch.utils.data.DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=False)
        sampler = _SkipSampler(base, step_in_epoch * batch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch, sampler=sampler, num_workers=config.num_workers,
            worker_init_fn=_worker_init, drop_last=True, pin_memory=device.type == "cuda",
        )
        bar = tqdm(loader, total=len(sampler) // batch, desc=f"{stage.name} epoch {epoch + 1}/{epochs}",
                   disable=not info.is_main, leave=False, dynamic_ncols=True)
        stop = False
        t_last = time.monotonic()
        lr = opt_cfg.lr
        for item in bar:
            progress = global_step / max(1, total_steps)
            if budget_s:
                progress = max(progress, elapsed / budget_s)
            lr = learning_rate(opt_cfg, progress, step=global_step, total_steps=total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = item["image"].to(device, non_blocking=True)
            y = item["label"].to(device, non_blocking=True)
            ann = torch.as_tensor(item["tumor_annotated"], dtype=torch.bool).to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                outputs = model(x)
            loss = loss_fn([o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float(), y, ann)
            if not torch.isfinite(loss):
                raise TrainingError(f"stage {stage.name}: the loss became {float(loss)} at step {global_step}; "
                                    "lower the learning rate or check the data")
            scaler.scale(loss).backward()
            if opt_cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            now = time.monotonic()
            elapsed += now - t_last
            t_last = now
            global_step += 1
            step_in_epoch += 1
            loss_value = float(loss.detach())
            run_loss = [run_loss[0] + loss_value, run_loss[1] + 1]
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
            stop = broadcast_flag(bool(budget_s and elapsed >= budget_s), info, device)
            if stop:
                stopped_by = "time_budget"
                break
            if (now - last_ckpt_time) >= config.checkpoint_every_minutes * 60 and step_in_epoch < iters:
                save_checkpoint()
        bar.close()

        # epoch end (or the budget ended it early)
        epoch += 1
        mean_loss = all_reduce_mean(run_loss[0] / max(1, run_loss[1]), info, device)
        run_loss = [0.0, 0]
        last = stop or epoch >= epochs
        metrics = None
        if info.is_main and cached_val and (epoch % config.val_every == 0 or last):
            t_val = time.monotonic()
            scores = validate(_unwrap(model), cached_val, plan=plan, num_classes=num_classes, device=device,
                              overlap=config.val_overlap, amp=config.amp)
            metrics = _summarise(scores)
            last_metrics = metrics
            log.info("stage %s epoch %d: loss %.4f, validation liver Dice %s, tumor Dice %s (%.0f s)", stage.name, epoch,
                     mean_loss, _fmt(metrics["liver_dice_mean"]), _fmt(metrics["tumor_dice_mean"]), time.monotonic() - t_val)
        elapsed += time.monotonic() - t_last
        step_in_epoch = 0
        if info.is_main:
            row = {
                "epoch": epoch, "time_s": round(elapsed, 1), "iterations": global_step, "loss": round(mean_loss, 5),
                "lr": lr, "val_liver_dice": metrics and metrics["liver_dice_mean"],
                "val_tumor_dice": metrics and metrics["tumor_dice_mean"], "val_score": metrics and metrics["score"],
                "metrics": metrics, "stopped_by": stopped_by if last else None,
            }
            history.append(row)
            state = _unwrap(model).state_dict()
            meta = {"stage": stage.name, "epoch": str(epoch)}
            _atomic_safetensors(state, sdir / LAST, meta)
            improved = metrics is not None and metrics["score"] is not None and (best_score is None or metrics["score"] > best_score)
            if improved or (not cached_val):
                if metrics is not None and metrics["score"] is not None:
                    best_score = metrics["score"]
                best_epoch = epoch
                _atomic_safetensors(state, sdir / BEST, meta)
            _write_csv(sdir / LOG_CSV, history)
            try:
                _plot_curve(sdir / CURVE_PNG, history, f"{config.name} / {stage.name}")
            except Exception as exc:  # a plot must never stop training
                log.warning("could not draw %s: %s", sdir / CURVE_PNG, exc)
            save_checkpoint(done=last)
            log.info("stage %s epoch %d/%d done: loss %.4f, %.0f s", stage.name, epoch, epochs, mean_loss, time.monotonic() - t_epoch)
        barrier(info)
        if stop:
            break

    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    if last_metrics is None:
        last_metrics = next((r.get("metrics") for r in reversed(history) if r.get("metrics")), None)
    result = StageResult(
        name=stage.name,
        role=stage.role,
        directory=str(sdir),
        architecture=stage.architecture,
        model_kwargs=model_kwargs,
        plan=plan.to_dict(),
        roi=stage.roi,
        roi_margin_mm=stage.roi_margin_mm if stage.roi else None,
        merge_tumor=stage.merge_tumor,
        epochs_done=epoch,
        iterations_done=global_step,
        train_seconds=round(elapsed, 1),
        stopped_by=stopped_by,
        best_epoch=best_epoch,
        best_score=best_score,
        best_metrics=best_row.get("metrics") if best_row else None,
        last_metrics=last_metrics,
        train_cases=[_case_id(c) for c in train_cases],
        validation_cases=[_case_id(c) for c in val_cases],
        device=_device_name(device),
        world_size=info.world_size,
        optimizer=dataclasses.asdict(opt_cfg),
        synthetic_tumors=stage.synthetic_tumors,
    )
    if info.is_main:
        _atomic_text(sdir / STAGE_JSON, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    barrier(info)
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
