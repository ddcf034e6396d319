"""Reports of a segmented case: PNG overlays, JSON/CSV/HTML/PDF report, DICOM SEG.

>>> from liverseg.reporting import write_report_files, render_slice_png
>>> paths = write_report_files(out, ct=ct, labels=labels, analysis=analyze(labels, ct), run_info=info)  # doctest: +SKIP
"""

from liverseg.reporting.dicom_seg import write_dicom_seg
from liverseg.reporting.overlays import render_slice_png, render_slice_rgb, write_montage_png, write_overlay_png
from liverseg.reporting.report import DISCLAIMER, report_dict, write_lesions_csv, write_report_files, write_report_pictures

__all__ = [
    "DISCLAIMER",
    "render_slice_png",
    "render_slice_rgb",
    "report_dict",
    "write_dicom_seg",
    "write_lesions_csv",
    "write_montage_png",
    "write_overlay_png",
    "write_report_files",
    "write_report_pictures",
]
