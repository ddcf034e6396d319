"""Surface meshes (reporting/meshes.py): volumes, outward normals, world coordinates, the report's lesion numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverseg.analysis import analyze
from liverseg.io import Volume
from liverseg.reporting.meshes import build_meshes, lesion_components, mesh_file_names, write_meshes
from liverseg.testing import phantom, phantom_2d


def _signed_volume_mm3(mesh) -> float:
    v, f = mesh.vertices.astype(np.float64), mesh.faces
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def _ball(shape, spacing, centre_vox, radius_mm, *, origin=(0.0, 0.0, 0.0), direction=None) -> Volume:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), centre_vox, spacing))
    lab = (d2 <= radius_mm**2).astype(np.uint8) * 2
    return Volume(array=lab, spacing=spacing, origin=origin, direction=np.eye(3) if direction is None else direction,
                  modality="SEG", is_hu=False)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0])], ids=["identity", "flipped"])
def test_sphere_volume_normals_and_world_position(direction):
    spacing = (2.0, 1.0, 1.0)
    vol = _ball((24, 48, 48), spacing, (12, 24, 24), 15.0, origin=(10.0, -20.0, 30.0), direction=direction)
    meshes = build_meshes(vol)
    assert [m.name for m in meshes] == ["liver", "lesion-1"]  # tumor is liver too
    lesion = meshes[1]
    true_ml = 4 / 3 * np.pi * 15.0**3 / 1000
    assert _signed_volume_mm3(lesion) / 1000 == pytest.approx(true_ml, rel=0.05)  # > 0: normals point outwards
    # the centre lands on the voxel centre's world position, in RAS (NIfTI) coordinates
    centre_ras = (vol.affine_ras() @ np.array([24, 24, 12, 1.0]))[:3]
    assert np.allclose(lesion.vertices.mean(axis=0), centre_ras, atol=0.6)
    radii = np.linalg.norm(lesion.vertices - centre_ras, axis=1)
    assert radii.min() > 12.5 and radii.max() < 17.0


def test_lesions_are_numbered_as_the_report_numbers_them():
    ct, labels = phantom(shape=(32, 80, 80), spacing=(2.5, 1.5, 1.5), lesions=((4.0, None), (9.0, None), (6.0, None)))
    a = analyze(labels, ct)
    meshes = {m.lesion_id: m for m in build_meshes(labels) if m.structure == "lesion"}
    assert sorted(meshes) == [1, 2, 3]
    for les in a.lesions:
        assert meshes[les.id].voxel_count == les.voxel_count
    comp, n = lesion_components(labels.array)
    assert n == 3 and [int(np.count_nonzero(comp == k)) for k in (1, 2, 3)] == [l.voxel_count for l in a.lesions]


def test_decimation_caps_the_faces_and_keeps_the_volume():
    vol = _ball((40, 80, 80), (1.0, 1.0, 1.0), (20, 40, 40), 18.0)
    full = build_meshes(vol, max_lesion_faces=10**7)[1]
    small = build_meshes(vol, max_lesion_faces=1000)[1]
    assert len(full.faces) > 5000 and len(small.faces) <= 1000
    assert _signed_volume_mm3(small) == pytest.approx(_signed_volume_mm3(full), rel=0.05)


def test_write_meshes_writes_ply_files_and_a_manifest(tmp_path):
    _, labels = phantom(shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0), lesions=((6.0, None), (4.0, None)))
    files = write_meshes(tmp_path, labels)
    assert files["meshes"] == "meshes.json" and files["mesh_liver"] == "mesh-liver.ply"
    doc = json.loads((tmp_path / "meshes.json").read_text())
    assert [m["name"] for m in doc["meshes"]] == ["liver", "lesion-1", "lesion-2"]
    assert doc["lesions_total"] == doc["lesions_meshed"] == 2
    for entry in doc["meshes"]:
        raw = (tmp_path / entry["file"]).read_bytes()
        header, _, body = raw.partition(b"end_header\n")
        assert b"format binary_little_endian 1.0" in header
        assert f"element vertex {entry['vertices']}".encode() in header
        assert f"element face {entry['faces']}".encode() in header
        assert len(body) == entry["vertices"] * 12 + entry["faces"] * 13
        counts = np.frombuffer(body[entry["vertices"] * 12:], dtype=[("n", "u1"), ("v", "<i4", (3,))])
        assert (counts["n"] == 3).all() and counts["v"].max() < entry["vertices"]
    assert mesh_file_names(sorted(p.name for p in tmp_path.iterdir())) == [
        "meshes.json", "mesh-liver.ply", "mesh-lesion-1.ply", "mesh-lesion-2.ply"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_single_slice_and_an_empty_mask_have_no_meshes(tmp_path):
    _, labels = phantom_2d(shape=(64, 64), spacing=(2.0, 2.0), lesions=((5.0, None),))
    assert build_meshes(labels) == [] and write_meshes(tmp_path, labels) == {}
    empty = Volume(array=np.zeros((8, 16, 16), np.uint8), spacing=(1.0, 1.0, 1.0), modality="SEG", is_hu=False)
    assert build_meshes(empty) == []
    assert not list(tmp_path.iterdir())


def test_max_lesions_keeps_the_largest(tmp_path):
    ct, labels = phantom(shape=(32, 80, 80), spacing=(2.5, 1.5, 1.5), lesions=((4.0, None), (9.0, None), (6.0, None)))
    ids = [m.lesion_id for m in build_meshes(labels, max_lesions=2) if m.structure == "lesion"]
    assert ids == [1, 2]
    with pytest.raises(ValueError, match="max_liver_faces"):
        build_meshes(labels, max_liver_faces=10)
