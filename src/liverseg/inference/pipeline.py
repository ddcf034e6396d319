"""One case end to end: read → predict → measure → write every output file.

:func:`run_case` is what ``liverseg predict`` and the web app's jobs call. A case's
folder holds::

    mask.nii.gz        labels 0/1/2 on the input's own grid (uint8)
    mask.png           2D inputs only: the labels as raw values 0/1/2 (see overlay.png to look at them)
    probabilities.nii.gz   with save_probabilities: softmax (x, y, z, class) as uint8, scale 1/255
    seg.dcm            DICOM inputs only: a DICOM SEG referencing the source series
    report.json, lesions.csv, overlay.png, montage.png, report.html, report.pdf   (liverseg.reporting)

With ``pdf=False`` (the web app's jobs) report.pdf is left out and report.json's ``files``
says ``"pdf_on_demand": true`` (no ``"pdf"``): :func:`liverseg.reporting.pdf.write_report_pdf_from_folder`
draws the same PDF from the folder when it is first wanted.

Everything is written to a hidden temporary folder beside ``out_dir`` and renamed at
the end, so a case that fails leaves nothing behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as _dt
import errno
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import numpy as np

from liverseg.analysis.confidence import LOW_CONFIDENCE
from liverseg.errors import InputError, LiversegError, ModelError
from liverseg.inference.predictor import Prediction, Predictor
from liverseg.io.volume import Volume

__all__ = ["CaseResult", "REPORT_FILE", "case_is_done", "case_name", "find_cases", "run_case", "run_cases", "warm_up"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".zip", ".dcm", ".png", ".jpg", ".jpeg")


def case_name(input_path: str | os.PathLike[str]) -> str:
    """The case's name: the file name without its image suffix (``ct.nii.gz`` → ``ct``), or the folder name.

    >>> case_name("data/volume-17.nii.gz"), case_name("PATIENT_DICOM.zip"), case_name("series/")
    ('volume-17', 'PATIENT_DICOM', 'series')
    """
    name = Path(input_path).name
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def case_is_done(out_dir: str | os.PathLike[str]) -> bool:
    """True when ``out_dir`` holds a finished case (its report.json)."""
    return (Path(out_dir) / REPORT_FILE).is_file()


def _describe_input(path: Path, ct: Volume) -> dict[str, Any]:
    meta = ct.metadata
    return {
        "name": path.name,
        "format": meta.get("format"),
        "shape_zyx": list(ct.shape),
        "spacing_mm_zyx": list(ct.spacing) if ct.spacing is not None else None,
        "origin_lps_mm": list(ct.origin),
        "direction": np.asarray(ct.direction).round(6).tolist(),
        "modality": ct.modality,
        "is_hu": ct.is_hu,
        "is_2d": ct.is_2d,
        "series_uid": meta.get("series_uid"),
        "hu_range": [float(ct.array.min()), float(ct.array.max())] if ct.array.size else None,
    }


def _run_info(
    path: Path, ct: Volume, prediction: Prediction, predictor: Predictor, timings: dict[str, float], note: str | None
) -> dict[str, Any]:
    import torch

    from liverseg import __version__

    warnings = [str(w) for w in ct.metadata.get("warnings", [])] + list(prediction.warnings)
    return {
        "case": case_name(path),
        "input": path.name,
        "input_description": _describe_input(path, ct),
        "note": note,
        "model": prediction.model,
        "liverseg_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": prediction.device,
        "threads": predictor.threads if predictor.threads is not None else torch.get_num_threads(),
        "engine": predictor.engine,
        "tta": (prediction.model or {}).get("tta", getattr(predictor, "tta", None)),
        "overlap": predictor.overlap,
        "min_tumor_volume_mm3": predictor.min_tumor_volume_mm3,
        "neck_radius_mm": getattr(predictor, "neck_radius_mm", None),
        "timings_s": timings,
        "postprocess": prediction.postprocess,
        "roi_zyx": prediction.roi,
        "input_path_2d": prediction.input_path_2d,
        "pixel_size_mm": ct.metadata.get("pixel_size_mm_given"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
    }


def with_pixel_size(ct: Volume, pixel_size_mm: float) -> Volume:
    """``ct`` with the user's pixel size (mm) when it has no spacing (a PNG/JPEG slice).

    The slice thickness is unknown; it is set to the pixel size, which only matters for the
    postprocessing's smallest-tumor rule (mm³). An input that states its own spacing keeps it
    (the given size is ignored, with a warning in ``metadata["warnings"]``).

    Raises:
        InputError: ``pixel_size_mm`` is not a positive, finite number of mm.
    """
    if isinstance(pixel_size_mm, bool) or not isinstance(pixel_size_mm, (int, float)) \
            or not math.isfinite(pixel_size_mm) or not 0 < pixel_size_mm <= 50:
        raise InputError(f"the pixel size must be a number of mm in (0, 50], e.g. 0.75; got {pixel_size_mm!r}")
    meta = dict(ct.metadata)
    if ct.spacing is not None:
        meta["warnings"] = [*meta.get("warnings", []), f"the given pixel size ({pixel_size_mm:g} mm) was ignored: "
                            f"the file states its own spacing {tuple(round(s, 4) for s in ct.spacing)} mm"]
        return dataclasses.replace(ct, metadata=meta)
    px = float(pixel_size_mm)
    meta["pixel_size_mm_given"] = px
    # the reader's "no voxel size" warning no longer holds: say what replaced it
    meta["warnings"] = [w for w in meta.get("warnings", []) if "no voxel size" not in str(w)] + [
        f"pixel size {px:g} mm given by the user (the file does not state it): areas are in mm²; "
        "the slice thickness is unknown"]
    return dataclasses.replace(ct, spacing=(px, px, px), metadata=meta)


def _write_probabilities(path: Path, ct: Volume, probabilities: np.ndarray) -> Path:
    """Softmax (C, z, y, x) as a 4D NIfTI (x, y, z, C), uint8 with scale 1/255, on the CT's grid."""
    import nibabel as nib

    data = np.clip(np.rint(probabilities.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    img = nib.Nifti1Image(data.transpose(3, 2, 1, 0), ct.affine_ras())  # a Fortran-order view: NIfTI's order, no copy
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    img.header["descrip"] = b"liverseg softmax: 0 bg, 1 liver, 2 tumor"
    nib.save(img, str(path))
    return path


def _write_dicom_seg(path: Path, input_path: Path, ct: Volume, labels: Volume, run_info: dict[str, Any],
                     sources: list[Any] | None = None) -> Path:
    """seg.dcm; ``sources``: the series' headers as the reader kept them (else they are read again)."""
    from liverseg.io import load_source_datasets
    from liverseg.reporting.dicom_seg import write_dicom_seg

    if not sources:
        sources = load_source_datasets(input_path, series_uid=ct.metadata.get("series_uid"))
    return write_dicom_seg(labels, sources, path, run_info=run_info)


def run_case(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    predictor: Predictor,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: Callable[[str, float], None] | None = None,
    note: str | None = None,
    pixel_size_mm: float | None = None,
    pdf: bool = True,
    on_volumes: Callable[[Volume, Volume], None] | None = None,
) -> dict[str, Any]:
    """Segment one case and write its folder ``out_dir`` (see the module docstring for the files).

    Args:
        input_path: a NIfTI/MHA/NRRD file, a DICOM folder / zip / file, or a PNG/JPEG slice.
        out_dir: this case's output folder (e.g. ``OUT/<case>``); created at the end.
        predictor: the :class:`Predictor` to use (share one across cases: bundles load once).
        overwrite: replace an existing ``out_dir``; otherwise an existing, non-empty one is an error.
        save_probabilities: also write probabilities.nii.gz.
        progress: called as ``progress(step, fraction)``, fraction of the whole case (0–1);
            steps ``"read"``, the Predictor's steps, ``"analyze"``, ``"write"``, ``"done"``.
        note: free text stored in report.json (``run.note``).
        pixel_size_mm: the pixel size (mm) of a PNG/JPEG slice, which the file does not
            state, so areas come out in mm²; ignored (with a warning) for an input that states
            its own spacing. ``None``: sizes of such a slice are in pixels.
        pdf: write report.pdf (ReportLab; its time is in docs/speed_profile.md, more with its import in a new
            process). ``False``: no report.pdf; report.json's ``files`` has ``"pdf_on_demand": true``
            and no ``"pdf"``, and :func:`liverseg.reporting.pdf.write_report_pdf_from_folder` draws
            the same PDF from ``out_dir`` later (the web app does, on the first download).
        on_volumes: called once the folder is written, with the CT as it was read (before
            ``pixel_size_mm``) and the final label Volume on its grid, so a caller that shows the
            case next (the web app's slice viewer) can keep them instead of reading both files again.

    Returns:
        the content of report.json (``analysis``, ``run``, ``files`` ...).

    Raises:
        InputError: the input cannot be read or used, or ``out_dir`` exists (without ``overwrite``).
        ModelError: the model bundle is missing or damaged.
    """
    from liverseg.analysis import analyze
    from liverseg.io import read_volume_with_sources, write_mask
    from liverseg.reporting import write_report_files, write_report_pictures

    src = Path(input_path)
    out = Path(out_dir)
    report = progress or (lambda step, fraction: None)
    _check_output_folder(out)  # before the prediction, not after it
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; choose another output folder or pass overwrite")
    t_case = time.perf_counter()
    timings: dict[str, float] = {}

    report("read", 0.0)
    t0 = time.perf_counter()
    ct, dicom_headers = read_volume_with_sources(src)  # DICOM: the headers the SEG references, read once
    ct_as_read = ct
    if pixel_size_mm is not None:
        ct = with_pixel_size(ct, pixel_size_mm)
    timings["read"] = time.perf_counter() - t0

    prediction = predictor.predict(
        ct,
        progress=lambda step, f: report(step if step != "done" else "predicted", 0.05 + 0.75 * f),
        return_probabilities=save_probabilities,
    )
    for k, v in prediction.timings_s.items():
        timings[k if k != "total" else "predict"] = v

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        files: dict[str, str] = {}
        mesh_warnings: list[str] = []

        def volumes() -> dict[str, str]:
            """The mask (gzip, which releases the GIL), probabilities and surfaces: beside the DICOM SEG."""
            written = {"mask": "mask.nii.gz"}
            write_mask(ct, prediction.labels, tmp / "mask.nii.gz")
            if ct.is_2d:
                write_mask(ct, prediction.labels, tmp / "mask.png")
                written["mask_png"] = "mask.png"
            if save_probabilities and prediction.probabilities is not None:
                _write_probabilities(tmp / "probabilities.nii.gz", ct, prediction.probabilities)
                written["probabilities"] = "probabilities.nii.gz"
            if not ct.is_2d:  # surfaces for the 3D view (liverseg.reporting.meshes; about 1 s for a whole CT)
                from liverseg.reporting.meshes import write_meshes_or_warn

                written.update(write_meshes_or_warn(tmp, prediction.labels, mesh_warnings))
            return written

        def dicom_seg(seg_info: dict[str, Any]) -> str | None:
            """seg.dcm; the reason when the writer refuses the series' geometry (every other output stands)."""
            try:
                _write_dicom_seg(tmp / "seg.dcm", src, ct, prediction.labels, seg_info, dicom_headers)
            except (InputError, ValueError) as exc:  # gantry tilt, gaps, no ImagePositionPatient
                (tmp / "seg.dcm").unlink(missing_ok=True)
                return str(exc)
            return None

        # The mask, surfaces and DICOM SEG need only the final labels: they are written in two threads
        # while this one measures the lesions (analyze) and the third draws the pictures, which need them.
        with concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="liverseg-write") as pool:
            beside = pool.submit(volumes)
            seg = None
            if str(ct.metadata.get("format", "")).startswith("dicom"):
                # the SEG needs only the model's name, version and sha256 from the run record
                seg = pool.submit(dicom_seg, {"model": prediction.model})
            pending = [f for f in (beside, seg) if f is not None]
            try:
                report("analyze", 0.8)
                t0 = time.perf_counter()
                # the bundle's lesion rule; a predictor-like object without one gets the library default
                rule_of = getattr(predictor, "lesion_confidence_rule", None)
                flag_below = rule_of("2d" if ct.is_2d else "3d")["flag_below"] if rule_of is not None else LOW_CONFIDENCE
                analysis = analyze(prediction.labels, ct, tumor_probability=getattr(prediction, "tumor_probability", None),
                                   flag_below=flag_below)
                timings["analyze"] = time.perf_counter() - t0
                report("write", 0.85)
                t0 = time.perf_counter()  # "write": what is left after analyze (the SEG and mask began beside it)
                run_info = _run_info(src, ct, prediction, predictor, timings, note)
                # the pictures (numpy + Pillow's encoder, which releases the GIL)
                pending.append(pool.submit(write_report_pictures, tmp, ct=ct, labels=prediction.labels,
                                           analysis=analysis))
            finally:
                concurrent.futures.wait(pending)
            files = {**beside.result(), **files}  # a thread's exception, if any, is raised here
            pictures = pending[-1].result()
            if seg is not None:
                refused = seg.result()
                if refused is None:
                    files["dicom_seg"] = "seg.dcm"
                else:
                    run_info["warnings"].append(f"no DICOM SEG was written: {refused}")
                    run_info["dicom_seg_missing"] = refused
        run_info["warnings"].extend(mesh_warnings)
        # the HTML/PDF show the times up to here; report.json gets the final ones below
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_case
        run_info["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        paths = write_report_files(tmp, ct=ct, labels=prediction.labels, analysis=analysis, run_info=run_info,
                                   pdf=pdf, pictures=pictures)
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_case
        doc = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
        doc.setdefault("files", {}).update(files)
        doc["run"]["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        Path(paths["json"]).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if on_volumes is not None:
        on_volumes(ct_as_read, ct_as_read.with_array(prediction.labels.array, is_hu=False, modality="SEG"))
    report("done", 1.0)
    log.info("case %s done in %.1f s -> %s", case_name(src), time.perf_counter() - t_case, out)
    return doc


def warm_up(predictor: Predictor) -> dict[str, float]:
    """Make a long-running process's first case as fast as its next (a web server calls this at start).

    :meth:`Predictor.warm_up` (bundles loaded, networks built and run once), then the modules
    :func:`run_case` writes with are imported (highdicom for the DICOM SEG, scikit-image and
    fast-simplification for the surfaces, Pillow for the pictures, ReportLab and the PDF's fonts
    for the first report download), and one small synthetic DICOM phantom is written through every
    writer (``first_case_files``), which the first case would otherwise pay. Returns the seconds
    per part.
    """
    timings = dict(predictor.warm_up())
    t0 = time.perf_counter()
    import fast_simplification  # noqa: F401  (the surfaces)
    import highdicom  # noqa: F401  (the DICOM SEG)
    import skimage.measure  # noqa: F401  (the surfaces, the lesions' outlines)

    import liverseg.reporting  # noqa: F401
    import liverseg.reporting.dicom_seg  # noqa: F401
    import liverseg.reporting.meshes  # noqa: F401
    import liverseg.reporting.overlays  # noqa: F401
    from liverseg.reporting.pdf import load_fonts

    load_fonts()  # the PDF is drawn on its first download: ReportLab and its fonts ready for it
    timings["imports"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    _write_a_phantom_case(predictor)
    timings["first_case_files"] = round(time.perf_counter() - t0, 3)
    return timings


class _ReferencePredictor:
    """A stand-in for a Predictor whose prediction is a given label mask (:func:`warm_up` only):
    everything else (settings, the model's record and rules) is the real Predictor's."""

    def __init__(self, predictor: Predictor, labels: np.ndarray) -> None:
        self._predictor, self._labels = predictor, labels

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict(self, volume: Volume, **_: Any) -> Prediction:
        return Prediction(labels=volume.with_array(self._labels, is_hu=False, modality="SEG"), probabilities=None,
                          timings_s={}, model=self._predictor.model_info("3d"), device="cpu", warnings=[])


def _write_a_phantom_case(predictor: Predictor) -> None:
    """Every file :func:`run_case` writes for a DICOM series (SEG, mask, surfaces, pictures, HTML, JSON),
    once, for a small synthetic phantom with its own reference labels as the prediction: the first
    real case then finds the writers' one-time costs paid (highdicom's lazily built tables, the report
    template's compilation, Pillow's fonts, first calls into compiled extensions; about 1 s of the
    first web study's writing, docs/speed_profile.md)."""
    from liverseg.testing import phantom
    from liverseg.testing.dicom import write_dicom_series

    ct, labels = phantom(shape=(16, 64, 64), spacing=(2.5, 1.5, 1.5), lesions=((6.0, None),))
    with tempfile.TemporaryDirectory(prefix="liverseg-warm-up-") as tmp:
        write_dicom_series(ct, Path(tmp) / "series")
        run_case(Path(tmp) / "series", Path(tmp) / "out", predictor=_ReferencePredictor(predictor, labels.array),
                 pdf=False)  # type: ignore[arg-type]


#: The files run_case writes into a case folder; ``overwrite`` replaces these and keeps anything else.
OUTPUT_NAMES = frozenset({"mask.nii.gz", "mask.png", "probabilities.nii.gz", "seg.dcm", "report.json", "lesions.csv",
                          "overlay.png", "montage.png", "report.html", "report.pdf"})


def _check_output_folder(out: Path) -> None:
    """Refuse an output folder that cannot be written (a file, under a file, read-only, a name too long)."""
    try:
        if len(out.name.encode("utf-8", "surrogateescape")) > 200:  # its temporary sibling adds 20 characters
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(out))
        if out.exists() and not out.is_dir():
            raise InputError(f"the output {out} is a file, not a folder; choose another output folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.probe-"))
        probe.rmdir()
    except OSError as exc:
        raise InputError(
            f"the output folder {out} cannot be written ({exc.strerror or exc}); choose another output folder"
        ) from exc


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to ``out`` (replacing an old one only once the new one is complete).

    Files in an old ``out`` that liverseg did not write (not in :data:`OUTPUT_NAMES`) are moved into the new one.
    """
    from liverseg.reporting.meshes import is_mesh_file

    old: Path | None = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        for entry in old.iterdir():  # the user's own files in the case folder stay
            if entry.name not in OUTPUT_NAMES and not is_mesh_file(entry.name) and not (out / entry.name).exists():
                os.replace(entry, out / entry.name)
        shutil.rmtree(old, ignore_errors=True)
    # mkdtemp makes the folder private (0700); a case folder gets the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o777 & ~umask)


# ---------------------------------------------------------------------------- many cases

_CASE_FORMATS = {"nifti", "nifti-gz", "metaimage", "nrrd", "png", "jpeg", "zip", "dicom-zip"}


def find_cases(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand the user's inputs into cases.

    A file is one case. A folder with DICOM files at its top level, or with no image files
    there, is one case (a DICOM series, searched recursively when read); otherwise each image
    file at its top level (NIfTI, MHA/NRRD, PNG/JPEG, zip) is a case.

    Returns:
        ``(cases, bad)``: the case paths in the given order, and ``(input, reason)`` for inputs
        that do not exist.
    """
    from liverseg.io import sniff_format

    cases: list[Path] = []
    bad: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            bad.append((str(raw), f"{raw} does not exist"))
            continue
        if not path.is_dir():
            cases.append(path)
            continue
        files, has_dicom = [], False
        for child in sorted(path.iterdir()):
            if child.name.startswith(".") or not child.is_file():
                continue
            try:
                fmt = sniff_format(child)
            except LiversegError:
                continue  # a README, a licence: not a case
            has_dicom |= fmt == "dicom"
            if fmt in _CASE_FORMATS:
                files.append(child)
        if has_dicom and files:
            log.info("%s holds DICOM files: read as one DICOM case (ignoring %s)", path, [f.name for f in files])
        cases.extend(files if files and not has_dicom else [path])
    return cases, bad


@dataclasses.dataclass
class CaseResult:
    """How one case of :func:`run_cases` went."""

    name: str
    input: str
    out_dir: str
    status: Literal["done", "skipped", "bad_input", "failed"]
    error: str | None = None
    seconds: float = 0.0


def _unique_names(cases: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for path in cases:
        base = case_name(path) or "case"
        n = seen.get(base, 0) + 1
        seen[base] = n
        names.append(base if n == 1 else f"{base}-{n}")
    return names


def run_cases(
    inputs: Iterable[str | os.PathLike[str]],
    out_root: str | os.PathLike[str],
    *,
    predictor: Predictor,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress_bar: bool = True,
    pixel_size_mm: float | None = None,
) -> list[CaseResult]:
    """Run :func:`run_case` on every case of ``inputs`` into ``out_root/<case>/``.

    Cases already done (their report.json exists) are skipped unless ``overwrite``. A case
    that fails is recorded and the others go on; only a broken model (ModelError) stops the run,
    since every case would fail the same way.

    Args:
        inputs: files and folders (see :func:`find_cases`).
        out_root: the output folder; each case gets ``out_root/<case name>``.
        predictor: shared by all cases.
        overwrite: redo cases that are done.
        save_probabilities: also write probabilities.nii.gz.
        progress_bar: a tqdm bar per case on stderr.
        pixel_size_mm: pixel size (mm) for PNG/JPEG slices (see :func:`run_case`).

    Raises:
        ModelError: the model bundle is missing or damaged.
    """
    from tqdm import tqdm

    cases, bad = find_cases(inputs)
    results = [CaseResult(name=Path(raw).name, input=raw, out_dir="", status="bad_input", error=why) for raw, why in bad]
    root = Path(out_root)
    for path, name in zip(cases, _unique_names(cases)):
        out = root / name
        if case_is_done(out) and not overwrite:
            log.info("%s: already done in %s (skipped; pass overwrite to redo it)", name, out)
            results.append(CaseResult(name, str(path), str(out), "skipped"))
            continue
        t0 = time.perf_counter()
        bar = tqdm(total=100, desc=name, unit="%", leave=True, disable=not progress_bar,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}]")

        def update(step: str, fraction: float, bar: Any = bar) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(step, refresh=True)

        try:
            run_case(path, out, predictor=predictor, overwrite=overwrite, save_probabilities=save_probabilities,
                     progress=update, pixel_size_mm=pixel_size_mm)
            results.append(CaseResult(name, str(path), str(out), "done", seconds=time.perf_counter() - t0))
        except ModelError:
            raise
        except InputError as exc:
            log.error("%s: %s", name, exc)
            results.append(CaseResult(name, str(path), str(out), "bad_input", str(exc), time.perf_counter() - t0))
        except Exception as exc:  # one case's internal failure does not stop the others
            log.error("%s: internal error (%s: %s)", name, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            results.append(CaseResult(name, str(path), str(out), "failed", f"{type(exc).__name__}: {exc}",
                                      time.perf_counter() - t0))
        finally:
            bar.close()
    return results
