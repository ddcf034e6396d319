"""Dataset adapters: LiTS / MSD / manifest layouts on tiny phantoms, IRCADb / CHAOS on the real data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg.errors import InputError, NoImagesError
from liverseg.testing.phantom import phantom
from liverseg.training import Case, find_cases

SPACING = (2.5, 1.5, 1.5)


def _save_nifti(path: Path, array: np.ndarray, spacing=SPACING) -> None:
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), str(path))


@pytest.fixture(scope="module")
def tiny() -> tuple[np.ndarray, np.ndarray]:
    ct, lab = phantom(shape=(12, 48, 48), spacing=(5.0, 2.0, 2.0), lesions=((5.0, None),), seed=1)
    return ct.array, lab.array


def test_lits_layout(tmp_path: Path, tiny) -> None:
    ct, lab = tiny
    sub = tmp_path / "batch1"
    sub.mkdir()
    _save_nifti(sub / "volume-3.nii.gz", ct)
    _save_nifti(sub / "segmentation-3.nii.gz", lab)
    _save_nifti(sub / "volume-4.nii", ct)  # no segmentation: skipped
    cases = find_cases(tmp_path, layout="lits")
    assert [c.case_id for c in cases] == ["lits-3"]
    c = cases[0]
    assert c.tumor_annotated and c.source == "lits"
    img, labels = c.load()
    assert img.array.dtype == np.int16 and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(img.array, ct)
    np.testing.assert_array_equal(labels.array, lab)
    assert img.spacing == pytest.approx(SPACING)


def test_msd_layout_and_auto(tmp_path: Path, tiny) -> None:
    ct, lab = tiny
    root = tmp_path / "Task03_Liver"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "cancer"}}))
    _save_nifti(root / "imagesTr" / "liver_7.nii.gz", ct)
    _save_nifti(root / "labelsTr" / "liver_7.nii.gz", lab)
    _save_nifti(root / "imagesTr" / "._liver_7.nii.gz", ct)  # macOS junk is ignored
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.source, c.tumor_annotated) for c in cases] == [("liver_7", "msd", True)]
    _, labels = cases[0].load()
    assert set(np.unique(labels.array)) == {0, 1, 2}


def test_manifest_flags_spacing_and_binary_masks(tmp_path: Path, tiny) -> None:
    ct, lab = tiny
    _save_nifti(tmp_path / "a.nii.gz", ct)
    _save_nifti(tmp_path / "a_seg.nii.gz", lab)
    _save_nifti(tmp_path / "b.nii.gz", ct)
    _save_nifti(tmp_path / "b_liver.nii.gz", (lab > 0).astype(np.uint8) * 255)
    (tmp_path / "list.csv").write_text(
        "image,label,liver_only,spacing_mm\n"
        "a.nii.gz,a_seg.nii.gz,no,\n"
        "b.nii.gz,b_liver.nii.gz,yes,\"3.0,1.6,1.6\"\n"
    )
    cases = {c.case_id: c for c in find_cases(tmp_path / "list.csv")}
    assert cases["a"].tumor_annotated and not cases["b"].tumor_annotated
    assert cases["b"].spacing_override_mm == (3.0, 1.6, 1.6)
    img, labels = cases["b"].load()
    assert img.spacing == (3.0, 1.6, 1.6)
    assert set(np.unique(labels.array)) == {0, 1}  # 0/255 -> liver


def test_spacing_override_argument_and_unit_spacing_warning(tmp_path: Path, tiny, caplog) -> None:
    ct, lab = tiny
    _save_nifti(tmp_path / "volume-1.nii.gz", ct, spacing=(1.0, 1.0, 1.0))
    _save_nifti(tmp_path / "segmentation-1.nii.gz", lab, spacing=(1.0, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="liverseg.training.datasets"):
        find_cases(tmp_path)
    assert "1.0 mm" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liverseg.training.datasets"):
        (case,) = find_cases(tmp_path, spacing_overrides={"lits-1": (2.0, 1.6, 1.6)})
    assert "1.0 mm" not in caplog.text
    assert case.load()[0].spacing == (2.0, 1.6, 1.6)
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path, spacing_overrides={"nope": (1, 1, 1)})
    # a training recipe's spacing_overrides silence the warning too (the trainer applies them
    # after finding the cases of every data folder)
    import dataclasses

    from liverseg.training.config import load_config
    from liverseg.training.trainer import _find_cases

    recipe = load_config(Path(__file__).resolve().parents[1] / "configs" / "liver-tumor-3d.json")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liverseg.training.datasets"):
        (case,) = _find_cases(dataclasses.replace(recipe, data=[str(tmp_path)], spacing_overrides={"lits-1": [2.0, 1.6, 1.6]}, axes_overrides={}))
    assert "1.0 mm" not in caplog.text
    assert case.spacing_override_mm == (2.0, 1.6, 1.6)
    with caplog.at_level(logging.WARNING, logger="liverseg.training.datasets"):
        _find_cases(dataclasses.replace(recipe, data=[str(tmp_path)], spacing_overrides={}, axes_overrides={}))
    assert "1.0 mm" in caplog.text


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "missing")
    with pytest.raises(NoImagesError, match="no labeled case"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        find_cases(tmp_path, layout="kaggle")
    with pytest.raises(ValueError, match="source"):
        Case("x", Path("a"), None, True, "other")
    bad = tmp_path / "m.csv"
    bad.write_text("image,label\nnothere.nii.gz,x.nii.gz\n")
    with pytest.raises(InputError, match="does not exist"):
        find_cases(bad)


@pytest.mark.realdata
def test_real_labeled_cases_found_with_flags(shared_data: Path) -> None:
    cases = {c.case_id: c for c in find_cases(shared_data / "labeled")}
    assert {k: (c.source, c.tumor_annotated) for k, c in cases.items()} == {
        "3Dircadb1.17": ("ircadb", True),
        "3Dircadb1.7": ("ircadb", False),  # liver-only: its tumor lies outside the liver
        "chaos-ct-sample": ("chaos", False),
        "lits-117": ("lits", True),
    }


@pytest.mark.realdata
def test_chaos_masks_follow_file_name_order(shared_data: Path) -> None:
    (case,) = find_cases(shared_data / "labeled" / "chaos-ct-sample", layout="chaos")
    ct, lab = case.load()
    assert ct.shape == lab.shape == (78, 512, 512)
    liver = lab.array == 1
    hu = ct.array[liver]
    # the masks sit on liver tissue (contrast-enhanced, ~140 HU): pairing them in
    # ImagePositionPatient order instead (reversed here) puts them on other organs
    assert np.mean((hu > 60) & (hu < 220)) > 0.95
    reversed_hu = ct.array[liver[::-1]]
    assert np.mean((reversed_hu > 60) & (reversed_hu < 220)) < 0.9


@pytest.mark.realdata
def test_ircadb_tumor_inside_liver(shared_data: Path) -> None:
    (case,) = find_cases(shared_data / "labeled" / "3Dircadb1.17", layout="ircadb")
    ct, lab = case.load()
    counts = np.bincount(lab.array.ravel(), minlength=3)
    assert 180_000 < counts[2] < 190_000  # the README's 186k tumor voxels, all inside the liver
    assert counts[1] > 1_000_000
    assert ct.array[lab.array == 2].mean() < ct.array[lab.array == 1].mean() - 20  # hypodense lesions


def test_axes_override_puts_axial_slices_first(tmp_path: Path, tiny) -> None:
    """A file whose axial slices lie along its last stored axis is read back axial-first."""
    ct, lab = tiny
    # store the volume with its axes reversed, as the LiTS crop in ../shared/data is
    _save_nifti(tmp_path / "volume-1.nii.gz", np.ascontiguousarray(ct.transpose(2, 1, 0)), spacing=(2.0, 2.0, 5.0))
    _save_nifti(tmp_path / "segmentation-1.nii.gz", np.ascontiguousarray(lab.transpose(2, 1, 0)), spacing=(2.0, 2.0, 5.0))
    case = find_cases(tmp_path, layout="lits")[0].with_axes((2, 1, 0))
    img, labels = case.load()
    np.testing.assert_array_equal(img.array, ct)
    np.testing.assert_array_equal(labels.array, lab)
    assert img.spacing == pytest.approx((5.0, 2.0, 2.0))
    assert img.metadata["axes_override"] == [2, 1, 0]
    with pytest.raises(ValueError, match="permutation"):
        case.with_axes((0, 0, 1))
