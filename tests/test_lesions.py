"""Known-answer tests of liverseg.analysis.analyze on tiny phantoms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from liverseg.analysis import LIVER_VOLUME_NOTE, analyze
from liverseg.io import Volume
from liverseg.testing import phantom, phantom_2d, sphere_voxel_error


def _ball(shape, spacing, centre_mm, radius_mm):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2


def _labels(arr, spacing=(1.0, 1.0, 1.0)):
    return Volume(array=arr.astype(np.uint8), spacing=spacing, is_hu=False)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8), (3.0, 1.5, 1.0)])
def test_sphere_volume_and_diameter(spacing):
    r = 7.0
    shape = tuple(int(math.ceil(40 / s)) for s in spacing)
    centre = tuple(n * s / 2 for n, s in zip(shape, spacing))
    lab = np.zeros(shape, np.uint8)
    lab[_ball(shape, spacing, centre, 15.0)] = 1  # liver
    lab[_ball(shape, spacing, centre, r)] = 2  # lesion inside
    a = analyze(_labels(lab, spacing))
    assert a.tumor_count == 1
    les = a.lesions[0]
    voxel_ml = float(np.prod(spacing)) / 1000
    true_ml = 4 / 3 * math.pi * r**3 / 1000
    assert abs(les.volume_ml - true_ml) <= sphere_voxel_error(r, spacing) * voxel_ml
    assert les.volume_ml == pytest.approx(a.tumor_volume_ml)
    # liver volume counts labels 1 + 2
    assert a.liver_volume_ml == pytest.approx((lab >= 1).sum() * voxel_ml)
    assert LIVER_VOLUME_NOTE in a.notes
    # the longest axial diameter is on the sphere's equator: 2r within one pixel
    assert abs(les.longest_axial_diameter_mm - 2 * r) <= max(spacing[1:])
    assert abs(les.short_axis_mm - 2 * r) <= max(spacing[1:])
    assert les.short_axis_mm <= les.longest_axial_diameter_mm
    assert abs(les.diameter_slice * spacing[0] - centre[0]) <= spacing[0]
    assert a.tumor_burden_percent == pytest.approx(100 * (lab == 2).sum() / (lab >= 1).sum())


def test_ellipse_long_and_short_axes_anisotropic_pixels():
    # an axial ellipse 30 mm x 12 mm, rotated 30 degrees, pixels 0.7 x 0.5 mm
    sp = (2.0, 0.7, 0.5)
    shape = (3, 80, 100)
    yy, xx = np.meshgrid(np.arange(shape[1]) * sp[1], np.arange(shape[2]) * sp[2], indexing="ij")
    cy, cx, th = 28.0, 25.0, math.radians(30)
    u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
    v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
    ell = (u / 15.0) ** 2 + (v / 6.0) ** 2 <= 1
    lab = np.ones(shape, np.uint8)
    lab[1][ell] = 2
    les = analyze(_labels(lab, sp)).lesions[0]
    assert les.longest_axial_diameter_mm == pytest.approx(30.0, abs=0.7)
    assert les.short_axis_mm == pytest.approx(12.0, abs=0.7)
    # the long axis runs at 30 degrees (in mm)
    (y0, x0), (y1, x1) = les.long_axis_endpoints_px
    ang = math.degrees(math.atan2((y1 - y0) * sp[1], (x1 - x0) * sp[2])) % 180
    assert ang == pytest.approx(30.0, abs=3.0)


def test_phantom_lesions_measure_their_known_size():
    ct, lab = phantom(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((8.0, None), (4.0, None)))
    a = analyze(lab, ct)
    assert a.tumor_count == 2
    known = sorted(lab.metadata["lesions"], key=lambda d: -d["voxels"])
    for les, truth in zip(a.lesions, known):
        assert les.voxel_count == truth["voxels"]
        # diameter on a slice near the centre: 2r within one pixel (the slice may miss the equator by < 1.5 mm)
        assert les.longest_axial_diameter_mm <= 2 * truth["radius_mm"] + 2.0
        assert les.longest_axial_diameter_mm >= 2 * math.sqrt(truth["radius_mm"] ** 2 - 1.5**2) - 2.0
        # centroid in LPS (x, y, z) mm = centre (z, y, x) reversed (origin 0, identity direction)
        assert les.centroid_lps_mm == pytest.approx(truth["centre_mm"][::-1], abs=0.5)
        assert les.mean_hu == pytest.approx(35.0, abs=6.0)  # lesion HU 35 +- noise 10
        assert 5.0 < les.std_hu < 15.0
        lo, hi = les.slice_range
        assert lo * 3.0 <= truth["centre_mm"][0] <= hi * 3.0
    assert a.lesions[0].measurable and a.lesions[0].is_target_candidate
    assert a.liver_mean_hu == pytest.approx(90.0, abs=3.0)
    json.dumps(a.to_dict())  # JSON-able


def test_recist_measurable_and_targets():
    # four discs of diameter 24, 16, 12 and 6 mm on separate slices, 1 mm pixels, 2 mm slices
    lab = np.ones((12, 60, 60), np.uint8)
    yy, xx = np.mgrid[:60, :60]
    for z, r in ((1, 12), (4, 8), (7, 6), (10, 3)):
        lab[z][(yy - 30) ** 2 + (xx - 30) ** 2 <= r * r] = 2
    a = analyze(_labels(lab, (2.0, 1.0, 1.0)))
    d = [les.longest_axial_diameter_mm for les in a.lesions]
    assert d == sorted(d, reverse=True)
    assert [les.measurable for les in a.lesions] == [True, True, True, False]
    assert [les.is_target_candidate for les in a.lesions] == [True, True, False, False]
    assert len(a.target_candidates) == 2


def test_thick_slices_raise_the_recist_minimum():
    lab = np.ones((3, 60, 60), np.uint8)
    yy, xx = np.mgrid[:60, :60]
    lab[1][(yy - 30) ** 2 + (xx - 30) ** 2 <= 7 * 7] = 2  # ~14-15 mm
    a = analyze(_labels(lab, (8.0, 1.0, 1.0)))  # 8 mm slices: minimum 16 mm
    assert "thick_slices" in a.flag_codes()
    assert a.lesions[0].measurable is False
    thin = analyze(_labels(lab, (5.0, 1.0, 1.0)))
    assert "thick_slices" not in thin.flag_codes()
    assert thin.lesions[0].measurable is True


def test_lesions_are_26_connected_and_ordered_by_size():
    lab = np.ones((6, 20, 20), np.uint8)
    lab[1:3, 2:4, 2:4] = 2  # 8 voxels
    lab[3, 4, 4] = 2  # touches the first only by a corner: same lesion (26-connectivity)
    lab[1:4, 10:15, 10:15] = 2  # 75 voxels
    a = analyze(_labels(lab))
    assert a.tumor_count == 2
    assert [les.voxel_count for les in a.lesions] == [75, 9]
    assert [les.id for les in a.lesions] == [1, 2]


def test_liver_touching_scan_ends_is_flagged_as_lower_bound():
    lab = np.zeros((5, 10, 10), np.uint8)
    lab[1:4, 2:8, 2:8] = 1
    a = analyze(_labels(lab))
    assert not a.liver_is_lower_bound and "liver_incomplete" not in a.flag_codes()
    lab[0, 3, 3] = 1
    a = analyze(_labels(lab))
    assert a.liver_is_lower_bound
    msg = next(f.message for f in a.flags if f.code == "liver_incomplete")
    assert "first" in msg and "lower bound" in msg


def test_no_liver_gives_none_burden_with_reason():
    a = analyze(_labels(np.zeros((3, 10, 10))))
    assert a.liver_volume_ml == 0.0 and a.tumor_count == 0
    assert a.tumor_burden_percent is None and "no liver" in a.reasons["tumor_burden_percent"]
    assert "no_liver" in a.flag_codes()


def test_2d_slice_without_spacing_reports_pixels_only():
    ct, lab = phantom_2d(shape=(96, 96), spacing=(1.2, 1.2), lesions=((8.0, None),))
    png_lab = lab.with_array(lab.array, spacing=None)
    png_ct = ct.with_array(ct.array, spacing=None, is_hu=False)
    a = analyze(png_lab, png_ct)
    assert a.is_2d and "spacing_unknown" in a.flag_codes() and "single_slice" in a.flag_codes()
    assert a.liver_volume_ml is None and a.liver_area_mm2 is None and a.liver_area_px == int((lab.array >= 1).sum())
    les = a.lesions[0]
    assert les.longest_axial_diameter_mm is None and "pixel size unknown" in les.reasons["longest_axial_diameter_mm"]
    assert les.longest_axial_diameter_px == pytest.approx(16.0 / 1.2, abs=1.0)
    assert les.measurable is None and les.mean_hu is None and "Hounsfield" in les.reasons["mean_hu"]
    # the same slice with its spacing known: areas and diameters in mm
    b = analyze(lab, ct)
    assert b.liver_area_mm2 == pytest.approx(a.liver_area_px * 1.44)
    assert b.lesions[0].longest_axial_diameter_mm == pytest.approx(16.0, abs=1.2)
    assert b.lesions[0].volume_ml is None and b.lesions[0].measurable is True


def test_bad_labels_and_grids_raise():
    with pytest.raises(ValueError, match="only 0"):
        analyze(_labels(np.full((2, 4, 4), 3)))
    lab = _labels(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="same|one grid"):
        analyze(lab, Volume(array=np.zeros((2, 4, 5), np.int16)))


def test_a_liver_cut_by_the_in_plane_field_of_view_is_a_lower_bound() -> None:
    lab = np.zeros((10, 40, 40), np.uint8)
    lab[2:8, 10:30, 10:30] = 1
    inside = analyze(Volume(array=lab, spacing=(2.0, 1.0, 1.0)))
    assert not inside.liver_is_lower_bound and "liver_cut_by_field_of_view" not in inside.flag_codes()
    lab[2:8, 10:30, 0:10] = 1  # the liver runs out of the image at x = 0
    cut = analyze(Volume(array=lab, spacing=(2.0, 1.0, 1.0)))
    assert cut.liver_is_lower_bound and "liver_cut_by_field_of_view" in cut.flag_codes()
