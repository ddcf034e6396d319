"""How sure the model is of each lesion: the mean tumor probability over its voxels.

The Predictor keeps the tumor probability (softmax channel 2, averaged over the mirrored
test-time passes, so passes that disagree pull it down) on the input grid inside the
region where the network found foreground: a :class:`TumorProbability`. A lesion's
confidence is the mean of that probability over the lesion's voxels, in [0, 1]. Every
lesion voxel is an argmax winner, so confidence is rarely below ~0.4; components the
network was unsure of sit near 0.5, real lesions of the training data near 0.8–0.95.

Two thresholds act on it (chosen on held-out cases, see the 3D model card):

* ``min_confidence`` (Predictor option ``min_lesion_confidence``): lesions below it are
  relabelled liver before anything is measured;
* ``flag_below`` (:data:`LOW_CONFIDENCE`): lesions below it are kept, shown as "low"
  confidence, listed last for review, and never chosen as RECIST targets.

The same idea for a whole liver (:func:`drop_unconfident_liver`): a bundle whose config.json
has ``liver_confidence.drop_below`` (the 2D bundle) reports "no liver" for an image whose
predicted liver has a mean foreground probability (1 − background) below it — the faint
liver-like specks a 2D network draws on a slice above or below the liver.

>>> import numpy as np
>>> p = TumorProbability(box=(slice(0, 1), slice(0, 2), slice(0, 2)), values=np.full((1, 2, 2), 0.8, np.float16))
>>> lab = np.zeros((1, 3, 3), np.uint8); lab[0, :2, :2] = 2
>>> round(p.mean_over(lab == 2), 3)
0.8
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from liverseg.analysis.components import bounding_box

__all__ = ["TumorProbability", "LOW_CONFIDENCE", "confidence_level", "drop_unconfident_lesions", "drop_unconfident_liver"]

#: Lesions whose mean tumor probability is below this are flagged "low" (see the module docstring).
LOW_CONFIDENCE = 0.6


@dataclasses.dataclass(frozen=True)
class TumorProbability:
    """Tumor probability (0–1) on the input grid, stored only inside ``box`` (0 outside it).

    Attributes:
        box: (z, y, x) slices of the input grid that ``values`` covers.
        values: float16 array of the box's shape.
    """

    box: tuple[slice, slice, slice]
    values: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(s.stop - s.start for s in self.box)
        if tuple(self.values.shape) != shape:
            raise ValueError(f"values have shape {self.values.shape}, the box {shape}")

    def dense(self, region: tuple[slice, ...]) -> np.ndarray:
        """The probability (float32) on ``region`` of the input grid, 0 outside :attr:`box`."""
        out = np.zeros(tuple(s.stop - s.start for s in region), np.float32)
        src, dst = [], []
        for r, b in zip(region, self.box):
            lo, hi = max(r.start, b.start), min(r.stop, b.stop)
            if hi <= lo:
                return out
            src.append(slice(lo - b.start, hi - b.start))
            dst.append(slice(lo - r.start, hi - r.start))
        out[tuple(dst)] = self.values[tuple(src)]
        return out

    def mean_over(self, mask: np.ndarray) -> float:
        """Mean probability over the True voxels of ``mask`` (the input grid's shape); 0 if none inside."""
        n = int(np.count_nonzero(mask))
        if n == 0:
            return 0.0
        inside = np.asarray(mask[self.box], dtype=bool)
        return float(self.values[inside].astype(np.float64).sum() / n)


def confidence_level(confidence: float | None, *, flag_below: float = LOW_CONFIDENCE) -> str | None:
    """``"high"`` or ``"low"`` (below ``flag_below``); None when the confidence is unknown."""
    if confidence is None:
        return None
    return "low" if confidence < flag_below else "high"


def drop_unconfident_lesions(
    labels: np.ndarray, probability: TumorProbability | None, *, min_confidence: float
) -> tuple[np.ndarray, int]:
    """Relabel as liver (1) every 26-connected tumor component whose confidence is below ``min_confidence``.

    Returns the new labels (a copy when anything changed) and the number of lesions dropped.
    Nothing changes without a probability map or with ``min_confidence`` 0.
    """
    if probability is None or min_confidence <= 0 or not (labels == 2).any():
        return labels, 0
    tumor = labels == 2
    tbox = bounding_box(tumor)  # work inside the tumor's box only
    comp, n = ndimage.label(tumor[tbox], structure=ndimage.generate_binary_structure(3, 3))
    values = probability.dense(tbox)
    index = np.arange(1, n + 1)
    means = ndimage.mean(values, comp, index=index)
    drop = index[np.asarray(means) < min_confidence]
    if not drop.size:
        return labels, 0
    out = labels.copy()
    out[tbox][np.isin(comp, drop)] = 1
    return out, int(drop.size)


def drop_unconfident_liver(
    labels: np.ndarray, foreground_probability: np.ndarray | None, *, min_confidence: float
) -> tuple[np.ndarray, float | None, bool]:
    """Clear ``labels`` when its foreground (liver + tumor) is less sure than ``min_confidence``.

    Args:
        labels: 0/1/2 label array after postprocessing (one liver component).
        foreground_probability: 1 − background probability (0–1) on the same grid, or None.
        min_confidence: the rule's threshold (0–1); 0 keeps everything.

    Returns:
        ``(labels, confidence, dropped)``: the labels (all zero when dropped, else unchanged),
        the mean foreground probability over the predicted foreground (None without a
        probability or a foreground) and whether the foreground was dropped.
    """
    if not 0.0 <= min_confidence < 1.0:
        raise ValueError(f"min_confidence must be in [0, 1); got {min_confidence}")
    fg = labels > 0
    if foreground_probability is None or not fg.any():
        return labels, None, False
    if foreground_probability.shape != labels.shape:
        raise ValueError(f"probability shape {foreground_probability.shape} != labels shape {labels.shape}")
    confidence = float(np.asarray(foreground_probability, np.float64)[fg].mean())
    if confidence >= min_confidence:
        return labels, confidence, False
    return np.zeros_like(labels), confidence, True
