"""Dataset adapters: find (CT, label) pairs in the layouts users have, and load them.

Every adapter yields :class:`Case` objects; ``Case.load()`` returns a CT
:class:`~liverseg.io.Volume` (int16 HU) and a label Volume (uint8: 0 background,
1 liver, 2 tumor) on the same grid.

Layouts (``find_cases(root, layout=...)``):

* ``"lits"``: LiTS17, ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` (labels 0/1/2),
  case id ``lits-N``.
* ``"msd"``: Medical Segmentation Decathlon / nnU-Net, ``imagesTr/NAME[_0000].nii.gz`` +
  ``labelsTr/NAME.nii.gz`` next to ``dataset.json``; case id ``NAME``.
* ``"ircadb"``: 3D-IRCADb, ``3Dircadb1.N/PATIENT_DICOM[.zip]`` + ``MASKS_DICOM[.zip]``:
  ``liver`` = 1, ``livertumor*`` = 2 inside the liver, other structures ignored; a patient
  without ``livertumor*`` masks is liver-only (``tumor_annotated=False``). Case id = folder name.
* ``"chaos"``: CHAOS CT, ``DICOM_anon/`` + ``Ground/*.png`` (liver only); mask k belongs to
  the k-th DICOM file in file-name order (the organisers' rule). Case id = folder name, prefixed ``chaos-`` unless it says chaos.
* ``"manifest"``: a CSV file with columns ``image``, ``label`` and optionally
  ``tumor_annotated`` (or ``liver_only``), ``spacing_mm`` ("z,y,x") and ``case_id``;
  relative paths are relative to the CSV's folder.
* ``"auto"``: every case of every layout found under ``root`` (recursively).

``tumor_annotated=False`` means *tumor status unknown* (liver-only annotation), not
tumor-free: its tumor loss must be left out.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from liverseg.errors import CorruptFileError, InputError, NoImagesError
from liverseg.io.volume import Volume

__all__ = ["Case", "find_cases", "LAYOUTS"]

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "lits", "msd", "ircadb", "chaos", "manifest")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def _spacing_tuple(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,;x\s]+", value.strip()) if v]
        if not value:
            return None
    sp = tuple(float(v) for v in value)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"a spacing override must be three positive numbers in mm (z, y, x); got {value!r}")
    return sp  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Case:
    """One training case: where its CT and label mask are, and what the mask annotates.

    Args:
        case_id: unique name (``lits-117``, ``3Dircadb1.17``, ``chaos-ct-sample``...).
        image_path: CT file, DICOM folder or DICOM zip.
        label_path: label file / mask folder / mask zip, or ``None`` for an unlabeled case.
        tumor_annotated: ``False`` for a liver-only annotation: tumor status *unknown*
            (leave its tumor loss out), not tumor-free.
        source: ``"lits"``, ``"msd"``, ``"ircadb"``, ``"chaos"`` or ``"manifest"``.
        spacing_override_mm: (z, y, x) mm that replaces the spacing stored in the file
            (e.g. for the LiTS crop in ../shared/data, whose header says 1.0 mm); given in
            the axis order after ``axes_override``.
        axes_override: a permutation of the (z, y, x) array axes as read, for files whose
            header puts the axes in the wrong order: axis 0 of the result must run
            cranio-caudally (axial slices), 1 antero-posterior, 2 left-right. The LiTS crop in
            ../shared/data needs ``(2, 1, 0)``: its axial slices lie along the file's first
            axis. The geometry of such a case is unknown, so origin and direction are reset.
    """

    case_id: str
    image_path: Path
    label_path: Path | None
    tumor_annotated: bool
    source: str
    spacing_override_mm: tuple[float, float, float] | None = None
    axes_override: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.case_id or "/" in self.case_id or "\\" in self.case_id:
            raise ValueError(f"case_id must be a non-empty name without slashes; got {self.case_id!r}")
        if self.source not in LAYOUTS[1:]:
            raise ValueError(f"source must be one of {LAYOUTS[1:]}; got {self.source!r}")
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.label_path is not None:
            object.__setattr__(self, "label_path", Path(self.label_path))
        object.__setattr__(self, "spacing_override_mm", _spacing_tuple(self.spacing_override_mm))
        if self.axes_override is not None:
            axes = tuple(int(a) for a in self.axes_override)
            if sorted(axes) != [0, 1, 2]:
                raise ValueError(f"axes_override must be a permutation of (0, 1, 2); got {self.axes_override!r}")
            object.__setattr__(self, "axes_override", axes)

    def with_axes(self, axes: Sequence[int] | None) -> "Case":
        """This case with ``axes_override`` replaced."""
        return dataclasses.replace(self, axes_override=None if axes is None else tuple(int(a) for a in axes))

    def with_spacing(self, spacing_mm: Sequence[float] | None) -> "Case":
        """This case with ``spacing_override_mm`` replaced."""
        return dataclasses.replace(self, spacing_override_mm=_spacing_tuple(spacing_mm))

    def load(self) -> tuple[Volume, Volume]:
        """Read the CT (int16 HU) and its labels (uint8 0/1/2) on the same grid.

        Raises:
            InputError: the files cannot be read or do not match.
        """
        if self.label_path is None:
            raise InputError(f"case {self.case_id} has no label mask; training needs one")
        if self.source == "ircadb":
            ct = _read_ct(self.image_path)
            lab = _ircadb_labels(self.label_path, ct, case_id=self.case_id)
        elif self.source == "chaos":
            ct = _read_ct(self.image_path)
            lab = _chaos_labels(self.image_path, self.label_path, ct, case_id=self.case_id)
        else:
            ct = _read_ct(self.image_path)
            lab = _read_label_file(self.label_path, ct, case_id=self.case_id)
        arr = np.clip(np.rint(np.asarray(ct.array, dtype=np.float32)), -32768, 32767).astype(np.int16)
        spacing = ct.spacing
        meta = {**ct.metadata, "case_id": self.case_id, "source": self.source}
        if self.axes_override is not None:
            arr = np.ascontiguousarray(arr.transpose(self.axes_override))
            lab = np.ascontiguousarray(np.asarray(lab).transpose(self.axes_override))
            if spacing is not None:
                spacing = tuple(spacing[a] for a in self.axes_override)
            meta["axes_override"] = list(self.axes_override)
            ct = Volume(array=arr, spacing=spacing, modality=ct.modality, is_hu=ct.is_hu, metadata=meta)
        if self.spacing_override_mm is not None:
            spacing = self.spacing_override_mm
        ct = ct.with_array(arr, spacing=spacing, metadata=meta)
        lab = ct.with_array(lab, is_hu=False, metadata={"case_id": self.case_id, "source": self.source})
        return ct, lab


# --------------------------------------------------------------------------- reading


def _read_ct(path: Path) -> Volume:
    """The CT at ``path`` (file, DICOM folder or zip), read by :func:`liverseg.io.read_volume`."""
    from liverseg.io import read_volume

    return read_volume(path)


def _read_label_file(path: Path, ct: Volume, *, case_id: str) -> np.ndarray:
    """A label image file resampled (nearest) onto the CT's grid when the grids differ; values 0/1/2."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CorruptFileError(f"cannot read the label mask {path} of case {case_id}: {exc}") from exc
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    same_grid = arr.shape == ct.shape
    if same_grid and ct.spacing is not None:
        ref = ct.to_sitk()
        same_grid = np.allclose(img.GetDirection(), ref.GetDirection(), atol=1e-3) and np.allclose(
            img.GetOrigin(), ref.GetOrigin(), atol=1e-2
        )
    if not same_grid:
        ref = ct.to_sitk()
        if img.GetDimension() != 3:
            raise InputError(f"label mask {path} of case {case_id} is not 3D; expected the CT's grid {ct.shape}")
        res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
        arr2 = sitk.GetArrayFromImage(res)
        if arr.shape == ct.shape and not (arr2 > 0).any() and (arr > 0).any():
            # geometry disagrees (e.g. a header without orientation): trust the index grid
            log.warning("case %s: label geometry differs from the CT's; using the voxel grid as is", case_id)
        else:
            log.info("case %s: label resampled onto the CT grid", case_id)
            arr = arr2
    return _as_labels(arr, what=f"label mask {path} of case {case_id}")


