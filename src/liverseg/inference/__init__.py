"""Inference: the Predictor (sliding window with Gaussian weighting, mirroring TTA, the
localize → segment cascade, postprocessing, back to the input grid) and the per-case
pipeline that writes a case's outputs.

>>> from liverseg.inference import Predictor, run_case
>>> predictor = Predictor("liver-tumor-3d")                      # doctest: +SKIP
>>> report = run_case("ct.nii.gz", "out/", predictor=predictor)   # doctest: +SKIP
"""

from liverseg.inference.postprocess import PostprocessResult, fill_holes, largest_component, postprocess_labels
from liverseg.inference.pipeline import CaseResult, case_is_done, case_name, find_cases, run_case, run_cases
from liverseg.inference.predictor import Prediction, Predictor, pseudo_hu_from_window

__all__ = [
    "CaseResult",
    "case_is_done",
    "case_name",
    "find_cases",
    "run_case",
    "run_cases",
    "Prediction",
    "Predictor",
    "PostprocessResult",
    "fill_holes",
    "largest_component",
    "postprocess_labels",
    "pseudo_hu_from_window",
]
