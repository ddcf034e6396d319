"""Synthetic test data: a CT-like abdominal phantom with lesions of known size and position."""

from liverseg.testing.dicom import write_dicom_series
from liverseg.testing.phantom import TISSUE_HU, phantom, phantom_2d, sphere_voxel_error

__all__ = ["TISSUE_HU", "phantom", "phantom_2d", "sphere_voxel_error", "write_dicom_series"]
