"""liverseg: liver and liver-tumor segmentation in abdominal CT with an nnFormer."""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    """``liverseg.Predictor`` without importing torch on ``import liverseg``."""
    if name == "Predictor":
        from liverseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'liverseg' has no attribute {name!r}")
