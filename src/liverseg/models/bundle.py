"""Model bundles: one self-describing folder per trained model.

A bundle folder holds:

* ``weights.safetensors`` — the weights of every stage, keys prefixed ``<stage>.``
  (never pickle);
* ``config.json`` — format version, name, kind (``"3d"`` or ``"2d"``), labels, the
  stages (architecture name + kwargs for :func:`liverseg.models.build_model`, the
  preprocessing :class:`~liverseg.preprocessing.Plan`, role, ROI margin), training data
  summary, measured metrics and the sha256 of ``weights.safetensors``;
* ``MODEL_CARD.md`` — what it was trained on, how, how well it does, and what it must
  not be used for.

A bundle rebuilds its networks from ``config.json`` alone. A cascade has a
``localize`` stage (coarse liver mask on a low-resolution grid) and a ``segment`` stage
(liver + tumor inside the liver's bounding box at finer spacing).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import torch

from liverseg.errors import ModelError
from liverseg.preprocessing.plan import Plan

log = logging.getLogger(__name__)

__all__ = ["Stage", "ModelBundle", "load_bundle", "save_bundle", "bundled_models_dir", "list_bundles", "sha256_file"]

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
CARD = "MODEL_CARD.md"
LABELS = {0: "background", 1: "liver", 2: "tumor"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One network of a bundle.

    Args:
        name: key prefix in the weights file, e.g. ``"coarse"``, ``"fine"``, ``"net"``.
        architecture: a name in :data:`liverseg.models.MODEL_CONFIGS`.
        kwargs: overrides for :func:`liverseg.models.build_model` (``in_channels``,
            ``num_classes``, ...); with the architecture name they rebuild the network.
        plan: the preprocessing this network was trained with.
        role: ``"localize"`` (its foreground gives the region of interest for the next
            stage) or ``"segment"`` (its labels are the output).
        roi_margin_mm: for a ``segment`` stage after a ``localize`` stage, the margin (mm)
            added around the localised liver's bounding box.
    """

    name: str
    architecture: str
    kwargs: Mapping[str, Any]
    plan: Plan
    role: Literal["localize", "segment"] = "segment"
    roi_margin_mm: float | None = None

    def __post_init__(self) -> None:
        if self.role not in ("localize", "segment"):
            raise ValueError(f"role must be 'localize' or 'segment'; got {self.role!r}")
        if not self.name or "." in self.name:
            raise ValueError(f"stage name must be non-empty without dots; got {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "kwargs": dict(self.kwargs),
            "plan": self.plan.to_dict(),
            "role": self.role,
            "roi_margin_mm": self.roi_margin_mm,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Stage":
        return cls(
            name=d["name"],
            architecture=d["architecture"],
            kwargs=dict(d.get("kwargs", {})),
            plan=Plan.from_dict(d["plan"]),
            role=d.get("role", "segment"),
            roi_margin_mm=d.get("roi_margin_mm"),
        )


@dataclasses.dataclass
class ModelBundle:
    """A loaded bundle: its config, stages and weights (on CPU)."""

    name: str
    kind: Literal["3d", "2d"]
    stages: list[Stage]
    labels: dict[int, str]
    info: dict[str, Any]
    sha256: str
    path: Path | None = None
    state_dicts: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict, repr=False)

    def stage(self, role: str) -> Stage | None:
        """The first stage with this role, or None."""
        return next((s for s in self.stages if s.role == role), None)

    def build(self, stage: Stage | str, *, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The stage's network with its weights, in eval mode on ``device``."""
        from liverseg.models.registry import build_model

        if isinstance(stage, str):
            matches = [s for s in self.stages if s.name == stage]
            if not matches:
                raise ModelError(f"bundle {self.name!r} has no stage {stage!r}; it has {[s.name for s in self.stages]}")
            stage = matches[0]
        try:
            net = build_model(stage.architecture, **dict(stage.kwargs))
        except (KeyError, ValueError) as exc:
            raise ModelError(
                f"bundle {self.name!r} needs architecture {stage.architecture!r}, which this liverseg does not know; "
                "update liverseg or use a bundle made for this version"
            ) from exc
        try:
            net.load_state_dict(self.state_dicts[stage.name], strict=True)
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"bundle {self.name!r}: weights of stage {stage.name!r} do not fit its architecture: {exc}") from exc
        return net.eval().to(device)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_models_dir() -> Path:
    """The repository's ``models/`` folder, where the bundled models live."""
    return Path(__file__).resolve().parents[3] / "models"


