"""Lesion confidence: mean tumor probability per lesion, low-confidence lesions flagged or dropped."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from liverseg.analysis import analyze
from liverseg.analysis.confidence import TumorProbability, confidence_level, drop_unconfident_lesions
from liverseg.io import Volume

SPACING = (2.0, 1.0, 1.0)


def _two_lesions() -> tuple[np.ndarray, TumorProbability]:
    """A liver with a big lesion (probability 0.9) and a smaller one (0.5), 30 and 14 mm across."""
    lab = np.zeros((10, 64, 64), np.uint8)
    lab[1:9, 4:60, 4:60] = 1
    lab[3:7, 10:40, 10:40] = 2
    lab[3:7, 44:58, 44:58] = 2
    p = np.zeros(lab.shape, np.float16)
    p[3:7, 10:40, 10:40] = 0.9
    p[3:7, 44:58, 44:58] = 0.5
    box = (slice(0, 10), slice(2, 62), slice(2, 62))
    return lab, TumorProbability(box=box, values=p[box])


def test_each_lesion_gets_its_mean_probability_and_a_level() -> None:
    lab, prob = _two_lesions()
    a = analyze(Volume(array=lab, spacing=SPACING), tumor_probability=prob)
    assert [les.confidence for les in a.lesions] == [pytest.approx(0.9, abs=1e-3), pytest.approx(0.5, abs=1e-3)]
    assert [les.confidence_level for les in a.lesions] == ["high", "low"]
    # both are measurable (>= 10 mm), but only the confident one may be a RECIST target
    assert all(les.measurable for les in a.lesions)
    assert [les.is_target_candidate for les in a.lesions] == [True, False]
    assert "low confidence" in a.lesions[1].reasons["is_target_candidate"]


def test_without_probabilities_confidence_is_none_with_a_reason() -> None:
    lab, _ = _two_lesions()
    a = analyze(Volume(array=lab, spacing=SPACING))
    assert all(les.confidence is None and les.confidence_level is None for les in a.lesions)
    assert all("no model probabilities" in les.reasons["confidence"] for les in a.lesions)
    assert sum(les.is_target_candidate for les in a.lesions) == 2
    assert confidence_level(None) is None and confidence_level(0.59) == "low" and confidence_level(0.6) == "high"


def test_drop_relabels_only_the_unconfident_lesion_as_liver() -> None:
    lab, prob = _two_lesions()
    out, n = drop_unconfident_lesions(lab, prob, min_confidence=0.6)
    assert n == 1
    assert (out[3:7, 10:40, 10:40] == 2).all() and (out[3:7, 44:58, 44:58] == 1).all()
    assert (lab[3:7, 44:58, 44:58] == 2).all()  # the input is not changed
    same, n0 = drop_unconfident_lesions(lab, prob, min_confidence=0.0)
    assert n0 == 0 and same is lab
    assert drop_unconfident_lesions(lab, None, min_confidence=0.9)[1] == 0


def test_probability_box_must_match_its_values() -> None:
    with pytest.raises(ValueError, match="box"):
        TumorProbability(box=(slice(0, 2), slice(0, 2), slice(0, 2)), values=np.zeros((2, 2, 3), np.float16))


def test_predictor_reports_confidence_in_json_and_csv(tmp_path) -> None:
    from liverseg.inference import Predictor, run_case
    from liverseg.io import write_volume
    from liverseg.testing import phantom

    from tiny_bundles import make_tiny_bundle

    tiny_bundle_3d = make_tiny_bundle(tmp_path / "one-stage", seed=0, cascade=False)  # its random head finds tumor

    ct, _ = phantom(shape=(12, 40, 40), spacing=(4.0, 2.0, 2.0), lesions=((6.0, None),))
    write_volume(ct, tmp_path / "ct.nii.gz")
    predictor = Predictor(tiny_bundle_3d, model_2d=None, threads=1, min_lesion_confidence=0.0)
    pred = predictor.predict(ct)
    v = pred.tumor_probability.values
    assert v.dtype == np.float16 and 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    report = run_case(tmp_path / "ct.nii.gz", tmp_path / "out", predictor=predictor)
    lesions = report["analysis"]["lesions"]
    assert lesions
    assert "low_confidence_lesions_dropped" in report["run"]["postprocess"]
    with open(tmp_path / "out" / "lesions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(lesions)
    for les, row in zip(lesions, rows):
        assert les["confidence"] is not None and 0.0 <= les["confidence"] <= 1.0
        assert row["confidence_level"] == les["confidence_level"] in ("high", "low")
    with pytest.raises(ValueError, match="min_lesion_confidence"):
        Predictor(tiny_bundle_3d, model_2d=None, min_lesion_confidence=1.5)



def test_unconfident_liver_is_cleared_and_a_confident_one_kept() -> None:
    from liverseg.analysis.confidence import drop_unconfident_liver

    lab = np.zeros((1, 8, 8), np.uint8)
    lab[0, 2:5, 2:5] = 1
    lab[0, 3, 3] = 2
    prob = np.zeros(lab.shape, np.float32)
    prob[lab > 0] = 0.6
    out, conf, dropped = drop_unconfident_liver(lab, prob, min_confidence=0.65)
    assert dropped and conf == pytest.approx(0.6) and not out.any() and lab.any()  # a new array
    out, conf, dropped = drop_unconfident_liver(lab, prob, min_confidence=0.55)
    assert not dropped and out is lab
    assert drop_unconfident_liver(lab, None, min_confidence=0.65) == (lab, None, False)
    assert drop_unconfident_liver(np.zeros_like(lab), prob, min_confidence=0.65)[1:] == (None, False)
    with pytest.raises(ValueError):
        drop_unconfident_liver(lab, prob, min_confidence=1.0)
    with pytest.raises(ValueError):
        drop_unconfident_liver(lab, prob[:, :4], min_confidence=0.5)


def test_predictor_applies_the_bundles_liver_rule_to_a_slice(tmp_path) -> None:
    import json

    from liverseg.inference import Predictor
    from liverseg.testing import phantom_2d
    from tiny_bundles import make_tiny_bundle

    b2d = make_tiny_bundle(tmp_path / "2d", kind="2d", seed=3)  # a random head: unsure foreground
    b3d = make_tiny_bundle(tmp_path / "3d", cascade=False)
    slice_, _ = phantom_2d(seed=0)
    base = Predictor(b3d, model_2d=b2d, threads=1).predict(slice_, return_probabilities=True)
    assert (base.labels.array > 0).any()
    conf = base.postprocess.get("liver_confidence")
    fg = base.labels.array > 0
    measured = float((1 - base.probabilities[0].astype(np.float32))[fg].mean())
    assert conf is None  # the bundle has no rule: nothing measured, nothing dropped
    assert 0.3 < measured < 0.98, measured
    cfg_path = b2d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["liver_confidence"] = {"drop_below": measured + 0.005}
    cfg_path.write_text(json.dumps(cfg))
    pred = Predictor(b3d, model_2d=b2d, threads=1).predict(slice_)
    assert not (pred.labels.array > 0).any()
    assert pred.postprocess["liver_confidence"] == pytest.approx(measured, abs=2e-3)
    assert any("faint liver-like region" in w for w in pred.warnings)
    assert pred.model["min_liver_confidence"] == pytest.approx(cfg["liver_confidence"]["drop_below"])
    # the constructor overrides the bundle: 0 turns the rule off
    off = Predictor(b3d, model_2d=b2d, threads=1, min_liver_confidence=0.0).predict(slice_)
    np.testing.assert_array_equal(off.labels.array, base.labels.array)
    with pytest.raises(ValueError):
        Predictor(b3d, model_2d=b2d, min_liver_confidence=1.0)
