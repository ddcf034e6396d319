"""liverseg: liver and liver-tumor segmentation in abdominal CT with an nnFormer."""

__version__ = "0.1.0"
