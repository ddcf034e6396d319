"""Write a Volume as a small synthetic DICOM CT series (for tests; no patient data)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from liverseg.io.volume import Volume

__all__ = ["write_dicom_series"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "liverseg phantom",
    rescale_intercept: float = -1024.0,
    transfer_syntax: str | None = None,
    skip_slices: Iterable[int] = (),
    with_pixels: bool = True,
    shuffle_names: bool = True,
) -> list[Path]:
    """Write ``volume`` (HU) as one DICOM file per z-slice into ``folder``; return the paths.

    Pixels are stored unsigned with ``RescaleIntercept`` (HU = stored + intercept), so
    readers must apply the rescale. ``transfer_syntax`` compresses the pixels (e.g.
    ``pydicom.uid.RLELossless``; needs a pydicom encoder). ``skip_slices`` leaves
    slices out (to make a gap), ``with_pixels=False`` writes headers only, and
    ``shuffle_names`` names files so that name order differs from z order.

    >>> from liverseg.testing import phantom
    >>> ct, _ = phantom(shape=(4, 64, 64), spacing=(2.0, 1.0, 1.0), lesions=())
    >>> len(write_dicom_series(ct, tmp_path))  # doctest: +SKIP
    4
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    skip = set(skip_slices)
    direction = np.asarray(volume.direction, float)
    spacing = volume.spacing or (1.0, 1.0, 1.0)
    nz, ny, nx = volume.shape
    stored = np.clip(np.rint(volume.array.astype(np.float64) - rescale_intercept), 0, 65535).astype(np.uint16)
    paths = []
    order = list(range(nz))
    if shuffle_names:
        rng = np.random.default_rng(0)
        names = {k: f"IM{int(v):04d}" for k, v in zip(order, rng.permutation(nz))}
    else:
        names = {k: f"IM{k:04d}" for k in order}
    for k in order:
        if k in skip:
            continue
        meta = FileMetaDataset()
        sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesDescription = series_description
        ds.PatientName = "Phantom^Liverseg"
        ds.PatientID = "PHANTOM-0001"
        ds.InstanceNumber = k + 1
        pos = np.asarray(volume.origin) + direction[:, 2] * spacing[0] * k
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in list(direction[:, 0]) + list(direction[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[2]:.6f}"]
        ds.SliceThickness = f"{spacing[0]:.4f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleSlope = "1"
        if with_pixels:
            ds.PixelData = stored[k].tobytes()
            if transfer_syntax is not None:
                ds.compress(transfer_syntax)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
