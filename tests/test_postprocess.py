"""Known-answer tests for liverseg.inference.postprocess."""

from __future__ import annotations

import numpy as np
import pytest

from liverseg.inference.postprocess import detach_necks, fill_holes, largest_component, postprocess_labels


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


def _reference_postprocess(labels, spacing, *, min_tumor_volume_mm3=10.0, min_liver_contact=0.2):
    """The rules computed the straightforward way: whole arrays, scipy's binary_fill_holes, no boxes."""
    from scipy import ndimage

    full = np.ones((3, 3, 3), bool)

    def biggest(mask):
        lab, n = ndimage.label(mask, structure=full)
        if n <= 1:
            return mask.copy()
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        return lab == np.argmax(sizes)

    def holes_filled(mask):
        out = ndimage.binary_fill_holes(mask)
        for z in range(mask.shape[0]):
            out[z] |= ndimage.binary_fill_holes(mask[z])
        return out

    fg = biggest(labels > 0)
    liver, tumor = fg & (labels == 1), fg & (labels == 2)
    comp, n = ndimage.label(tumor, structure=full)
    for k in range(1, n + 1):
        m = comp == k
        shell = ndimage.binary_dilation(m) & ~m
        if liver[shell].mean() < min_liver_contact:
            tumor &= ~m
    liver_all, tumor = holes_filled(liver | tumor), holes_filled(tumor)
    comp, n = ndimage.label(tumor, structure=full)
    for k in range(1, n + 1):
        if (comp == k).sum() * np.prod(spacing) < min_tumor_volume_mm3:
            tumor &= comp != k
    liver_all = biggest(liver_all)
    out = np.zeros(labels.shape, np.uint8)
    out[liver_all] = 1
    out[tumor & liver_all] = 2
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_whole_array_reference_on_random_masks(seed):
    """Boxes, shortcuts and hole filling by background labelling give what the rules say, on masks
    with specks, holes, tumors inside, at and outside the liver, reaching the array's faces."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(18, 40, 44)), 2.0)
    labels = np.zeros(field.shape, np.uint8)
    labels[field > np.quantile(field, 0.55)] = 1
    labels[field > np.quantile(field, 0.85)] = 2
    labels[rng.random(field.shape) < 0.02] = 0  # pepper: holes and cut-offs
    if seed < 3:
        labels[rng.random(field.shape) < 0.005] = 2  # tumor specks anywhere (some hang outside the liver)
    else:
        labels[(labels == 2) & ~ndimage.binary_erosion(labels > 0, iterations=2)] = 1  # tumors well inside
    if seed % 2:
        labels[:, :, :3] = labels[:, :, 3:6]  # structures on the array's faces
    spacing = (2.0, 0.8, 0.8)
    got = postprocess_labels(labels, spacing=spacing, min_tumor_volume_mm3=4.0, neck_radius_mm=0).labels
    np.testing.assert_array_equal(got, _reference_postprocess(labels, spacing, min_tumor_volume_mm3=4.0))


def _ball_mask(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_a_blob_hanging_on_the_liver_by_a_narrow_neck_is_cut_off():
    """The heart above the dome, drawn as liver through the diaphragm: a thick blob joined by a thin bridge."""
    shape = (60, 60, 90)  # 1 mm voxels
    liver = _ball_mask(shape, (30, 30, 30), 27)  # ~82 mL
    heart = _ball_mask(shape, (30, 30, 76), 9)  # ~3 mL (under 5 % of it), 10 mm from the liver's surface
    neck = np.zeros(shape, bool)
    neck[28:32, 28:32, 50:70] = True  # a 4 × 4 mm bridge
    tongue = np.zeros(shape, bool)
    tongue[29:31, 5:55, 8:14] = True  # a thin liver edge (2 mm): no core of its own, stays
    lab = (liver | heart | neck | tongue).astype(np.uint8)
    res = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0)
    out = res.labels
    assert out[heart].sum() == 0
    assert (out[liver] == 1).all() and (out[tongue] == 1).all()
    assert res.detached_by_neck_voxels >= heart.sum()
    # off: the blob stays (one component with the liver)
    assert (postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), neck_radius_mm=0).labels[heart] == 1).all()
    # unknown spacing (a PNG) or one slice: never applied
    assert detach_necks(lab[:1] > 0, spacing=(1.0, 1.0, 1.0)).sum() == 0


def test_the_neck_rule_keeps_large_parts_and_pedunculated_lesions():
    shape = (60, 60, 100)
    a = _ball_mask(shape, (30, 30, 28), 22)
    b = _ball_mask(shape, (30, 30, 75), 18)  # a big second lobe (~ half of a): real liver, kept
    neck = np.zeros(shape, bool)
    neck[28:32, 28:32, 48:60] = True
    lab = (a | b | neck).astype(np.uint8)
    assert (postprocess_labels(lab, spacing=(1.0, 1.0, 1.0)).labels[b] == 1).all()
    # a small blob that is tumor (an exophytic lesion on a stalk) is not cut either
    lesion = _ball_mask(shape, (30, 30, 62), 8) & ~a
    lab = (a | neck[:, :, :]).astype(np.uint8)
    lab[lesion] = 2
    out = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0, min_liver_contact=0.0).labels
    assert (out[lesion] == 2).all()
    with pytest.raises(ValueError, match="neck_radius_mm"):
        postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), neck_radius_mm=-1)


def test_the_neck_rule_leaves_a_liver_in_many_pieces_alone():
    """A poor prediction (beads on a string): each bead is a small territory, together most of the liver."""
    shape = (30, 30, 130)
    lab = np.zeros(shape, np.uint8)
    for k in range(8):
        lab[_ball_mask(shape, (15, 15, 10 + 15 * k), 7)] = 1
    lab[14:17, 14:17, 5:125] = 1  # the string: one component
    before = int((lab > 0).sum())
    res = postprocess_labels(lab, spacing=(1.0, 1.0, 1.0), min_tumor_volume_mm3=0)
    assert res.detached_by_neck_voxels == 0 and int((res.labels > 0).sum()) == before


def test_fill_holes_is_the_3d_fill_united_with_the_slice_wise_fill():
    """The slice-wise fill alone gives both (every 3D hole is a hole in each of its slices): checked
    against scipy's 3D fill and its per-slice fill on random blobby masks, closed and open ones."""
    from scipy import ndimage

    from liverseg.inference.postprocess import fill_holes

    rng = np.random.default_rng(7)
    for trial in range(12):
        noise = ndimage.gaussian_filter(rng.random((12, 20, 20)), 1.2)
        mask = noise > np.quantile(noise, 0.45 + 0.03 * (trial % 5))
        if trial % 3 == 0:  # a closed shell: one big 3D hole
            mask = np.zeros((12, 20, 20), bool)
            mask[2:10, 3:17, 3:17] = True
            mask[4:8, 6:14, 6:14] = False
        expected = ndimage.binary_fill_holes(mask)
        for z in range(mask.shape[0]):
            expected[z] |= ndimage.binary_fill_holes(mask[z])
        np.testing.assert_array_equal(fill_holes(mask), expected)
