"""One exception family for liverseg.

Every error says what is wrong and what to do about it. The CLI maps
:class:`InputError` (the user's input is at fault) to exit code 2 and any other
:class:`LiversegError` to exit code 1; the web app maps :class:`InputError` to
HTTP 4xx.
"""

from __future__ import annotations

import errno


class LiversegError(Exception):
    """Base class of every error liverseg raises on purpose."""


class InputError(LiversegError):
    """The input (file, folder, archive, argument) cannot be used as given."""


class EmptyFileError(InputError):
    """The file has no content."""


class CorruptFileError(InputError):
    """The file is truncated or damaged, or its content is not what its name claims."""


class UnsupportedFormatError(InputError):
    """The file is not a format liverseg reads."""


class DimensionError(InputError):
    """The image has a number of dimensions or a size liverseg cannot use."""


class NotCTError(InputError):
    """The image is not a CT scan (another modality, a segmentation object, a structure set)."""


class SeriesError(InputError):
    """A DICOM series is incomplete, inconsistent or ambiguous."""


class ArchiveError(InputError):
    """A zip archive is unsafe (paths outside the target, links, a zip bomb) or unreadable."""


class UnsafeReferenceError(InputError):
    """A file names another file outside its own folder (a MetaImage/NRRD header's voxel file), or a missing one."""


class NoImagesError(InputError):
    """A folder or archive holds no image liverseg can read."""


class ModelError(LiversegError):
    """A model bundle is missing, damaged or inconsistent (wrong sha256, unknown architecture)."""


class TrainingError(LiversegError):
    """Training cannot go on (no usable cases, a broken checkpoint)."""


class TooLargeError(InputError):
    """The input is, or would decode to, more than the configured limits allow (HTTP 413)."""


class JobCancelledError(LiversegError):
    """A job was stopped: its study was deleted, or it ran past its time or memory limit."""


class ResourceError(LiversegError):
    """The server lacks a resource right now (its disk is full); not the input's fault (HTTP 507)."""


#: what an upload that could not be stored for lack of disk space says (HTTP 507)
UPLOAD_DISK_FULL = (
    "the server's disk is full; the upload was not stored. Try again later, and tell the server's administrator"
)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
