"""Surface meshes of the liver and of each lesion, for the 3D view and for download.

:func:`build_meshes` turns a label Volume into triangle meshes in world millimetres:
each structure's binary mask is cropped, blurred a little (Gaussian, ``presmooth_voxels``
voxels) and cut at 0.5 by marching cubes (scikit-image), the surface is smoothed
(Taubin's λ/μ filter, which does not shrink it as plain Laplacian smoothing does) and
decimated with quadric error metrics (``fast-simplification``, Fast-Quadric-Mesh-Simplification).
Lesions are the 26-connected components of label 2, numbered as
:func:`liverseg.analysis.analyze` numbers them (by decreasing size), so mesh ``lesion-3``
is lesion 3 of the report.

:func:`write_meshes` writes them as binary PLY files (read by NiiVue, 3D Slicer, MeshLab,
ParaView, Blender) in the RAS world coordinates of the case's NIfTI mask (the NIfTI
convention, so they overlay ``mask.nii.gz`` in NiiVue; 3D Slicer reads PLY as LPS unless
told otherwise), plus ``meshes.json`` describing them.

>>> files = write_meshes("out/case", labels)  # doctest: +SKIP
>>> files["meshes"]
'meshes.json'
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.analysis.components import bounding_box
from liverseg.io.volume import Volume

__all__ = ["Mesh", "MESH_MANIFEST", "LESION_COLORS", "LIVER_COLOR", "build_meshes", "write_meshes", "lesion_components",
           "mesh_file_names", "write_meshes_or_warn", "is_mesh_file"]

log = logging.getLogger(__name__)

#: The manifest ``write_meshes`` writes beside the PLY files.
MESH_MANIFEST = "meshes.json"
#: RGBA (0-255) of the liver surface: translucent in the 3D view.
LIVER_COLOR = (222, 160, 120, 90)
#: One colour per lesion, repeated: Okabe & Ito's colour-blind-safe set, liver's orange left out.
LESION_COLORS = ((0, 114, 178, 255), (213, 94, 0, 255), (0, 158, 115, 255), (204, 121, 167, 255),
                 (86, 180, 233, 255), (240, 228, 66, 255), (120, 94, 240, 255), (0, 0, 0, 255))


@dataclasses.dataclass(frozen=True)
class Mesh:
    """One triangle surface: ``vertices`` (N, 3) float32 in RAS mm, ``faces`` (M, 3) int32 (outward normals)."""

    name: str
    structure: str  # "liver" or "lesion"
    lesion_id: int | None
    vertices: np.ndarray
    faces: np.ndarray
    color_rgba: tuple[int, int, int, int]
    voxel_count: int

    @property
    def file_name(self) -> str:
        return f"mesh-{self.name}.ply"


def mesh_file_names(names: list[str]) -> list[str]:
    """The mesh files among ``names``: ``meshes.json`` and ``mesh-*.ply``, the liver first, lesions by number."""
    def key(n: str) -> tuple[int, int, str]:
        if n == MESH_MANIFEST:
            return (0, 0, n)
        stem = n[len("mesh-"):-len(".ply")]
        if stem == "liver":
            return (1, 0, n)
        num = stem.rsplit("-", 1)[-1]
        return (2, int(num) if num.isdigit() else 10**6, n)

    return sorted((n for n in names if is_mesh_file(n)), key=key)


def _components_in_box(labels: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...], int]:
    """Lesions numbered as ``analyze`` numbers them, labelled inside the tumor's bounding box (+1 voxel)."""
    from scipy import ndimage

    tumor = np.asarray(labels) == 2
    box = bounding_box(tumor, pad=1)
    if box is None:
        return np.zeros((0, 0, 0), np.int32), tuple(slice(0, 0) for _ in range(3)), 0
    comp, n = ndimage.label(tumor[box], structure=ndimage.generate_binary_structure(3, 3))
    boxes = ndimage.find_objects(comp)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    # analyze's order: decreasing size, then first slice, then first row (in the whole scan's indices)
    order = sorted(range(n), key=lambda k: (-int(sizes[k]), boxes[k][0].start, boxes[k][1].start))
    lut = np.zeros(n + 1, np.int32)
    for new, old in enumerate(order, start=1):
        lut[old + 1] = new
    return lut[comp], box, n


