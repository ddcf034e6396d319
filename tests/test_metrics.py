"""Known-answer tests of the LiTS metrics, and one cross-check against medpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from liverseg.analysis import metrics as m


def _cube(shape=(10, 10, 10), lo=2, hi=6):
    a = np.zeros(shape, bool)
    a[lo:hi, lo:hi, lo:hi] = True
    return a


def test_shifted_cube_known_answers():
    ref = _cube()  # 4^3 = 64 voxels
    pred = np.roll(ref, 1, axis=2)  # shifted one voxel along x
    assert m.dice(pred, ref) == pytest.approx(2 * 48 / 128)
    assert m.jaccard(pred, ref) == pytest.approx(48 / 80)
    assert m.voe(pred, ref) == pytest.approx(1 - 48 / 80)
    assert m.rvd(pred, ref) == 0.0
    # surface (18-neighbourhood erosion) = 64 - 8 inner voxels = 56 per cube; 20 of each are
    # 1 voxel from the other's surface (the leading face and its 4 inner voxels), the rest 0
    assert m.assd(pred, ref, (1, 1, 1)) == pytest.approx(40 / 112)
    assert m.mssd(pred, ref, (1, 1, 1)) == pytest.approx(1.0)
    # anisotropic spacing: the shift is along x, so distances scale with x spacing only
    assert m.assd(pred, ref, (3.0, 2.0, 0.5)) == pytest.approx(0.5 * 40 / 112)
    assert m.mssd(pred, ref, (3.0, 2.0, 0.5)) == pytest.approx(0.5)
    assert m.mssd(np.roll(ref, 2, axis=0), ref, (3.0, 2.0, 0.5)) == pytest.approx(6.0)


def test_rvd_is_signed_and_none_for_empty_reference():
    ref = _cube()
    big = _cube(lo=2, hi=7)  # 125 voxels
    assert m.rvd(big, ref) == pytest.approx((125 - 64) / 64)
    assert m.rvd(ref, big) == pytest.approx((64 - 125) / 125)
    assert m.rvd(ref, np.zeros_like(ref)) is None


def test_empty_cases_follow_lits_convention():
    z = np.zeros((4, 4, 4), bool)
    s = m.segmentation_scores(z, z, (1, 1, 1))
    assert s["dice"] == 1.0 and s["voe"] == 0.0
    assert s["assd_mm"] is None and "both masks are empty" in s["reasons"]["assd_mm"]
    one = _cube((4, 4, 4), 1, 3)
    s = m.segmentation_scores(z, one, (1, 1, 1))
    assert s["dice"] == 0.0 and s["rvd"] == -1.0 and s["mssd_mm"] is None
    assert "prediction is empty" in s["reasons"]["mssd_mm"]
    s = m.segmentation_scores(one, one, None)
    assert s["dice"] == 1.0 and s["assd_mm"] is None and "spacing unknown" in s["reasons"]["assd_mm"]


def test_perfect_prediction_scores_zero_distance():
    ref = _cube()
    s = m.segmentation_scores(ref, ref, (2.0, 1.0, 1.0))
    assert s["dice"] == 1.0 and s["assd_mm"] == 0.0 and s["mssd_mm"] == 0.0 and s["rvd"] == 0.0


def test_lesion_detection_counts():
    ref = np.zeros((6, 30, 30), bool)
    ref[1:4, 2:6, 2:6] = True  # lesion A, 48 voxels
    ref[1:4, 10:14, 10:14] = True  # lesion B
    ref[1:4, 20:24, 20:24] = True  # lesion C (missed)
    pred = np.zeros_like(ref)
    pred[1:4, 2:6, 2:6] = True  # A exactly: IoU 1
    pred[1:4, 12:14, 10:14] = True  # half of B: IoU 0.5 (not > 0.5)
    pred[1:4, 26:29, 26:29] = True  # a false positive
    d = m.lesion_detection(pred, ref)
    assert (d.n_ref, d.n_pred) == (3, 3)
    assert (d.tp_ref_iou0, d.tp_ref_iou50) == (2, 1)
    assert (d.tp_pred_iou0, d.tp_pred_iou50) == (2, 1)
    assert (d.fn_iou0, d.fp_iou0) == (1, 1)
    assert sorted(d.ref_iou) == [0.0, 0.5, 1.0]
    r = d.rates()
    assert r["recall_iou0"] == pytest.approx(2 / 3) and r["precision_iou50"] == pytest.approx(1 / 3)
    # diagonal contact joins voxels into one lesion (26-connectivity)
    diag = np.zeros((3, 3, 3), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = True
    assert m.lesion_detection(diag, diag).n_ref == 1
    none = m.lesion_detection(np.zeros_like(ref), np.zeros_like(ref))
    assert none.rates()["recall_iou0"] is None


def test_one_prediction_covering_two_reference_lesions():
    ref = np.zeros((3, 10, 20), bool)
    ref[1, 2:6, 2:6] = ref[1, 2:6, 8:12] = True
    pred = np.zeros_like(ref)
    pred[1, 2:6, 2:12] = True  # bridges both
    d = m.lesion_detection(pred, ref)
    assert (d.n_ref, d.n_pred, d.tp_ref_iou0) == (2, 1, 2)
    assert d.ref_iou == [0.4, 0.4]  # each reference lesion vs the one bridging prediction
    assert d.tp_pred_iou50 == 1  # the prediction vs both references: 32/40


def test_case_metrics_labels_and_burden():
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:7, 1:7, 1:7] = 1
    ref[3:5, 3:5, 3:5] = 2
    pred = ref.copy()
    pred[pred == 2] = 1  # tumor missed entirely
    c = m.case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert c["liver"]["dice"] == 1.0  # liver = labels 1 + 2
    assert c["tumor"]["dice"] == 0.0
    assert c["tumor_burden"]["ref"] == pytest.approx(8 / 216) and c["tumor_burden"]["pred"] == 0.0
    assert c["tumor_burden"]["error"] == pytest.approx(-8 / 216)
    assert c["detection"]["n_ref"] == 1 and c["detection"]["tp_ref_iou0"] == 0
    with pytest.raises(ValueError, match="shape"):
        m.case_metrics(pred[:-1], ref, (1.0, 1.0, 1.0))


def test_cross_check_with_medpy():
    """One irregular case against medpy, an independent implementation (as LiTS' scorer uses)."""
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(3)
    spacing = (2.5, 0.8, 1.1)
    shape = (12, 24, 24)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    ref = ((zz - 14) / 10) ** 2 + ((yy - 9) / 6) ** 2 + ((xx - 13) / 8) ** 2 <= 1
    pred = ((zz - 15) / 9) ** 2 + ((yy - 10) / 7) ** 2 + ((xx - 12) / 7) ** 2 <= 1
    pred ^= rng.random(shape) < 0.02  # speckle: false positives and holes
    assert m.dice(pred, ref) == pytest.approx(binary.dc(pred, ref))
    assert m.jaccard(pred, ref) == pytest.approx(binary.jc(pred, ref))
    assert m.rvd(pred, ref) == pytest.approx(binary.ravd(pred, ref))
    # LiTS' surface: 18-neighbourhood erosion = medpy connectivity=2
    a, b = m.surface_distances(pred, ref, spacing)
    assert a.mean() == pytest.approx(binary.asd(pred, ref, spacing, connectivity=2))
    assert b.mean() == pytest.approx(binary.asd(ref, pred, spacing, connectivity=2))
    assert m.mssd(pred, ref, spacing) == pytest.approx(binary.hd(pred, ref, spacing, connectivity=2))
    # ASSD pooled over both surfaces (LiTS/Heimann 2009), medpy averages the two directions
    assert m.assd(pred, ref, spacing) == pytest.approx((a.sum() + b.sum()) / (a.size + b.size))
    assert not math.isclose(a.size, b.size)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="shape"):
        m.dice(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        m.assd(_cube(), _cube(), (1.0, 0.0, 1.0))
