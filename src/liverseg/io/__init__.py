"""Reading and writing CT volumes and label masks."""

from liverseg.io.volume import Volume

__all__ = ["Volume"]
