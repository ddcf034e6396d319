"""Training: dataset adapters, planning, the preprocessed cache, patch sampling, augmentation,
synthetic tumors (data side) and the trainer."""

from liverseg.training.augment import Augmenter
from liverseg.training.cache import CachedCase, load_cached, prepare_cache
from liverseg.training.datasets import Case, find_cases, read_manifest
from liverseg.training.planning import fingerprint, load_plan, make_plan, save_plan
from liverseg.training.sampling import PatchDataset, SampleSpec
from liverseg.training.synthetic_tumors import SyntheticTumors, TumorInfo
from liverseg.training.config import OptimizerConfig, StageConfig, TrainConfig, load_config
from liverseg.training.export import export_bundle
from liverseg.training.losses import DeepSupervisionLoss, DiceCELoss
from liverseg.training.trainer import StageResult, TrainResult, train, validate

__all__ = [
    "Augmenter",
    "CachedCase",
    "Case",
    "PatchDataset",
    "SampleSpec",
    "SyntheticTumors",
    "TumorInfo",
    "find_cases",
    "fingerprint",
    "load_cached",
    "load_plan",
    "make_plan",
    "prepare_cache",
    "read_manifest",
    "save_plan",
    # trainer
    "DeepSupervisionLoss",
    "DiceCELoss",
    "OptimizerConfig",
    "StageConfig",
    "StageResult",
    "TrainConfig",
    "TrainResult",
    "export_bundle",
    "load_config",
    "train",
    "validate",
]
