"""Two-scan comparison with known answers: phantoms whose lesions shrink, grow, appear, vanish or
stay while the patient moves; a real case (3Dircadb1.17) against a moved copy with a lesion erased."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from liverseg.analysis import ComparisonRefused, compare
from liverseg.analysis.compare import Scan, load_scan
from liverseg.cli import main
from liverseg.io import Volume, write_mask, write_volume
from liverseg.testing import phantom
from liverseg.testing.moved import moved_in_world, rigidly_moved

GRID = dict(shape=(40, 96, 96), spacing=(2.5, 1.5, 1.5), seed=3)
A = (55.0, 64.5, 46.5)  # the target lesion's centre (z, y, x) mm: deep in the phantom's liver
S = (25.0, 60.0, 40.0)  # a small non-measurable lesion (7 mm)
N = (77.5, 64.5, 46.5)  # where a new lesion appears
RESAMPLED_MOVE = dict(rotation_deg=(6, 2, -1), shift_mm=(3, -5, 4), spacing=(2.0, 1.6, 1.6))


def scan(lesions):
    return phantom(**GRID, lesions=lesions)


def world_moved(pair, rotation_deg=(5, 0, 2), shift_mm=(6, -8, 10)):
    """The same voxels on a grid rotated and shifted in world space: diameters stay exact."""
    return tuple(moved_in_world(v, rotation_deg=rotation_deg, shift_mm=shift_mm) for v in pair)


@pytest.fixture(scope="module")
def baseline():
    return scan(((12.0, A), (3.5, S)))


def test_moved_and_rotated_copy_is_stable_disease_with_every_lesion_matched(baseline):
    follow = rigidly_moved(*baseline, **RESAMPLED_MOVE)
    r = compare(baseline, follow)
    assert r.response == "SD"
    assert r.kinds() == {"matched": 2}
    assert all(c.matched_by == "overlap" and c.overlap_fraction > 0.9 for c in r.lesions)
    assert r.lesions[0].is_target and r.lesions[0].baseline_ids == [1] and r.lesions[0].followup_ids == [1]
    # the registration found the move (~6.4 degrees in all) and fits the livers to within a voxel
    assert 5.0 < r.registration.rotation_deg < 8.0
    assert r.registration.liver_surface_mean_mm < 1.0 and r.registration.liver_dice_after > 0.97
    assert abs(r.recist.change_percent) < 10
    assert abs(r.patient["liver_volume_change_percent"]) < 3


def test_lesion_shrunk_40_percent_in_diameter_is_partial_response(baseline):
    r = compare(baseline, world_moved(scan(((7.2, A), (3.5, S)))))
    assert r.response == "PR"
    assert r.recist.change_percent == pytest.approx(-40, abs=4)
    rule = {x["rule"]: x for x in r.recist.rules}
    assert rule["PR"]["holds"] and not rule["PD (target sum)"]["holds"] and not rule["PD (new lesion)"]["holds"]
    target = r.lesions[0]
    assert target.kind == "matched" and target.is_target
    assert target.diameter_change_percent == pytest.approx(-40, abs=4)
    assert target.volume_change_percent == pytest.approx(100 * (0.6**3 - 1), abs=8)  # volume goes with d³


def test_lesion_grown_25_percent_and_6_mm_is_progression(baseline):
    r = compare(baseline, world_moved(scan(((15.0, A), (3.5, S)))))
    assert r.response == "PD"
    assert r.recist.change_percent >= 20 and r.recist.change_mm >= 5
    assert r.recist.change_percent == pytest.approx(25, abs=3)
    assert r.kinds() == {"matched": 2}
    assert "target sum" in r.recist.response_text


def test_new_lesion_is_progression(baseline):
    follow = rigidly_moved(*scan(((12.0, A), (3.5, S), (5.0, N))), **RESAMPLED_MOVE)
    r = compare(baseline, follow)
    assert r.response == "PD"
    assert r.kinds() == {"matched": 2, "new": 1}
    new = next(c for c in r.lesions if c.kind == "new")
    assert new.baseline_ids == [] and new.diameter_after_mm == pytest.approx(10, abs=2.5)
    assert abs(r.recist.change_percent) < 10  # the targets alone would be stable
    assert "1 new lesion" in r.recist.response_text
    # the new lesion is shown on the baseline slice where it lies after registration (z = 77.5 mm)
    assert abs(new.baseline_slice * GRID["spacing"][0] - N[0]) <= 2 * GRID["spacing"][0]


def test_every_lesion_gone_is_complete_response(baseline):
    r = compare(baseline, rigidly_moved(*scan(()), **RESAMPLED_MOVE))
    assert r.response == "CR"
    assert r.kinds() == {"disappeared": 2}
    assert r.recist.sum_followup_mm == 0 and r.patient["tumor_volume_after_ml"] == 0


def test_target_gone_but_a_non_target_left_is_partial_response(baseline):
    r = compare(baseline, world_moved(scan(((3.5, S),))))
    assert r.response == "PR" and r.kinds() == {"matched": 1, "disappeared": 1}
    assert r.recist.non_target_remaining == 1


def test_a_lesion_split_in_two_is_one_group_with_summed_diameters(baseline):
    halves = ((4.5, (A[0], A[1], A[2] - 6)), (4.5, (A[0], A[1], A[2] + 6)), (3.5, S))
    r = compare(baseline, world_moved(scan(halves)))
    split = r.lesions[0]
    assert split.kind == "split" and split.baseline_ids == [1] and sorted(split.followup_ids) == [1, 2]
    fu = {les.id: les.longest_axial_diameter_mm for les in r.followup_analysis.lesions}
    assert split.diameter_after_mm == pytest.approx(fu[1] + fu[2], abs=0.02)
    assert r.recist.targets[0]["status"].startswith("split")


def test_two_lesions_merged_into_one_are_one_group():
    two = scan(((5.0, (A[0], A[1], A[2] - 7)), (5.0, (A[0], A[1], A[2] + 7))))
    one = world_moved(scan(((11.0, A),)))
    r = compare(two, one)
    assert r.lesions[0].kind == "merged" and r.lesions[0].baseline_ids == [1, 2] and r.lesions[0].followup_ids == [1]
    # RECIST: the merged lesion counts once, for the first target; the other target gets 0
    assert [t["diameter_after_mm"] == 0 for t in r.recist.targets] == [False, True]


def test_nearby_lesions_that_do_not_overlap_match_by_centroid_distance(baseline):
    # the small lesion moves 8 mm: no overlap, within the 15 mm threshold
    moved_small = (3.5, (S[0], S[1], S[2] + 8))
    r = compare(baseline, world_moved(scan(((12.0, A), moved_small))))
    small = next(c for c in r.lesions if 2 in c.baseline_ids)
    assert small.kind == "matched" and small.matched_by == "distance"
    assert small.centroid_distance_mm == pytest.approx(8, abs=2)
    r = compare(baseline, world_moved(scan(((12.0, A), moved_small))), max_distance_mm=4)
    assert r.kinds() == {"matched": 1, "new": 1, "disappeared": 1} and r.response == "PD"


def test_the_ct_fixes_an_axial_rotation_the_liver_mask_alone_does_not():
    """Why the rigid step reads the liver-masked CT: the phantom's liver is nearly round in the axial
    plane, so its mask alone fits a wrong rotation with an equally small surface residual."""
    from liverseg.analysis.registration import register

    ct, lab = scan(((12.0, A),))
    ct2, lab2 = rigidly_moved(ct, lab, rotation_deg=(7, 0, 0), shift_mm=(0, 4, -4))
    with_ct = register(ct, lab, ct2, lab2)
    masks_only = register(None, lab, None, lab2)
    assert abs(with_ct.rotation_deg - 7) < 1.0 and with_ct.used_ct
    assert abs(masks_only.rotation_deg - 7) > 1.0 and not masks_only.used_ct  # measured 4.7 degrees
    assert masks_only.liver_surface_mean_mm < 1.0  # ... while the surfaces fit: the residual cannot tell


# --------------------------------------------------------------------------- refusals


def test_refusals_say_why(baseline):
    ct, lab = baseline
    # unknown spacing (a picture)
    flat = Volume(array=lab.array, spacing=None, is_hu=False)
    with pytest.raises(ComparisonRefused, match="voxel size") as e:
        compare(baseline, (None, flat))
    assert e.value.code == "spacing_unknown"
    # different patients in the DICOM headers
    with pytest.raises(ComparisonRefused, match="different patients") as e:
        compare(Scan(labels=lab, ct=ct, patient_id="P1"), Scan(labels=lab, ct=ct, patient_id="P2"))
    assert e.value.code == "different_patient"
    # a follow-up without a liver: another body region
    empty = lab.with_array(np.zeros(lab.shape, np.uint8))
    with pytest.raises(ComparisonRefused, match="no liver") as e:
        compare(baseline, (ct, empty))
    assert e.value.code == "different_body_region"
    # a follow-up that holds only the top few slices of the liver
    zs = np.flatnonzero((lab.array >= 1).any(axis=(1, 2)))
    keep = slice(int(zs[-1]) - 3, None)
    origin = (0.0, 0.0, (int(zs[-1]) - 3) * GRID["spacing"][0])
    short = (Volume(array=ct.array[keep].copy(), spacing=ct.spacing, origin=origin),
             Volume(array=lab.array[keep].copy(), spacing=lab.spacing, origin=origin, is_hu=False))
    with pytest.raises(ComparisonRefused, match="different body regions") as e:
        compare(baseline, short)
    assert e.value.code == "different_body_region"


def test_same_patient_id_is_reported_and_never_written(tmp_path, baseline):
    ct, lab = baseline
    r = compare(Scan(labels=lab, ct=ct, patient_id="SECRET-123"), Scan(labels=lab, ct=ct, patient_id="SECRET-123"),
                out_dir=tmp_path / "cmp")
    assert r.patient_check == "same PatientID in both DICOM headers"
    for f in (tmp_path / "cmp").iterdir():
        assert b"SECRET-123" not in f.read_bytes(), f.name


# --------------------------------------------------------------------------- files and CLI


def _study_folder(path, ct, lab):
    """A study folder as `liverseg predict` writes it (mask.nii.gz + report files), here from a known mask."""
    from liverseg.analysis import analyze
    from liverseg.reporting import write_report_files

    path.mkdir(parents=True)
    write_mask(ct, lab, path / "mask.nii.gz")
    write_report_files(path, ct=ct, labels=lab, analysis=analyze(lab, ct), run_info={"case": path.name})
    return path


def test_cli_compares_two_study_folders_and_writes_every_file(tmp_path, baseline, capsys):
    ct, lab = baseline
    fct, flab = world_moved(scan(((7.2, A), (3.5, S))))
    write_volume(ct, tmp_path / "base_ct.nii.gz")
    write_volume(fct, tmp_path / "fu_ct.nii.gz")
    b = _study_folder(tmp_path / "base", ct, lab)
    f = _study_folder(tmp_path / "fu", fct, flab)
    out = tmp_path / "cmp"
    rc = main(["compare", str(b), str(f), "-o", str(out), "--baseline-ct", str(tmp_path / "base_ct.nii.gz"),
               "--followup-ct", str(tmp_path / "fu_ct.nii.gz")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.startswith("RECIST 1.1 response: PR")
    assert {p.name for p in out.iterdir()} == {"comparison.json", "lesion_changes.csv", "lesion_pairs.png",
                                                 "comparison.html", "comparison.pdf"}
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["schema"] == "liverseg.comparison/1" and doc["response"] == "PR"
    assert doc["registration"]["used_ct"] is True and doc["registration"]["liver_surface_mean_mm"] < 1
    rows = list(csv.DictReader(open(out / "lesion_changes.csv")))
    assert [r["kind"] for r in rows] == ["matched", "matched"] and rows[0]["is_target"] == "True"
    html = (out / "comparison.html").read_text()
    assert 'data-response="PR"' in html and "data:image/png;base64," in html
    assert (out / "comparison.pdf").read_bytes()[:5] == b"%PDF-"
    # an existing output folder is refused (exit 2), and so is a study folder without a mask
    assert main(["compare", str(b), str(f), "-o", str(out)]) == 2
    assert main(["compare", str(tmp_path), str(f), "-o", str(tmp_path / "x")]) == 2
    assert "holds no mask.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_masks_without_ct_register_on_the_livers_alone(tmp_path, baseline):
    ct, lab = baseline
    write_mask(ct, lab, tmp_path / "b.nii.gz")
    _, flab = world_moved(scan(((15.0, A), (3.5, S))), rotation_deg=(0, 0, 0), shift_mm=(5, 5, -5))
    write_mask(flab, flab, tmp_path / "f.nii.gz")
    r = compare(tmp_path / "b.nii.gz", tmp_path / "f.nii.gz")
    assert r.response == "PD" and not r.registration.used_ct
    assert any("liver masks only" in w for w in r.warnings)
    assert load_scan(tmp_path / "b.nii.gz").labels.shape == lab.shape


# --------------------------------------------------------------------------- real CT


@pytest.mark.slow
def test_real_case_against_a_moved_resampled_copy_with_one_lesion_erased(shared_data):
    from scipy import ndimage

    from liverseg.training.datasets import find_cases

    folder = shared_data / "labeled" / "3Dircadb1.17"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    (case,) = find_cases(folder)
    ct, lab = case.load()
    ct2, lab2 = rigidly_moved(ct, lab, rotation_deg=(4, 0, 2), shift_mm=(5, -8, 6), spacing=(2.0, 0.8, 0.8))
    arr = np.asarray(lab2.array).copy()
    comp, n = ndimage.label(arr == 2, structure=np.ones((3, 3, 3)))
    assert n == 2
    sizes = np.bincount(comp.ravel())[1:]
    erased = int(np.argmin(sizes)) + 1
    erased_centre = np.argwhere(comp == erased).mean(axis=0)
    arr[comp == erased] = 1  # the lesion is gone: liver there
    r = compare((ct, lab), (ct2, lab2.with_array(arr)))
    assert r.kinds() == {"matched": 1, "disappeared": 1}
    gone = next(c for c in r.lesions if c.kind == "disappeared")
    kept = next(c for c in r.lesions if c.kind == "matched")
    # the disappeared one is the baseline lesion that lay where the erased one was
    base_lesion = r.baseline_analysis.lesions[gone.baseline_ids[0] - 1]
    world = np.asarray(lab2.origin) + lab2.direction @ (erased_centre[::-1] * np.asarray(lab2.spacing)[::-1])
    assert np.linalg.norm(np.asarray(r.registration.followup_point_in_baseline(world))
                          - np.asarray(base_lesion.centroid_lps_mm)) < 5
    assert kept.overlap_fraction > 0.9 and abs(kept.diameter_change_percent) < 5
    assert 3.0 < r.registration.rotation_deg < 6.0
    assert r.registration.liver_surface_mean_mm < 1.5 and r.registration.liver_dice_after > 0.97
    assert r.response == "PR"  # one of two targets gone: the sum falls by about half


def test_patient_id_is_read_from_a_dicom_folder_or_zip_and_different_patients_are_refused(tmp_path):
    import zipfile

    import pydicom

    from liverseg.analysis.compare import dicom_patient_id
    from liverseg.testing import write_dicom_series

    small = dict(shape=(24, 64, 64), spacing=(3.0, 1.5, 1.5), seed=1)
    ct, lab = phantom(**small, lesions=((6.0, None),))
    folders = {}
    for name, pid in (("a", "PAT-A"), ("b", "PAT-B")):
        folders[name] = tmp_path / name
        for p in write_dicom_series(ct, folders[name]):
            ds = pydicom.dcmread(p)
            ds.PatientID = pid
            ds.save_as(p)
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        for p in sorted(folders["b"].iterdir()):
            zf.write(p, f"series/{p.name}")
    assert dicom_patient_id(folders["a"]) == "PAT-A"
    assert dicom_patient_id(tmp_path / "b.zip") == "PAT-B"
    assert dicom_patient_id(tmp_path / "nothing-here") is None
    write_volume(ct, tmp_path / "ct.nii.gz")
    assert dicom_patient_id(tmp_path / "ct.nii.gz") is None
    write_mask(ct, lab, tmp_path / "mask.nii.gz")
    a = load_scan(tmp_path / "mask.nii.gz", ct=folders["a"])
    b = load_scan(tmp_path / "mask.nii.gz", ct=tmp_path / "b.zip")
    with pytest.raises(ComparisonRefused, match="different patients") as e:
        compare(a, b)
    assert e.value.code == "different_patient" and "PAT-" not in str(e.value)
    assert compare(a, load_scan(tmp_path / "mask.nii.gz", ct=folders["a"])).patient_check.startswith("same PatientID")


def test_a_web_study_folder_finds_its_ct_and_the_reports_targets_are_kept(tmp_path, baseline):
    ct, lab = baseline
    for name in ("b", "f"):
        (tmp_path / name / "input").mkdir(parents=True)
        write_volume(ct, tmp_path / name / "input" / "scan.nii.gz")
        _study_folder(tmp_path / name / "output", ct, lab)
    # the study's report knows more than the mask (e.g. a low-confidence lesion is no target): it is kept
    rep_path = tmp_path / "b" / "output" / "report.json"
    rep = json.loads(rep_path.read_text())
    assert [les["is_target_candidate"] for les in rep["analysis"]["lesions"]] == [True, False]
    rep["analysis"]["lesions"][0]["is_target_candidate"] = False
    rep_path.write_text(json.dumps(rep))
    scan_b = load_scan(tmp_path / "b" / "output")
    assert scan_b.ct is not None and scan_b.name == "b"
    r = compare(scan_b, tmp_path / "f" / "output")
    assert r.registration.used_ct
    assert r.recist.targets == [] and r.response == "non-CR/non-PD"
