"""Window-invariant 2D input: display rendering, the display Plan, the training renderer and
slice dataset, the Predictor's 2D input paths and the optional pixel size (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from liverseg.errors import InputError
from liverseg.io import Volume
from liverseg.preprocessing import Plan
from liverseg.preprocessing.display import display_from_8bit, render_minmax, render_window
from liverseg.training.render2d import RenderOptions, apply_gamma, degrade, jpeg_roundtrip, random_render

DISPLAY_PLAN = dict(spacing_mm=None, clip_hu=(0.0, 1.0), mean_hu=0.5, std_hu=0.25, patch_size=(32, 32),
                    input_kind="display", display_window_hu=(400.0, 40.0))


# ----------------------------------------------------------------------------- rendering


def test_render_window_matches_a_viewer_window():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    assert render_window(hu, width_hu=400, level_hu=40).tolist() == [0, 0, 128, 255, 255]
    assert render_window(hu, width_hu=400, level_hu=40).dtype == np.uint8
    dark = render_window(np.array([40.0]), width_hu=400, level_hu=40, gamma=2.0)
    assert int(dark[0]) == round(255 * 0.5**2)
    with pytest.raises(ValueError, match="width"):
        render_window(hu, width_hu=0, level_hu=40)


def test_render_minmax_spans_the_image_and_handles_constants():
    hu = np.array([[-1024.0, 0.0], [500.0, 1476.0]])
    out = render_minmax(hu)
    assert out.min() == 0 and out.max() == 255
    assert render_minmax(np.full((3, 3), 7.0)).tolist() == [[0] * 3] * 3
    assert display_from_8bit(np.array([0, 51, 255])).tolist() == pytest.approx([0.0, 0.2, 1.0])


# ----------------------------------------------------------------------------- Plan


def test_display_plan_round_trips_and_hu_plans_keep_their_old_keys():
    plan = Plan(**DISPLAY_PLAN)
    d = plan.to_dict()
    assert d["input_kind"] == "display" and d["display_window_hu"] == [400.0, 40.0]
    assert Plan.from_dict(json.loads(json.dumps(d))) == plan
    hu = Plan(spacing_mm=None, clip_hu=(-100, 200), mean_hu=90, std_hu=50, patch_size=(32, 32))
    assert "input_kind" not in hu.to_dict() and "display_window_hu" not in hu.to_dict()  # old bundles' config
    assert Plan.from_dict(hu.to_dict()).input_kind == "hu"


def test_display_plan_needs_its_window_and_hu_plans_refuse_one():
    with pytest.raises(ValueError, match="display_window_hu"):
        Plan(**{**DISPLAY_PLAN, "display_window_hu": None})
    with pytest.raises(ValueError, match="only for input_kind"):
        Plan(spacing_mm=None, clip_hu=(0, 1), mean_hu=0.5, std_hu=0.2, patch_size=(8, 8), display_window_hu=(400, 40))
    with pytest.raises(ValueError, match="input_kind"):
        Plan(**{**DISPLAY_PLAN, "input_kind": "png"})


def test_model_input_renders_hu_and_takes_8bit_as_it_is():
    plan = Plan(**DISPLAY_PLAN)
    hu = np.array([[-160.0, 40.0, 240.0]])
    np.testing.assert_allclose(plan.model_input(hu), (np.array([[0, 128, 255]]) / 255 - 0.5) / 0.25, atol=1e-6)
    pixels = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(plan.model_input(pixels, is_hu=False), plan.model_input(hu), rtol=1e-6)
    hu_plan = Plan(spacing_mm=None, clip_hu=(-100, 200), mean_hu=90, std_hu=50, patch_size=(8, 8))
    np.testing.assert_allclose(hu_plan.model_input(hu), hu_plan.normalize(hu))


# ----------------------------------------------------------------------------- training renderer


def test_random_render_draws_every_window_kind():
    rng = np.random.default_rng(0)
    hu = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    kinds = set()
    for _ in range(200):
        pixels, kind = random_render(hu, rng)
        assert pixels.dtype == np.uint8 and pixels.shape == hu.shape
        kinds.add(kind)
    assert kinds == {"abdomen", "soft_tissue", "liver", "minmax", "narrow", "random"}  # "wide" is off by default
    wide_only = RenderOptions(window_weights={"wide": 1.0})
    pixels, kind = random_render(hu, rng, options=wide_only)
    assert kind == "wide"
    # a full-range export: air (-1000 HU) near black, soft tissue (0..100 HU) in a few dozen grey levels at most
    soft = pixels[(hu >= 0) & (hu <= 100)]
    assert pixels[hu <= -1000].max() <= 10 and 3 <= int(soft.max()) - int(soft.min()) <= 20
    with pytest.raises(ValueError, match="window_weights"):
        RenderOptions(window_weights={"bone": 1.0})


def test_degrade_keeps_labels_on_the_picture():
    rng = np.random.default_rng(1)
    pixels = np.zeros((80, 60), np.uint8)
    label = np.zeros((80, 60), np.uint8)
    pixels[10:30, 5:25] = 200
    label[10:30, 5:25] = 1
    always = RenderOptions(dihedral_probability=1.0, crop_pad_probability=1.0, resize_probability=1.0,
                           jpeg_probability=0.0)
    for _ in range(30):
        img, lab = degrade(pixels, label, rng, options=always)
        assert img.shape == lab.shape and img.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        if lab.any():  # the bright square and its label move together
            assert img[lab == 1].mean() > 150 and (img[lab == 0].mean() if (lab == 0).any() else 0) < 60


def test_jpeg_and_gamma_stay_8bit():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    out = jpeg_roundtrip(pixels, 30)
    assert out.shape == pixels.shape and out.dtype == np.uint8 and not np.array_equal(out, pixels)
    assert apply_gamma(np.array([0, 255], np.uint8), 1.7).tolist() == [0, 255]


# ----------------------------------------------------------------------------- slice dataset


def _write_slices(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    for vol in (1, 2, 3):
        for s in (10, 20):
            img = rng.integers(0, 80, (48, 40), dtype=np.uint8)
            lab = np.zeros((48, 40), np.uint8)
            img[10:30, 10:30] = 180
            lab[10:30, 10:30] = 1
            Image.fromarray(img).save(root / "images" / f"site-{vol:02d}-{s}-r1.png")
            Image.fromarray(lab).save(root / "labels" / f"site-{vol:02d}-{s}-r1.png")


def test_image_slices_are_grouped_by_volume_and_split_by_group(tmp_path):
    from liverseg.training.slices2d import ImageSliceConfig, find_image_slices, load_image_slice

    _write_slices(tmp_path / "s")
    items = find_image_slices(tmp_path / "s")
    assert sorted({i.group for i in items}) == ["site-01", "site-02", "site-03"]
    pixels, lab = load_image_slice(items[0])
    assert pixels.dtype == np.uint8 and set(np.unique(lab)) == {0, 1}
    cfg = ImageSliceConfig.from_dict({"folders": [str(tmp_path / "s")], "validation_groups": ["site-03"]})
    train, held = cfg.split()
    assert {i.group for i in held} == {"site-03"} and "site-03" not in {i.group for i in train}
    with pytest.raises(InputError, match="site-09"):
        ImageSliceConfig(folders=(str(tmp_path / "s"),), validation_groups=("site-09",)).split()
    with pytest.raises(InputError, match="images/"):
        find_image_slices(tmp_path)


def test_display_slice_dataset_mixes_rendered_volumes_and_real_slices(tmp_path):
    from liverseg.testing import phantom
    from liverseg.training.cache import prepare_cache
    from liverseg.training.datasets import Case
    from liverseg.training.slices2d import DisplaySliceDataset, find_image_slices
    from liverseg.io import write_volume

    ct, lab = phantom(shape=(8, 64, 64), spacing=(3.0, 1.5, 1.5), lesions=((3.0, None),), seed=0)
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(lab, tmp_path / "lab.nii.gz")
    case = Case(case_id="p", image_path=tmp_path / "ct.nii.gz", label_path=tmp_path / "lab.nii.gz",
                tumor_annotated=False, source="manifest")
    plan = Plan(**DISPLAY_PLAN)
    cached = prepare_cache([case], plan=plan, cache_dir=tmp_path / "cache")
    _write_slices(tmp_path / "s")
    ds = DisplaySliceDataset(cached, images=find_image_slices(tmp_path / "s"), image_fraction=0.5, plan=plan,
                             samples_per_epoch=24, foreground_fraction=0.8, tumor_fraction=0.3)
    seen = set()
    for i in range(24):
        s = ds[i]
        assert s["image"].shape == (1, 32, 32) and s["image"].dtype == torch.float32
        assert s["label"].shape == (1, 32, 32) and s["label"].dtype == torch.int64
        real = int(s["case_index"]) >= 1
        seen.add(real)
        if real:
            assert not bool(s["tumor_annotated"])  # liver-only exports: tumor supervised only where annotated
    assert seen == {True, False}
    free = DisplaySliceDataset(cached, images=find_image_slices(tmp_path / "s"), image_fraction=0.5, plan=plan,
                               samples_per_epoch=24, liver_only_tumor_free=True)
    for i in range(24):  # a tumor-free flag marks volumes, never the real exports
        s = free[i]
        assert bool(s["tumor_annotated"]) == (int(s["case_index"]) == 0)
    np.testing.assert_array_equal(ds[5]["image"].numpy(), ds[5]["image"].numpy())  # reproducible per index
    with pytest.raises(ValueError, match="display"):
        DisplaySliceDataset(cached, plan=Plan(spacing_mm=None, clip_hu=(-1, 1), mean_hu=0, std_hu=1, patch_size=(8, 8)),
                            samples_per_epoch=2)


# ----------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def display_bundle(tmp_path_factory) -> Path:
    from tiny_bundles import TINY_2D, _state

    from liverseg.models.bundle import Stage, save_bundle

    stage = Stage("net", "nnformer-liver-2d", TINY_2D, Plan(**DISPLAY_PLAN), role="segment")
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny-display-2d", name="tiny-display-2d", kind="2d",
                       stages=[stage], state_dicts={"net": _state("nnformer-liver-2d", TINY_2D, None, 0)},
                       info={"note": "test bundle"}, model_card="# tiny\n")


def test_8bit_slice_goes_in_as_it_is_and_hu_is_rendered_w400_l40(tiny_bundle_3d, display_bundle):
    from liverseg.inference import Predictor

    predictor = Predictor(tiny_bundle_3d, model_2d=display_bundle)
    rng = np.random.default_rng(4)
    hu = rng.uniform(-300, 400, (1, 37, 45)).astype(np.float32)
    pixels = render_window(hu, width_hu=400, level_hu=40)
    as_png = predictor.predict(Volume(array=pixels, spacing=None, is_hu=False, modality="OT"))
    as_dicom = predictor.predict(Volume(array=hu, spacing=None))  # HU; no spacing, so postprocessing is the same
    assert as_png.input_path_2d == "8-bit image (window unknown)"
    assert as_dicom.input_path_2d == "HU, rendered W400/L40"
    assert any("pixels" in w for w in as_png.warnings)
    np.testing.assert_array_equal(as_png.labels.array, as_dicom.labels.array)  # the same picture either way
    wide = predictor.predict(Volume(array=(pixels.astype(np.uint16) * 200), spacing=None, is_hu=False))
    assert wide.input_path_2d.startswith("16-bit")
    with pytest.raises(InputError, match="display values"):
        predictor.predict(Volume(array=np.full((1, 20, 20), -5.0), spacing=None, is_hu=False))


def test_pixel_size_gives_mm_and_is_recorded(tmp_path, tiny_bundle_3d, display_bundle):
    from PIL import Image

    from liverseg.inference import Predictor, run_case
    from liverseg.inference.pipeline import with_pixel_size

    png = tmp_path / "slice.png"
    yy, xx = np.mgrid[:40, :40]
    Image.fromarray(np.where((yy - 20) ** 2 + (xx - 18) ** 2 < 150, 170, 40 + yy).astype(np.uint8)).save(png)
    predictor = Predictor(tiny_bundle_3d, model_2d=display_bundle)
    doc = run_case(png, tmp_path / "out", predictor=predictor, pixel_size_mm=0.7)
    assert doc["run"]["pixel_size_mm"] == 0.7
    assert any("given by the user" in w for w in doc["run"]["warnings"])
    assert not any("no voxel size" in w for w in doc["run"]["warnings"])
    assert doc["analysis"]["liver_area_mm2"] is not None or doc["analysis"]["liver_area_px"] == 0
    assert doc["run"]["input_path_2d"] == "8-bit image (window unknown)"
    plain = run_case(png, tmp_path / "out2", predictor=predictor)
    assert plain["run"]["pixel_size_mm"] is None
    vol = Volume(array=np.zeros((1, 4, 4), np.uint8), spacing=None, is_hu=False)
    assert with_pixel_size(vol, 0.5).spacing == (0.5, 0.5, 0.5)
    stated = Volume(array=np.zeros((1, 4, 4), np.int16), spacing=(1.0, 0.8, 0.8))
    kept = with_pixel_size(stated, 0.5)
    assert kept.spacing == (1.0, 0.8, 0.8) and "ignored" in kept.metadata["warnings"][-1]
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(InputError, match="pixel size"):
            with_pixel_size(vol, bad)


# ----------------------------------------------------------------------------- the shared data


def test_curvas_slices_group_into_their_ten_volumes(shared_data: Path):
    from liverseg.training.slices2d import find_image_slices

    folder = shared_data / "slices2d" / "curvas"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the CURVAS slices are not in this workplace")
    items = find_image_slices(folder)
    assert len(items) == 85
    assert sorted({i.group for i in items}) == [f"curvas-{v:02d}" for v in range(1, 11)]