def list_bundles(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the bundles (folders with a config.json) in ``directory`` (default: the bundled ones)."""
    root = Path(directory) if directory is not None else bundled_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG).is_file())


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    p = Path(name_or_path)
    if (p / CONFIG).is_file():
        return p
    q = bundled_models_dir() / str(name_or_path)
    if (q / CONFIG).is_file():
        return q
    raise ModelError(
        f"no model bundle at {str(name_or_path)!r}: give a folder holding config.json and {WEIGHTS}, "
        f"or one of the bundled names {list_bundles()}"
    )


def load_bundle(name_or_path: str | os.PathLike[str], *, verify: bool = True) -> ModelBundle:
    """Load a bundle by bundled name (``models/<name>``) or folder path.

    Args:
        name_or_path: a bundled model name or a bundle folder.
        verify: check the weights' sha256 against config.json (raises ModelError on mismatch).
    """
    from safetensors.torch import load_file

    folder = _resolve(name_or_path)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder / CONFIG} is unreadable: {exc}; reinstall or retrain the model") from exc
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{folder}: bundle format {cfg.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{folder} has no {WEIGHTS}; the bundle is incomplete")
    digest = sha256_file(weights)
    if verify and digest != cfg.get("weights_sha256"):
        raise ModelError(
            f"{weights} has sha256 {digest[:12]}…, but config.json says {str(cfg.get('weights_sha256'))[:12]}…: "
            "the weights are damaged or were replaced; restore the bundle"
        )
    flat = load_file(str(weights), device="cpu")
    stages = [Stage.from_dict(s) for s in cfg["stages"]]
    state_dicts: dict[str, dict[str, torch.Tensor]] = {s.name: {} for s in stages}
    for key, tensor in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix not in state_dicts:
            raise ModelError(f"{weights}: tensor {key!r} belongs to no stage of config.json")
        state_dicts[prefix][rest] = tensor
    return ModelBundle(
        name=cfg["name"],
        kind=cfg["kind"],
        stages=stages,
        labels={int(k): v for k, v in cfg.get("labels", LABELS).items()},
        info={k: v for k, v in cfg.items() if k not in {"name", "kind", "stages", "labels", "weights_sha256", "format_version"}},
        sha256=digest,
        path=folder,
        state_dicts=state_dicts,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_bundle(
    directory: str | os.PathLike[str],
    *,
    name: str,
    kind: Literal["3d", "2d"],
    stages: Iterable[Stage],
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    info: Mapping[str, Any] | None = None,
    model_card: str | None = None,
    labels: Mapping[int, str] = LABELS,
) -> Path:
    """Write a bundle folder (weights, config.json with sha256, optional MODEL_CARD.md).

    ``state_dicts`` maps each stage name to that network's ``state_dict()``. Files are
    written to temporary names and renamed, so a crash leaves no half-written bundle.
    """
    from safetensors.torch import save_file

    stages = list(stages)
    if kind not in ("3d", "2d"):
        raise ValueError(f"kind must be '3d' or '2d'; got {kind!r}")
    missing = {s.name for s in stages} - set(state_dicts)
    if missing:
        raise ValueError(f"state_dicts lacks stages {sorted(missing)}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {f"{s.name}.{k}": v.detach().cpu().contiguous() for s in stages for k, v in state_dicts[s.name].items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".weights.")
    os.close(fd)
    save_file(flat, tmp, metadata={"name": name})
    digest = sha256_file(tmp)
    os.replace(tmp, folder / WEIGHTS)
    from liverseg import __version__

    cfg: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "kind": kind,
        "labels": {str(k): v for k, v in labels.items()},
        "stages": [s.to_dict() for s in stages],
        "weights_sha256": digest,
        "liverseg_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    cfg.update(dict(info or {}))
    _atomic_write_text(folder / CONFIG, json.dumps(cfg, indent=2, default=str) + "\n")
    if model_card is not None:
        _atomic_write_text(folder / CARD, model_card)
    log.info("saved model bundle %s (%s, sha256 %s)", folder, kind, digest[:12])
    return folder