def _as_labels(arr: np.ndarray, *, what: str) -> np.ndarray:
    """0/1/2 labels; a binary mask (0/1 or 0/255) becomes liver = 1."""
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1, 2}:
        return arr.astype(np.uint8)
    if len(values) == 2 and values[0] == 0:
        return (arr > 0).astype(np.uint8)
    raise InputError(
        f"{what} holds the values {values[:10].tolist()}; expected 0 background / 1 liver / 2 tumor "
        "(or a binary liver mask)"
    )


def _dicom_datasets(path: Path, *, pixels: bool = True) -> Iterator[tuple[str, Any]]:
    """(name, pydicom Dataset) of every DICOM file in a folder (recursively) or a zip."""
    import pydicom

    def _parse(name: str, data: bytes | Path) -> Any:
        try:
            src = _io.BytesIO(data) if isinstance(data, bytes) else str(data)
            ds = pydicom.dcmread(src, force=True, stop_before_pixels=not pixels)
        except Exception:  # not DICOM (README, DICOMDIR fragments...)
            return None
        if "ImagePositionPatient" not in ds or (pixels and "PixelData" not in ds):
            return None
        return ds

    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            ds = _parse(f.name, f)
            if ds is not None:
                yield str(f.relative_to(path)), ds
    else:
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptFileError(f"cannot open the zip archive {path}: {exc}") from exc
        with zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                ds = _parse(info.filename, zf.read(info))
                if ds is not None:
                    yield info.filename, ds