def lesion_components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 2's 26-connected components numbered 1..n by decreasing size, as ``analyze`` numbers lesions.

    Ties are broken by the component's first slice, then first row (``analyze``'s rule).
    Returns the component map (int32, the shape of ``labels``) and n.
    """
    lab = np.asarray(labels)
    comp_box, box, n = _components_in_box(lab)
    full = np.zeros(lab.shape, np.int32)
    if n:
        full[box] = comp_box
    return full, n


def _adjacency(faces: np.ndarray, n_vertices: int) -> Any:
    """Row-normalised vertex adjacency (sparse) of a triangle mesh."""
    from scipy import sparse

    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sparse.coo_matrix((np.ones(i.size, np.float32), (i, j)), shape=(n_vertices, n_vertices)).tocsr()
    a.data[:] = 1.0
    deg = np.asarray(a.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    return sparse.diags(1.0 / deg) @ a


def _taubin(vertices: np.ndarray, faces: np.ndarray, *, iterations: int, lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin λ/μ smoothing (Taubin 1995): a Laplacian step with λ, then one with μ < -λ, which keeps the volume."""
    if iterations <= 0 or len(faces) == 0:
        return vertices
    w = _adjacency(faces, len(vertices))
    v = vertices.astype(np.float64)
    for _ in range(iterations):
        v = v + lam * (w @ v - v)
        v = v + mu * (w @ v - v)
    return v


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle surface (mm³ for mm vertices); negative when its faces wind inwards."""
    v = np.asarray(vertices, np.float64)
    return float(np.einsum("ij,ij->i", v[faces[:, 0]], np.cross(v[faces[:, 1]], v[faces[:, 2]])).sum() / 6.0)


def _surface(
    mask: np.ndarray,
    affine_ras: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    presmooth_voxels: float,
    smooth_iterations: int,
    max_faces: int,
    origin_zyx: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray] | None:
    """The smoothed, decimated surface of the binary ``mask`` (z, y, x) in RAS mm, or None when it is empty.

    ``mask`` may be a crop of the scan whose first voxel is ``origin_zyx``.
    """
    from scipy import ndimage
    from skimage import measure

    box = bounding_box(mask)
    if box is None:
        return None
    pad = 3
    raw = mask[box]
    crop = np.pad(raw, pad).astype(np.float32)
    offset = np.array([b.start for b in box], float) + np.asarray(origin_zyx, float) - pad
    if presmooth_voxels > 0:
        # in voxels, scaled so the blur is about the same in mm along a thick-sliced z
        sz = np.asarray(spacing_zyx, float)
        sigma = presmooth_voxels * sz.min() / sz
        crop = ndimage.gaussian_filter(crop, sigma=sigma, mode="constant")
    if crop.max() <= 0.5:  # a tiny component blurred below the level: cut the raw mask instead
        crop = np.pad(raw, pad).astype(np.float32)
    # a large liver at full resolution gives ~10^6 triangles; every second voxel is plenty before decimation
    step = 2 if crop.size > 8_000_000 else 1
    verts, faces, _, _ = measure.marching_cubes(crop, level=0.5, step_size=step, allow_degenerate=False)
    if len(faces) == 0:
        return None
    verts = _taubin(verts, faces, iterations=smooth_iterations)
    if len(faces) > max_faces:
        import fast_simplification

        verts, faces = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int32),
                                                    target_reduction=1.0 - max_faces / len(faces))
    zyx = np.asarray(verts, float) + offset
    xyz1 = np.concatenate([zyx[:, ::-1], np.ones((len(zyx), 1))], axis=1)
    ras = (affine_ras @ xyz1.T).T[:, :3]
    faces = np.asarray(faces, np.int32)
    # the (z, y, x) -> (x, y, z) swap and the affine may mirror the surface: make the normals point outwards
    if _signed_volume(ras, faces) < 0:
        faces = faces[:, ::-1]
    return ras.astype(np.float32), np.ascontiguousarray(faces)


def build_meshes(
    labels: Volume,
    *,
    max_lesions: int = 60,
    presmooth_voxels: float = 1.0,
    smooth_iterations: int = 10,
    max_liver_faces: int = 40_000,
    max_lesion_faces: int = 4_000,
) -> list[Mesh]:
    """Surfaces of the liver (labels 1 + 2) and of each lesion (label 2 components) in RAS mm.

    Args:
        labels: the label Volume (0 background, 1 liver, 2 tumor) with its geometry; a single
            slice (2D) has no surface and gives no mesh.
        max_lesions: lesions meshed, largest first (their ids stay those of the report).
        presmooth_voxels: Gaussian blur of each mask before marching cubes (sigma, in voxels of the
            finest axis); 0 cuts the raw voxel staircase.
        smooth_iterations: Taubin λ/μ iterations on the surface.
        max_liver_faces, max_lesion_faces: triangles kept after decimation.

    Returns:
        the liver first (when there is one), then lesions 1, 2, ... .
    """
    if max_lesions < 0 or smooth_iterations < 0 or presmooth_voxels < 0:
        raise ValueError("max_lesions, smooth_iterations and presmooth_voxels must be >= 0")
    if max_liver_faces < 100 or max_lesion_faces < 20:
        raise ValueError(f"too few faces to keep a surface: max_liver_faces={max_liver_faces} (>= 100), "
                         f"max_lesion_faces={max_lesion_faces} (>= 20)")
    lab = np.asarray(labels.array)
    if lab.ndim != 3 or lab.shape[0] < 2:
        return []
    spacing = labels.spacing if labels.spacing is not None else (1.0, 1.0, 1.0)
    affine = labels.affine_ras()
    meshes: list[Mesh] = []
    liver = lab >= 1
    n_liver = int(np.count_nonzero(liver))
    if n_liver:
        surf = _surface(liver, affine, spacing, presmooth_voxels=presmooth_voxels,
                        smooth_iterations=smooth_iterations, max_faces=max_liver_faces)
        if surf is not None:
            meshes.append(Mesh("liver", "liver", None, surf[0], surf[1], LIVER_COLOR, n_liver))
    comp, tbox, n = _components_in_box(lab)
    if n:
        from scipy import ndimage

        boxes = ndimage.find_objects(comp)
        for k in range(1, min(n, max_lesions) + 1):
            sub = comp[boxes[k - 1]] == k
            origin = tuple(b.start + o.start for b, o in zip(boxes[k - 1], tbox))
            surf = _surface(sub, affine, spacing, presmooth_voxels=presmooth_voxels * 0.6,
                            smooth_iterations=max(smooth_iterations // 2, 0), max_faces=max_lesion_faces,
                            origin_zyx=origin)
            if surf is not None:
                meshes.append(Mesh(f"lesion-{k}", "lesion", k, surf[0], surf[1],
                                   LESION_COLORS[(k - 1) % len(LESION_COLORS)], int(np.count_nonzero(sub))))
    return meshes


def _ply_bytes(mesh: Mesh) -> bytes:
    """A binary little-endian PLY: float32 x y z per vertex, uchar count + int32 indices per face."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment liverseg {mesh.structure}{'' if mesh.lesion_id is None else f' {mesh.lesion_id}'}; RAS mm\n"
        f"element vertex {len(mesh.vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(mesh.faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode("ascii")
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"] = 3
    faces["v"] = mesh.faces
    return header + np.ascontiguousarray(mesh.vertices, "<f4").tobytes() + faces.tobytes()


