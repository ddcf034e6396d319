"""Segmentation networks: the nnFormer and an explicit registry of its configurations."""

from liverseg.models.nnformer import NNFormer
from liverseg.models.registry import MODEL_CONFIGS, MODEL_INPUT_SIZES, build_model

__all__ = ["MODEL_CONFIGS", "MODEL_INPUT_SIZES", "NNFormer", "build_model"]