def _slice_geometry(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return np.asarray([float(v) for v in ds.ImagePositionPatient]), normal


def _slice_index(ds: Any, ct: Volume) -> int:
    """Index along z of the CT slice that a DICOM (mask) slice lies on."""
    pos, _ = _slice_geometry(ds)
    normal = ct.direction[:, 2]
    assert ct.spacing is not None
    k = float((pos - np.asarray(ct.origin)) @ normal) / ct.spacing[0]
    return int(round(k))


def _mask_series(items: Iterable[tuple[str, Any]], ct: Volume, *, what: str) -> np.ndarray:
    """A boolean mask on the CT's grid from one DICOM mask series (slices placed by position)."""
    mask = np.zeros(ct.shape, bool)
    n = 0
    for name, ds in items:
        k = _slice_index(ds, ct)
        if not 0 <= k < ct.shape[0]:
            raise InputError(f"{what}: slice {name} lies outside the CT's {ct.shape[0]} slices; masks must share its grid")
        px = ds.pixel_array
        if px.shape != ct.shape[1:]:
            raise InputError(f"{what}: slice {name} has {px.shape} pixels, the CT {ct.shape[1:]}")
        mask[k] = px > 0
        n += 1
    if n == 0:
        raise NoImagesError(f"{what}: no DICOM mask slice found")
    return mask


def _ircadb_structures(masks: Path) -> dict[str, list[tuple[str, Any]]]:
    """DICOM slices of each structure (sub-folder name, lower case) of an IRCADb MASKS_DICOM."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for name, ds in _dicom_datasets(masks):
        parts = Path(name).parts
        if len(parts) < 2:
            continue
        out.setdefault(parts[-2].lower(), []).append((name, ds))
    return out


def _ircadb_structure_names(masks: Path) -> list[str]:
    """Structure folder names of an IRCADb mask folder/zip without reading pixels."""
    if masks.is_dir():
        return sorted(p.name.lower() for p in masks.iterdir() if p.is_dir())
    with zipfile.ZipFile(masks) as zf:
        return sorted({Path(n).parts[-2].lower() for n in zf.namelist() if len(Path(n).parts) >= 2 and not n.endswith("/")})


def _ircadb_labels(masks: Path, ct: Volume, *, case_id: str) -> np.ndarray:
    structures = _ircadb_structures(masks)
    if "liver" not in structures:
        raise InputError(f"case {case_id}: {masks} has no 'liver' mask (found {sorted(structures)})")
    liver = _mask_series(structures["liver"], ct, what=f"{case_id} liver mask")
    tumor = np.zeros_like(liver)
    for name, items in structures.items():
        if name.startswith("livertumor"):
            tumor |= _mask_series(items, ct, what=f"{case_id} {name} mask")
    outside = int((tumor & ~liver).sum())
    if outside:
        log.info("case %s: %d tumor voxels outside the liver mask ignored", case_id, outside)
    lab = liver.astype(np.uint8)
    lab[tumor & liver] = 2
    return lab


def _chaos_labels(dicom_dir: Path, ground: Path, ct: Volume, *, case_id: str) -> np.ndarray:
    """CHAOS liver masks: PNG k (sorted) belongs to DICOM file k in file-name order."""
    from PIL import Image

    files = sorted(p for p in dicom_dir.iterdir() if p.is_file() and p.suffix.lower() in (".dcm", ""))
    pngs = sorted(p for p in ground.iterdir() if p.suffix.lower() == ".png")
    if len(files) != len(pngs):
        raise InputError(
            f"case {case_id}: {len(files)} DICOM files in {dicom_dir} but {len(pngs)} masks in {ground}; "
            "CHAOS pairs them one to one in file-name order"
        )
    import pydicom

    lab = np.zeros(ct.shape, np.uint8)
    for f, png in zip(files, pngs):
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
        k = _slice_index(ds, ct)
        m = np.asarray(Image.open(png))
        if m.ndim == 3:
            m = m[..., 0]
        if not 0 <= k < ct.shape[0] or m.shape != ct.shape[1:]:
            raise InputError(f"case {case_id}: mask {png.name} does not fit DICOM file {f.name} of the CT {ct.shape}")
        lab[k] = m > 0
    return lab


# --------------------------------------------------------------------------- finding


def _nifti_stem(p: Path) -> str:
    return _NIFTI_RE.sub("", p.name)


def _find_lits(root: Path) -> list[Case]:
    out = []
    for vol in sorted(root.rglob("volume-*.nii*")):
        m = re.fullmatch(r"volume-(\d+)", _nifti_stem(vol))
        if not m:
            continue
        segs = [vol.with_name(f"segmentation-{m.group(1)}{ext}") for ext in (".nii.gz", ".nii")]
        segs += [p for p in vol.parent.parent.rglob(f"segmentation-{m.group(1)}.nii*")]
        seg = next((s for s in segs if s.is_file()), None)
        if seg is None:
            log.warning("LiTS volume %s has no segmentation-%s.nii[.gz]; skipped", vol, m.group(1))
            continue
        out.append(Case(f"lits-{m.group(1)}", vol, seg, True, "lits"))
    return out


def _find_msd(root: Path) -> list[Case]:
    out = []
    for ds_json in sorted(root.rglob("dataset.json")):
        base = ds_json.parent
        images, labels = base / "imagesTr", base / "labelsTr"
        if not (images.is_dir() and labels.is_dir()):
            continue
        for img in sorted(images.glob("*.nii*")):
            if img.name.startswith("._"):  # macOS resource forks shipped in MSD tarballs
                continue
            name = re.sub(r"_0000$", "", _nifti_stem(img))
            lab = next((labels / f"{name}{e}" for e in (".nii.gz", ".nii") if (labels / f"{name}{e}").is_file()), None)
            if lab is None:
                log.warning("MSD image %s has no label in %s; skipped", img, labels)
                continue
            out.append(Case(name, img, lab, True, "msd"))
    return out


def _first_existing(base: Path, name: str) -> Path | None:
    for p in (base / name, base / f"{name}.zip"):
        if p.exists():
            return p
    return None


def _find_ircadb(root: Path) -> list[Case]:
    out = []
    cands = {p.parent for p in root.rglob("PATIENT_DICOM*")}
    for base in sorted(cands):
        img, masks = _first_existing(base, "PATIENT_DICOM"), _first_existing(base, "MASKS_DICOM")
        if img is None or masks is None:
            continue
        names = _ircadb_structure_names(masks)
        if "liver" not in names:
            log.warning("IRCADb folder %s has no liver mask; skipped", base)
            continue
        tumor = any(n.startswith("livertumor") for n in names)
        out.append(Case(base.name, img, masks, tumor, "ircadb"))
    return out


def _find_chaos(root: Path) -> list[Case]:
    out = []
    for dcm in sorted(root.rglob("DICOM_anon")):
        ground = dcm.parent / "Ground"
        if dcm.is_dir() and ground.is_dir():
            name = dcm.parent.name
            out.append(Case(name if "chaos" in name.lower() else f"chaos-{name}", dcm, ground, False, "chaos"))
    return out


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def _flag(value: str, *, what: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise InputError(f"{what}: {value!r} is not a yes/no flag (use 1/0, true/false, yes/no)")


def read_manifest(path: Path) -> list[Case]:
    """Cases listed in a CSV manifest (columns ``image``, ``label``; optional ``tumor_annotated``
    or ``liver_only``, ``spacing_mm`` as "z,y,x" in mm, ``case_id``)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputError(f"manifest {path} lists no cases; expected a header row 'image,label' and one row per case")
    cols = {c.strip().lower() for c in rows[0]}
    if not {"image", "label"} <= cols:
        raise InputError(f"manifest {path} must have the columns 'image' and 'label'; found {sorted(cols)}")
    out = []
    for i, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        what = f"manifest {path}, line {i}"
        img = (path.parent / row["image"]).resolve()
        lab = (path.parent / row["label"]).resolve() if row["label"] else None
        if not img.exists():
            raise InputError(f"{what}: image {img} does not exist")
        if lab is not None and not lab.exists():
            raise InputError(f"{what}: label {lab} does not exist")
        annotated = True
        if row.get("tumor_annotated", "") != "":
            annotated = _flag(row["tumor_annotated"], what=what)
        elif row.get("liver_only", "") != "":
            annotated = not _flag(row["liver_only"], what=what)
        try:
            spacing = _spacing_tuple(row.get("spacing_mm") or None)
        except ValueError as exc:
            raise InputError(f"{what}: {exc}") from exc
        case_id = row.get("case_id") or _nifti_stem(img).replace("/", "_")
        out.append(Case(case_id, img, lab, annotated, "manifest", spacing))
    return out


def _find_manifests(root: Path) -> list[Case]:
    out = []
    for csv_path in sorted(root.rglob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            header = {c.strip().lower() for c in next(csv.reader(fh), [])}
        if {"image", "label"} <= header:
            out.extend(read_manifest(csv_path))
    return out


_FINDERS = {"lits": _find_lits, "msd": _find_msd, "ircadb": _find_ircadb, "chaos": _find_chaos, "manifest": _find_manifests}


def warn_unit_spacing(case: Case) -> None:
    """Warn when ``case`` is a NIfTI without a spacing override whose header says 1.0 mm everywhere."""
    if case.spacing_override_mm is not None or not _NIFTI_RE.search(case.image_path.name):
        return
    try:
        import nibabel as nib

        zooms = nib.load(str(case.image_path)).header.get_zooms()[:3]
    except Exception:  # unreadable headers are reported by load()
        return
    if all(abs(float(z) - 1.0) < 1e-6 for z in zooms):
        log.warning(
            "case %s (%s) stores exactly 1.0 mm spacing on every axis, which often means 'unknown' "
            "(e.g. the LiTS crop in ../shared/data, whose in-plane spacing is about 1.6 mm): "
            "give the true spacing with spacing_overrides or a manifest spacing_mm column",
            case.case_id, case.image_path,
        )


def find_cases(
    root: str | Path,
    *,
    layout: str = "auto",
    spacing_overrides: Mapping[str, Sequence[float]] | None = None,
    check_unit_spacing: bool = True,
) -> list[Case]:
    """Find the labeled cases under ``root``.

    Args:
        root: a dataset folder (or a CSV manifest file for ``layout="manifest"``/``"auto"``).
        layout: one of ``"auto"`` (every layout, recursively), ``"lits"``, ``"msd"``,
            ``"ircadb"``, ``"chaos"``, ``"manifest"``.
        spacing_overrides: case id -> (z, y, x) mm replacing the spacing in the files.
        check_unit_spacing: warn about NIfTI cases without an override whose header says
            exactly 1.0 mm on every axis (callers that apply overrides later pass ``False``
            and call :func:`warn_unit_spacing` themselves).

    Returns:
        The cases sorted by id.

    Raises:
        InputError: ``root`` is missing, holds no case, or two cases share an id.

    >>> cases = find_cases("../shared/data/labeled")  # doctest: +SKIP
    >>> [(c.case_id, c.tumor_annotated) for c in cases]  # doctest: +SKIP
    [('3Dircadb1.17', True), ('3Dircadb1.7', False), ('chaos-ct-sample', False), ('lits-117', True)]
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    root = Path(root)
    if not root.exists():
        raise InputError(f"dataset folder {root} does not exist")
    if root.is_file():
        if layout in ("auto", "manifest") and root.suffix.lower() == ".csv":
            cases = read_manifest(root)
        else:
            raise InputError(f"{root} is a file; give a dataset folder (or a CSV manifest)")
    else:
        layouts = list(_FINDERS) if layout == "auto" else [layout]
        cases = [c for name in layouts for c in _FINDERS[name](root)]
    overrides = dict(spacing_overrides or {})
    unknown = set(overrides) - {c.case_id for c in cases}
    if unknown:
        raise InputError(f"spacing_overrides name cases that were not found: {sorted(unknown)}")
    cases = [c.with_spacing(overrides[c.case_id]) if c.case_id in overrides else c for c in cases]
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen and seen[c.case_id].image_path != c.image_path:
            raise InputError(
                f"two cases share the id {c.case_id!r}: {seen[c.case_id].image_path} and {c.image_path}; "
                "train on one dataset folder at a time or use a manifest with a case_id column"
            )
        seen[c.case_id] = c
    cases = sorted(seen.values(), key=lambda c: c.case_id)
    if not cases:
        raise NoImagesError(
            f"no labeled case found under {root} (layout {layout!r}); expected LiTS volume-N/segmentation-N, "
            "MSD imagesTr/labelsTr, 3D-IRCADb PATIENT_DICOM/MASKS_DICOM, CHAOS DICOM_anon/Ground or a CSV manifest"
        )
    if check_unit_spacing:
        for c in cases:
            warn_unit_spacing(c)
    log.info("found %d cases under %s: %s", len(cases), root, ", ".join(c.case_id for c in cases))
    return cases
