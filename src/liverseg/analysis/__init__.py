"""Measurements (liver, lesions, burden, RECIST) and LiTS evaluation metrics.

>>> from liverseg.analysis import analyze, evaluate_folders
>>> analysis = analyze(labels, ct)  # doctest: +SKIP
>>> analysis.liver_volume_ml, [l.longest_axial_diameter_mm for l in analysis.lesions]  # doctest: +SKIP
>>> compare("baseline_study/", "followup_study/", out_dir="cmp").response  # doctest: +SKIP
'SD'
"""

from liverseg.analysis import metrics
from liverseg.analysis.compare import Comparison, ComparisonRefused, compare
from liverseg.analysis.confidence import TumorProbability
from liverseg.analysis.evaluate import evaluate_folders, format_summary
from liverseg.analysis.lesions import LIVER_VOLUME_NOTE, Analysis, Flag, Lesion, analyze

__all__ = ["Analysis", "Comparison", "ComparisonRefused", "compare", "Flag", "Lesion", "TumorProbability", "analyze", "evaluate_folders", "format_summary", "metrics", "LIVER_VOLUME_NOTE"]
