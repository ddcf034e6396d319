"""Reading and writing CT volumes and label masks.

>>> from liverseg.io import read_volume, write_mask
>>> ct = read_volume("scan.nii.gz")  # doctest: +SKIP
>>> write_mask(ct, labels, "scan_seg.nii.gz")  # doctest: +SKIP
"""

from liverseg.io.archive import ArchiveLimits, extract_zip
from liverseg.io.detect import PathNotFoundError, sniff_format
from liverseg.io.read import (
    HeaderSummary,
    describe,
    format_description,
    list_series,
    load_source_datasets,
    peek_header,
    read_dicom_series,
    read_volume,
    read_volume_with_sources,
)
from liverseg.io.volume import Volume
from liverseg.io.write import write_mask, write_volume

__all__ = [
    "ArchiveLimits",
    "HeaderSummary",
    "PathNotFoundError",
    "Volume",
    "describe",
    "extract_zip",
    "format_description",
    "list_series",
    "load_source_datasets",
    "peek_header",
    "read_dicom_series",
    "read_volume",
    "read_volume_with_sources",
    "sniff_format",
    "write_mask",
    "write_volume",
]
