"""Canonical orientation: masks of scans stored in any axis order come back on their own grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from liverseg.inference import Predictor
from liverseg.io import Volume
from liverseg.preprocessing.orientation import Reorientation
from liverseg.testing import phantom


def _world(v: Volume, idx_zyx) -> np.ndarray:
    z, y, x = idx_zyx
    sz, sy, sx = v.spacing
    return np.asarray(v.origin) + np.asarray(v.direction) @ np.array([x * sx, y * sy, z * sz])


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1), (1, -1, -1)])
def test_reorientation_is_exact_and_keeps_world_positions(perm, signs) -> None:
    direction = np.zeros((3, 3))
    for c, w in enumerate(perm):
        direction[w, c] = signs[c]
    rng = np.random.default_rng(0)
    v = Volume(array=rng.integers(-100, 100, (5, 6, 7)).astype(np.int16), spacing=(3.0, 2.0, 1.5),
               origin=(10.0, -5.0, 2.0), direction=direction)
    r = Reorientation.from_direction(direction)
    c = r.apply_volume(v)
    np.testing.assert_allclose(c.direction, np.eye(3), atol=1e-12)
    assert Reorientation.from_direction(c.direction).is_identity
    np.testing.assert_array_equal(r.invert(c.array), v.array)
    # one voxel: same value at the same world position
    src = (1, 4, 2)
    value = v.array[src]
    world = _world(v, src)
    hits = np.argwhere(c.array == value)
    assert any(np.allclose(_world(c, h), world) for h in hits)
    # a box maps back
    roi = [(0, 2), (1, 3), (2, 5)]
    box = np.zeros(c.shape, bool)
    box[tuple(slice(a, b) for a, b in roi)] = True
    back = r.invert_roi(roi, c.shape)
    expect = np.zeros(v.shape, bool)
    expect[tuple(slice(a, b) for a, b in back)] = True
    np.testing.assert_array_equal(r.invert(box), expect)


def test_a_scan_stored_in_ras_order_gets_the_mirrored_mask(tiny_bundle_3d) -> None:
    ct, _ = phantom(shape=(20, 40, 36), spacing=(2.5, 2.0, 2.0), seed=3)
    predictor = Predictor(tiny_bundle_3d, model_2d=None)
    ref = predictor.predict(ct, return_probabilities=True)
    ras = Volume(array=ct.array[:, ::-1, ::-1].copy(), spacing=ct.spacing, direction=np.diag([-1.0, -1.0, 1.0]))
    got = predictor.predict(ras, return_probabilities=True)
    np.testing.assert_array_equal(got.labels.array, ref.labels.array[:, ::-1, ::-1])
    np.testing.assert_array_equal(got.probabilities, ref.probabilities[:, :, ::-1, ::-1])
    assert got.labels.shape == ras.shape and np.allclose(got.labels.direction, ras.direction)
    # stored with x and y swapped (a transposed in-plane matrix)
    swapped = Volume(array=ct.array.transpose(0, 2, 1).copy(), spacing=ct.spacing,
                     direction=np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    got = predictor.predict(swapped)
    np.testing.assert_array_equal(got.labels.array, ref.labels.array.transpose(0, 2, 1))