def write_meshes(out_dir: str | os.PathLike[str], labels: Volume, **options: Any) -> dict[str, str]:
    """Build the meshes of ``labels`` and write ``mesh-*.ply`` + ``meshes.json`` into ``out_dir``.

    Each file is written to a temporary name and renamed, so a crash leaves no half-written
    mesh. ``options`` go to :func:`build_meshes`. A single slice gets no meshes (returns ``{}``).

    Returns:
        ``{"meshes": "meshes.json", "mesh_liver": "mesh-liver.ply", "mesh_lesion_1": ...}``.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    meshes = build_meshes(labels, **options)
    if not meshes:
        return {}
    files: dict[str, str] = {}
    entries = []
    for m in meshes:
        _atomic_write(out / m.file_name, _ply_bytes(m))
        files["mesh_" + m.name.replace("-", "_")] = m.file_name
        lo, hi = m.vertices.min(axis=0), m.vertices.max(axis=0)
        entries.append({
            "file": m.file_name, "name": m.name, "structure": m.structure, "lesion_id": m.lesion_id,
            "labels": [1, 2] if m.structure == "liver" else [2], "voxel_count": m.voxel_count,
            "vertices": int(len(m.vertices)), "faces": int(len(m.faces)), "color_rgba": list(m.color_rgba),
            "bounds_ras_mm": [[round(float(v), 2) for v in lo], [round(float(v), 2) for v in hi]],
        })
    n_lesions = _components_in_box(np.asarray(labels.array))[2]
    doc = {
        "schema": "liverseg.meshes/1",
        "space": "RAS, mm: the world coordinates of the case's NIfTI mask (mask.nii.gz)",
        "format": "PLY, binary little endian, triangles",
        "method": "Gaussian-blurred mask, marching cubes at 0.5 (scikit-image), Taubin smoothing, "
                  "quadric decimation (fast-simplification)",
        "lesions_total": n_lesions,
        "lesions_meshed": sum(1 for m in meshes if m.structure == "lesion"),
        "seconds": round(time.perf_counter() - t0, 3),
        "meshes": entries,
    }
    _atomic_write(out / MESH_MANIFEST, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    files["meshes"] = MESH_MANIFEST
    log.info("%d meshes (%d lesions) in %.2f s", len(meshes), doc["lesions_meshed"], doc["seconds"])
    return files


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_meshes_or_warn(out_dir: str | os.PathLike[str], labels: Volume, warnings: list[str]) -> dict[str, str]:
    """:func:`write_meshes`, but a failure only adds a sentence to ``warnings``: every other output stands."""
    try:
        return write_meshes(out_dir, labels)
    except MemoryError:
        raise
    except Exception as exc:  # the 3D view is a convenience; the mask and the reports are the result
        log.warning("no meshes were written (%s)", type(exc).__name__)
        for stale in Path(out_dir).glob("mesh-*.ply"):
            stale.unlink(missing_ok=True)
        warnings.append(f"no 3D surface meshes were written ({type(exc).__name__}: {exc})")
        return {}


def is_mesh_file(name: str) -> bool:
    """True for the file names :func:`write_meshes` writes (``meshes.json``, ``mesh-*.ply``)."""
    return name == MESH_MANIFEST or (name.startswith("mesh-") and name.endswith(".ply"))
