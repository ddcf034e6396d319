"""Synthetic test data: a CT-like abdominal phantom with lesions of known size and position."""

from liverseg.testing.phantom import TISSUE_HU, phantom, phantom_2d, sphere_voxel_error

__all__ = ["TISSUE_HU", "phantom", "phantom_2d", "sphere_voxel_error"]
