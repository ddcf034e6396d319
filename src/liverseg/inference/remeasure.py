"""Every output of a case again, from a given (corrected) mask instead of the model's.

:func:`remeasure_case` is what saving a radiologist's correction runs: the same
measurements (:func:`liverseg.analysis.analyze`), lesion table, reports, DICOM SEG and
surface meshes that :func:`liverseg.inference.run_case` writes after a prediction, built
from ``labels``. It writes a new folder and never touches the original case folder.

>>> doc = remeasure_case(ct=ct, labels=corrected, out_dir="study/versions/2", source_path="ct.nii.gz",
...                      run_info=original_report["run"], edit={"version": 2, "edited_by": "ada"})  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.errors import InputError
from liverseg.io.volume import Volume

__all__ = ["remeasure_case", "EDITED_NOTE"]

log = logging.getLogger(__name__)

#: The sentence every report of a corrected mask carries (run.warnings).
EDITED_NOTE = ("this mask was corrected by hand (version {version}, by {edited_by}, {created_at}); the measurements are "
               "of the corrected mask, and lesion confidence is not available for it")


def remeasure_case(
    *,
    ct: Volume,
    labels: Volume | np.ndarray,
    out_dir: str | os.PathLike[str],
    source_path: str | os.PathLike[str] | None = None,
    run_info: dict[str, Any] | None = None,
    edit: dict[str, Any] | None = None,
    pdf: bool = True,
) -> dict[str, Any]:
    """Measure ``labels`` on ``ct`` and write a full case folder ``out_dir`` (which must not exist yet).

    Args:
        ct: the CT the mask belongs to (as :func:`liverseg.io.read_volume` read it; HU).
        labels: 0 background, 1 liver, 2 tumor on ``ct``'s grid (a Volume or an array of ``ct.shape``).
        out_dir: the new folder; written beside itself under a temporary name and renamed at the end,
            so a failure leaves nothing. An existing ``out_dir`` is an error (a version is never overwritten).
        source_path: the case's input (a DICOM folder / zip gets a DICOM SEG referencing its series).
        run_info: the original report's ``run`` record (model, input, versions ...); kept, with the
            edit recorded in it.
        edit: who and what: ``version`` (int), ``edited_by`` (str), ``created_at`` (ISO time; default now),
            ``based_on`` (int) ...; stored as ``run.mask_edit`` and summarised in ``run.warnings``.
        pdf: write report.pdf; ``False`` (the web app's saves) leaves it to be drawn on the first
            download (report.json's ``files``: ``"pdf_on_demand": true``; see
            :func:`liverseg.reporting.pdf.write_report_pdf_from_folder`).

    Returns:
        the content of the new report.json.

    Raises:
        InputError: ``labels`` do not fit ``ct`` or hold values other than 0, 1, 2; ``out_dir`` exists.
    """
    from liverseg.analysis import analyze
    from liverseg.io import write_mask
    from liverseg.reporting import write_report_files
    from liverseg.reporting.meshes import write_meshes_or_warn

    arr = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    if arr.ndim == 2 and ct.is_2d:
        arr = arr[None]
    if arr.shape != ct.shape:
        raise InputError(f"the mask has {arr.shape} voxels (z, y, x) but the scan has {ct.shape}; "
                         "send a mask on the scan's own grid")
    values = np.unique(arr)
    if not np.isin(values, (0, 1, 2)).all():
        raise InputError(f"the mask holds values {values[~np.isin(values, (0, 1, 2))][:8].tolist()}; only 0 "
                         "(background), 1 (liver) and 2 (tumor) are allowed")
    lab = ct.with_array(arr.astype(np.uint8), is_hu=False, modality="SEG", metadata={})
    out = Path(out_dir)
    if out.exists():
        raise InputError(f"{out} exists already; a mask version is never overwritten")
    t0 = time.perf_counter()
    edit = dict(edit or {})
    edit.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    info = dict(run_info or {})
    info["warnings"] = [w for w in info.get("warnings", []) if not str(w).startswith("this mask was corrected by hand")]
    info["warnings"].append(EDITED_NOTE.format(version=edit.get("version", "?"), edited_by=edit.get("edited_by", "?"),
                                               created_at=edit["created_at"]))
    info["mask_edit"] = edit
    timings: dict[str, float] = {}

    analysis = analyze(lab, ct)  # no probabilities: every lesion's confidence is None, with the reason
    timings["analyze"] = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        t1 = time.perf_counter()
        files: dict[str, str] = {"mask": "mask.nii.gz"}
        write_mask(ct, lab, tmp / "mask.nii.gz")
        if ct.is_2d:
            write_mask(ct, lab, tmp / "mask.png")
            files["mask_png"] = "mask.png"
        info.pop("dicom_seg_missing", None)
        if source_path is not None and str(ct.metadata.get("format", "")).startswith("dicom"):
            try:
                _write_seg(tmp / "seg.dcm", Path(source_path), ct, lab, info, version=edit.get("version"))
                files["dicom_seg"] = "seg.dcm"
            except (InputError, ValueError) as exc:
                (tmp / "seg.dcm").unlink(missing_ok=True)
                info["warnings"].append(f"no DICOM SEG was written: {exc}")
                info["dicom_seg_missing"] = str(exc)
        if not ct.is_2d:
            files.update(write_meshes_or_warn(tmp, lab, info["warnings"]))
        timings["write"] = time.perf_counter() - t1
        info["remeasure_timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        paths = write_report_files(tmp, ct=ct, labels=lab, analysis=analysis, run_info=info, pdf=pdf)
        doc = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
        doc.setdefault("files", {}).update(files)
        timings["total"] = time.perf_counter() - t0
        doc["run"]["remeasure_timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        Path(paths["json"]).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.rename(tmp, out)  # fails if out appeared meanwhile (a non-empty folder): never replaced
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("re-measured a corrected mask in %.1f s", time.perf_counter() - t0)
    return doc


def _write_seg(path: Path, source: Path, ct: Volume, labels: Volume, run_info: dict[str, Any], *,
               version: Any) -> Path:
    from liverseg.io import load_source_datasets
    from liverseg.reporting import write_dicom_seg

    sources = load_source_datasets(source, series_uid=ct.metadata.get("series_uid"))
    number = 901 + int(version) - 1 if isinstance(version, int) and version > 1 else 901
    return write_dicom_seg(labels, sources, path, run_info=run_info,
                           series_description=f"liverseg liver/tumor, corrected (v{version})", series_number=number)
