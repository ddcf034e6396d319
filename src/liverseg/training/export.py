"""Export trained stages as a model bundle (weights.safetensors, config.json, MODEL_CARD.md).

:func:`export_bundle` reads a training folder written by
:func:`liverseg.training.train` (``config.json`` and, per stage, ``stage.json`` and
``best.safetensors``) and writes a bundle with
:func:`liverseg.models.bundle.save_bundle`. The config records the plan of every
stage, the training data, the measured validation metrics, training time and
hardware; the model card is generated from the same numbers (a lead engineer may
edit it afterwards).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from liverseg.errors import TrainingError
from liverseg.models.bundle import Stage, bundled_models_dir, save_bundle
from liverseg.preprocessing.plan import Plan
from liverseg.training.trainer import BEST, LAST, STAGE_JSON, StageResult

__all__ = ["export_bundle", "render_model_card"]

log = logging.getLogger(__name__)

COMMAND_TXT = "command.txt"


def _load_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def export_bundle(
    train_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    dest: str | os.PathLike[str] | None = None,
    stages: Sequence[str] | None = None,
    weights: str = "best",
    command: str | None = None,
) -> Path:
    """Write the stages trained in ``train_dir`` as one bundle.

    Args:
        train_dir: the ``out_dir`` given to :func:`~liverseg.training.train`.
        name: bundle name (default: the recipe's ``name``).
        dest: bundle folder (default: ``models/<name>`` in the repository).
        stages: stage names to include, in order (default: every stage of the recipe).
        weights: ``"best"`` (best validation score) or ``"last"``.
        command: the command that reproduces the training, for the model card (default:
            ``<train_dir>/command.txt`` if present).

    Returns:
        The bundle folder.

    Raises:
        TrainingError: a stage was not trained (no ``stage.json`` or weights).
    """
    if weights not in ("best", "last"):
        raise ValueError(f"weights must be 'best' or 'last'; got {weights!r}")
    root = Path(train_dir)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise TrainingError(f"{root} holds no config.json: it is not a liverseg training folder")
    cfg = json.loads(cfg_path.read_text())
    name = name or cfg["name"]
    names = list(stages) if stages is not None else [s["name"] for s in cfg["stages"]]
    results = [StageResult.load(root / n) for n in names]
    bundle_stages: list[Stage] = []
    state_dicts: dict[str, dict[str, Any]] = {}
    has_localizer = any(r.role == "localize" for r in results)
    for r in results:
        wpath = Path(r.directory if Path(r.directory).is_dir() else root / r.name) / (BEST if weights == "best" else LAST)
        if not wpath.is_file():
            wpath = root / r.name / (BEST if weights == "best" else LAST)
        if not wpath.is_file():
            raise TrainingError(f"stage {r.name!r} has no {wpath.name} in {wpath.parent}; train it first")
        kwargs = {k: v for k, v in r.model_kwargs.items() if k != "deep_supervision"}
        bundle_stages.append(
            Stage(
                name=r.name,
                architecture=r.architecture,
                kwargs=kwargs,
                plan=Plan.from_dict(r.plan),
                role=r.role,  # type: ignore[arg-type]
                roi_margin_mm=r.roi_margin_mm if (r.role == "segment" and has_localizer) else None,
            )
        )
        state_dicts[r.name] = _load_state(wpath)
    if command is None and (root / COMMAND_TXT).is_file():
        command = (root / COMMAND_TXT).read_text().strip()
    info = _bundle_info(cfg, results, weights=weights, command=command)
    card = render_model_card(name=name, kind=cfg.get("kind", "3d"), config=cfg, results=results, info=info)
    folder = Path(dest) if dest is not None else bundled_models_dir() / name
    save_bundle(folder, name=name, kind=cfg.get("kind", "3d"), stages=bundle_stages, state_dicts=state_dicts, info=info, model_card=card)
    log.info("exported %s (%s) to %s", name, ", ".join(names), folder)
    return folder


def _metrics_of(r: StageResult, weights: str) -> dict[str, Any] | None:
    return r.best_metrics if weights == "best" and r.best_metrics else r.last_metrics


def _bundle_info(cfg: dict[str, Any], results: list[StageResult], *, weights: str, command: str | None) -> dict[str, Any]:
    final = results[-1]
    return {
        "description": cfg.get("description", ""),
        "train_data": {
            "sources": cfg.get("data", []),
            "train_cases": final.train_cases,
            "validation_cases": final.validation_cases,
            "spacing_overrides": cfg.get("spacing_overrides", {}),
            "axes_overrides": cfg.get("axes_overrides", {}),
        },
        "metrics": {
            "what": "per-case Dice on the held-out validation cases, each stage on its own grid "
            "(a segment stage inside the reference liver's box + margin); label 1+2 = liver, 2 = tumor",
            "weights": weights,
            "stages": {r.name: _metrics_of(r, weights) for r in results},
        },
        "training": {
            r.name: {
                "epochs": r.epochs_done,
                "iterations": r.iterations_done,
                "train_seconds": r.train_seconds,
                "stopped_by": r.stopped_by,
                "best_epoch": r.best_epoch,
                "device": r.device,
                "processes": r.world_size,
                "optimizer": r.optimizer,
                "synthetic_tumors": r.synthetic_tumors,
                "merge_tumor": r.merge_tumor,
                "roi": r.roi,
            }
            for r in results
        },
        "reproduce": command,
        "recipe": cfg,
    }


def _f(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{float(v):.{digits}f}"


def render_model_card(*, name: str, kind: str, config: dict[str, Any], results: list[StageResult], info: dict[str, Any]) -> str:
    """MODEL_CARD.md text with the numbers of this training run filled in."""
    today = _dt.date.today().isoformat()
    lines = [
        f"# Model card: {name}",
        "",
        f"*Generated by `liverseg.training.export_bundle` on {today} from the training run's own records; "
        "numbers below are measured, not claimed.*",
        "",
        "## What it is",
        "",
        f"An nnFormer ({'3D volumes' if kind == '3d' else '2D axial slices'}) that labels abdominal CT: "
        "0 background, 1 liver, 2 liver tumor (tumor is part of the liver).",
    ]
    if config.get("description"):
        lines += ["", config["description"]]
    lines += ["", "| stage | role | architecture | spacing (mm, z y x) | patch (voxels) | classes | ROI |", "|---|---|---|---|---|---|---|"]
    for r in results:
        sp = r.plan.get("spacing_mm")
        lines.append(
            f"| {r.name} | {r.role} | `{r.architecture}` | {' × '.join(_f(s, 2) for s in sp) if sp else 'pixel grid'} | "
            f"{' × '.join(str(p) for p in r.plan['patch_size'])} | {r.model_kwargs.get('num_classes', 3)} | "
            f"{'liver box + ' + _f(r.roi_margin_mm, 0) + ' mm' if r.roi else 'whole scan'} |"
        )
    final = results[-1]
    lines += [
        "",
        "## Training data",
        "",
        f"- Sources: {', '.join(f'`{s}`' for s in info['train_data']['sources']) or '—'}",
        f"- Trained on {len(final.train_cases)} case(s): {', '.join(final.train_cases)}",
        f"- Held out for validation: {', '.join(final.validation_cases) or 'none'}",
        "- Cases without a tumor annotation (liver-only masks) are trained as tumor-free livers "
        "(`liver_only: tumor_free`)."
        if all(st.get("liver_only") == "tumor_free" for st in config.get("stages", []) if not st.get("merge_tumor"))
        else "- Cases without a tumor annotation (liver-only masks) are trained with a marginal loss: "
        "liver and tumor probabilities merged, so their unannotated tumors are not taught as liver.",
        "",
        "## How it was trained",
        "",
        "| stage | epochs | iterations | time | stopped by | optimizer | lr | synthetic tumors | device |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o = r.optimizer
        lines.append(
            f"| {r.name} | {r.epochs_done} | {r.iterations_done} | {r.train_seconds / 60:.1f} min | {r.stopped_by} | "
            f"{o['name']} | {o['lr']:g} | {'yes' if r.synthetic_tumors else 'no'} | {r.device} × {r.world_size} |"
        )
    lines += [
        "",
        "Loss: Dice + cross-entropy with deep supervision. Validation: Gaussian-weighted sliding window on each stage's grid.",
        "",
        "## How well it does",
        "",
        "Per-case Dice on the held-out cases (weights: " + info["metrics"]["weights"] + "). "
        "Each stage is scored on its own grid; the fine stage inside the reference liver's bounding box + margin, "
        "so these are not end-to-end numbers: run `liverseg evaluate` for those.",
        "",
        "| stage | case | liver Dice | tumor Dice |",
        "|---|---|---|---|",
    ]
    for r in results:
        m = _metrics_of(r, info["metrics"]["weights"])
        if not m:
            lines.append(f"| {r.name} | (no validation cases) | — | — |")
            continue
        for c in m["per_case"]:
            tumor = _f(c["tumor_dice"]) if c["tumor_dice"] is not None else f"— ({c.get('tumor_note') or 'not scored'})"
            lines.append(f"| {r.name} | {c['case_id']} | {_f(c['liver_dice'])} | {tumor} |")
        lines.append(f"| {r.name} | **mean** | {_f(m['liver_dice_mean'])} | {_f(m['tumor_dice_mean'])} |")
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        info.get("reproduce") or f"liverseg train --data <DATA> --config <recipe.json> --out <DIR> --export {name}",
        "```",
        "",
        "## Must not be used for",
        "",
        "- Diagnosis or treatment decisions without a radiologist reviewing every mask: research use only.",
        "- Modalities other than CT (MR, PET, ultrasound), or non-abdominal CT.",
        "- Reporting tumor burden or lesion counts as ground truth: trained on very few real tumors.",
        "",
        "## Limitations",
        "",
        "- Very few training cases; performance on other scanners, contrast phases and pathologies is unknown.",
        "- Data licences (non-commercial research use: 3D-IRCADb CC BY-NC-ND, LiTS CC BY-NC-SA, CHAOS CC BY-SA) "
        "carry over to these weights.",
        "",
    ]
    return "\n".join(lines)
