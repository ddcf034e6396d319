"""The synthetic abdominal phantom: known lesion sizes, realistic HU, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from liverseg.testing import TISSUE_HU, phantom, phantom_2d, sphere_voxel_error

SMALL = dict(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def default_pair():
    return phantom(lesions=((8.0, None), (5.0, None)), seed=3)


def test_types_and_geometry(default_pair):
    ct, lab = default_pair
    assert ct.array.dtype == np.int16 and lab.array.dtype == np.uint8
    assert ct.shape == lab.shape == (48, 96, 96)
    assert ct.spacing == lab.spacing == (2.5, 1.5, 1.5)
    assert ct.is_hu and not lab.is_hu and ct.modality == "CT"
    assert set(np.unique(lab.array)) == {0, 1, 2}


@pytest.mark.parametrize("radius", [4.0, 6.0, 9.0])
def test_lesion_voxel_count_matches_sphere_volume(radius):
    ct, lab = phantom(**SMALL, lesions=((radius, None),), seed=1, noise_hu=0.0)
    n = int((lab.array == 2).sum())
    expected = 4.0 / 3.0 * math.pi * radius**3 / np.prod(SMALL["spacing"])
    assert abs(n - expected) <= sphere_voxel_error(radius, SMALL["spacing"])
    # and more tightly, within 20 % for lesions of several voxels' radius
    assert abs(n - expected) / expected < 0.2
    assert lab.metadata["lesions"][0]["voxels"] == n


def test_given_centre_is_where_the_lesion_is(default_pair):
    _, lab0 = default_pair
    centre = lab0.metadata["lesions"][0]["centre_mm"]
    _, lab = phantom(lesions=((7.0, centre),), seed=9)
    com = ndimage.center_of_mass(lab.array == 2)
    com_mm = [c * s for c, s in zip(com, lab.spacing)]
    assert np.allclose(com_mm, centre, atol=0.5 * max(lab.spacing))


def test_lesions_are_inside_liver_and_liver_inside_body(default_pair):
    ct, lab = default_pair
    # every lesion voxel is surrounded by liver or lesion: the lesion never touches background
    lesion = lab.array == 2
    grown = ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3)))
    assert not (grown & (lab.array == 0)).any()
    # two separate lesions as asked
    assert ndimage.label(lesion, structure=np.ones((3, 3, 3)))[1] == 2
    # labels lie inside the body (not air), never on the volume border in-plane
    assert ct.array[lab.array > 0].min() > -500
    assert not lab.array[:, [0, -1], :].any() and not lab.array[:, :, [0, -1]].any()


def test_hounsfield_units_are_ct_like(default_pair):
    ct, lab = default_pair
    a = ct.array
    liver_mean = a[lab.array == 1].mean()
    lesion_mean = a[lab.array == 2].mean()
    assert 60 <= liver_mean <= 120 and 20 <= lesion_mean <= 50
    assert abs(liver_mean - TISSUE_HU["liver"]) < 3
    assert a[0, 0, 0] < -900  # air in the corner
    assert (a > 400).sum() > 100  # bone in the spine
    assert ((a > -150) & (a < -50)).sum() > 1000  # fat
    assert a.min() >= -1024


def test_deterministic_for_a_seed_and_varies_with_it():
    a_ct, a_lab = phantom(**SMALL, lesions=((5.0, None),), seed=4)
    b_ct, b_lab = phantom(**SMALL, lesions=((5.0, None),), seed=4)
    c_ct, c_lab = phantom(**SMALL, lesions=((5.0, None),), seed=5)
    assert np.array_equal(a_ct.array, b_ct.array) and np.array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_ct.array, c_ct.array)


def test_lesion_hu_and_noise_are_honoured():
    ct, lab = phantom(**SMALL, lesions=((6.0, None),), noise_hu=0.0, lesion_hu=20.0)
    assert np.all(ct.array[lab.array == 2] == 20)
    assert np.all(ct.array[lab.array == 1] == TISSUE_HU["liver"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="liver.s edge"):
        phantom(**SMALL, lesions=((5.0, (0.0, 0.0, 0.0)),))
    with pytest.raises(ValueError, match="no room"):
        phantom(**SMALL, lesions=((60.0, None),))
    with pytest.raises(ValueError, match="radius"):
        phantom(**SMALL, lesions=((-1.0, None),))
    with pytest.raises(ValueError, match="spacing"):
        phantom(shape=(8, 64, 64), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="too small"):
        phantom(shape=(8, 10, 10), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="noise_hu"):
        phantom(**SMALL, noise_hu=-1.0)


def test_phantom_2d():
    ct, lab = phantom_2d(shape=(96, 96), spacing=(1.5, 1.5), lesions=((6.0, None),), seed=2, noise_hu=0.0)
    assert ct.shape == lab.shape == (1, 96, 96) and ct.is_2d
    assert ct.spacing == (2.5, 1.5, 1.5)
    n = int((lab.array == 2).sum())
    expected = math.pi * 6.0**2 / (1.5 * 1.5)
    assert abs(n - expected) / expected < 0.15
    assert set(np.unique(lab.array)) == {0, 1, 2}
    assert np.all(ct.array[lab.array == 1] == TISSUE_HU["liver"])
