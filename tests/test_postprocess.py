"""Known-answer tests for liverseg.inference.postprocess."""

from __future__ import annotations

import numpy as np
import pytest

from liverseg.inference.postprocess import fill_holes, largest_component, postprocess_labels


def _liver_block(shape=(10, 20, 20), box=(slice(2, 8), slice(4, 16), slice(4, 16))) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[box] = 1
    return lab


def test_keeps_the_largest_liver_component():
    lab = _liver_block()
    lab[0:2, 0:2, 0:2] = 1  # a separate small blob (corner, not touching the block)
    lab[0, 19, 19] = 2  # a separate tumor speck
    out = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0).labels
    assert out.dtype == np.uint8
    assert out[0:2, 0:2, 0:2].sum() == 0 and out[0, 19, 19] == 0
    assert (out[2:8, 4:16, 4:16] == 1).all()
    assert int((out > 0).sum()) == 6 * 12 * 12


def test_tumor_that_only_hangs_on_the_liver_goes_a_lesion_at_its_surface_stays_whole():
    lab = _liver_block()
    lab[4:6, 8:10, 8:10] = 2  # inside the liver: kept
    lab[4:6, 8:10, 16:20] = 2  # a tumor "finger" beyond the liver's x = 15 edge, touching it by one face
    # a subcapsular lesion at the y = 4 surface, half in the liver and half bulging out of it
    lab[3:7, 1:7, 8:12] = 2
    out = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0)
    res = out.labels
    assert (res[4:6, 8:10, 8:10] == 2).all()
    assert (res[4:6, 8:10, 16:20] == 0).all()  # 4 of its 40 shell voxels are liver: below 20 %
    assert out.removed_tumor_outside_liver_voxels == 2 * 2 * 4
    assert (res[3:7, 1:7, 8:12] == 2).all()  # kept whole, also where it lies outside the outline
    keep_all = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0, min_liver_contact=0.0).labels
    assert (keep_all[4:6, 8:10, 16:20] == 2).all()
    with pytest.raises(ValueError, match="min_liver_contact"):
        postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_liver_contact=1.5)


def test_tumor_specks_below_the_minimum_volume_become_liver():
    lab = _liver_block()
    lab[3, 6, 6] = 2  # 1 voxel of 2 x 1 x 1 mm = 2 mm³
    lab[4:7, 9:12, 9:12] = 2  # 27 voxels = 54 mm³
    out = postprocess_labels(lab, spacing=(2.0, 1.0, 1.0), min_tumor_volume_mm3=10.0)
    assert out.labels[3, 6, 6] == 1
    assert (out.labels[4:7, 9:12, 9:12] == 2).all()
    assert out.dropped_tumor_components == 1
    # no spacing (a PNG): no size rule in mm, the speck stays
    assert postprocess_labels(lab, spacing=None, min_tumor_volume_mm3=10.0).labels[3, 6, 6] == 2


def test_holes_are_filled():
    lab = _liver_block()
    lab[4:6, 8:10, 8:10] = 0  # a cavity inside the liver -> liver
    lab[3:8, 11:15, 11:15] = 2
    lab[5, 13, 13] = 1  # liver enclosed by tumor -> tumor
    lab[2, 6, 6] = 0  # a hole open in 3D (top slice) but closed in its axial slice -> filled
    out = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0).labels
    assert (out[4:6, 8:10, 8:10] == 1).all()
    assert out[5, 13, 13] == 2
    assert out[2, 6, 6] == 1


def test_empty_and_invalid_masks():
    empty = np.zeros((4, 5, 6), np.uint8)
    assert not postprocess_labels(empty, spacing=(1, 1, 1)).labels.any()
    with pytest.raises(ValueError, match="0, 1 or 2"):
        postprocess_labels(np.full((2, 2, 2), 3), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        postprocess_labels(np.zeros((2, 2)), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        postprocess_labels(empty, spacing=(1, 0, 1))


def test_helpers():
    m = np.zeros((5, 5, 5), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # diagonal neighbours: one 26-connected component
    m[4, 4, 4] = True
    assert largest_component(m).sum() == 2
    ring = np.zeros((1, 5, 5), bool)
    ring[0, 1:4, 1:4] = True
    ring[0, 2, 2] = False
    assert fill_holes(ring)[0, 2, 2]
