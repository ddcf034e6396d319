"""Plan, resampling and model bundles: known answers on tiny arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liverseg.errors import ModelError
from liverseg.io import Volume
from liverseg.models.bundle import Stage, load_bundle, save_bundle
from liverseg.preprocessing import Plan, resample_array, resample_to_shape, resampled_shape


def _plan(**kw):
    base = dict(spacing_mm=(2.5, 1.5, 1.5), clip_hu=(-100.0, 200.0), mean_hu=100.0, std_hu=50.0, patch_size=(8, 16, 16))
    base.update(kw)
    return Plan(**base)


def test_plan_normalize_clips_and_scores():
    out = _plan().normalize(np.array([-1000, 100, 150, 3000], dtype=np.int16))
    np.testing.assert_allclose(out, [-4.0, 0.0, 1.0, 2.0])
    assert out.dtype == np.float32


def test_plan_roundtrip_dict():
    plan = _plan()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(clip_hu=(200, -100)), "low < high"),
        (dict(std_hu=0), "std_hu"),
        (dict(spacing_mm=(1, 1)), "spacing_mm"),
        (dict(patch_size=(4,)), "patch_size"),
    ],
)
def test_plan_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        _plan(**kw)


def test_resampled_shape_and_labels_stay_labels():
    assert resampled_shape((10, 20, 20), (2.0, 1.0, 1.0), (1.0, 2.0, 2.0)) == (20, 10, 10)
    lab = np.zeros((10, 20, 20), np.uint8)
    lab[2:8, 5:15, 5:15] = 2
    out = resample_array(lab, (2.0, 1.0, 1.0), (1.0, 2.0, 2.0), order=0)
    assert out.shape == (20, 10, 10) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 2}
    # volume in mm^3 is kept within one voxel layer
    assert abs(out.astype(bool).sum() * 4.0 - lab.astype(bool).sum() * 2.0) / (lab.astype(bool).sum() * 2.0) < 0.25


def test_resample_linear_keeps_constant_and_torch_in_torch_out():
    img = np.full((2, 5, 6, 7), 3.5, np.float32)
    np.testing.assert_allclose(resample_to_shape(img, (9, 4, 3)), 3.5, rtol=1e-6)
    t = torch.ones(4, 4, 4)
    assert isinstance(resample_to_shape(t, (2, 2, 2)), torch.Tensor)


def test_volume_validates_and_roundtrips_sitk():
    with pytest.raises(ValueError, match="3D"):
        Volume(array=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing"):
        Volume(array=np.zeros((2, 2, 2)), spacing=(0, 1, 1))
    d = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float)
    v = Volume(array=np.arange(24, dtype=np.int16).reshape(2, 3, 4), spacing=(3.0, 0.5, 0.7), origin=(1, 2, 3), direction=d)
    back = Volume.from_sitk(v.to_sitk())
    np.testing.assert_array_equal(back.array, v.array)
    assert back.spacing == v.spacing and back.origin == v.origin
    np.testing.assert_allclose(back.direction, d)
    assert v.voxel_volume_ml == pytest.approx(3.0 * 0.5 * 0.7 / 1000)


def _tiny_stage_and_weights():
    net = torch.nn.Conv3d(1, 3, 1)
    stage = Stage(name="net", architecture="unused-in-this-test", kwargs={}, plan=_plan())
    return stage, {"net": net.state_dict()}


def test_bundle_save_load_and_sha256(tmp_path):
    stage, sds = _tiny_stage_and_weights()
    folder = save_bundle(tmp_path / "b", name="tiny", kind="3d", stages=[stage], state_dicts=sds,
                         info={"metrics": {"liver_dice": 0.5}}, model_card="# tiny\n")
    b = load_bundle(folder)
    assert b.name == "tiny" and b.kind == "3d" and b.stages == [stage]
    assert b.info["metrics"] == {"liver_dice": 0.5}
    torch.testing.assert_close(b.state_dicts["net"]["weight"], sds["net"]["weight"])
    assert (folder / "MODEL_CARD.md").read_text() == "# tiny\n"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bundle_detects_tampered_weights(tmp_path):
    stage, sds = _tiny_stage_and_weights()
    folder = save_bundle(tmp_path / "b", name="tiny", kind="3d", stages=[stage], state_dicts=sds)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights_sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="sha256"):
        load_bundle(folder)


def test_missing_bundle_says_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        load_bundle(tmp_path / "nowhere")
