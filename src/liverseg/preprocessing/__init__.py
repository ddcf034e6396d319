"""Preprocessing: HU clipping and z-score normalisation, resampling, cropping; one Plan holds the numbers."""

from liverseg.preprocessing.plan import Plan
from liverseg.preprocessing.resample import resample_array, resample_to_shape, resampled_shape, resize_slices

__all__ = ["Plan", "resample_array", "resample_to_shape", "resampled_shape", "resize_slices"]
