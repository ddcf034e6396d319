"""The :class:`Predictor`: a CT :class:`~liverseg.io.Volume` in, a label Volume on the same grid out.

Steps (as nnU-Net's predictor, with the cascade of the bundle):

1. intensities: CT in HU. A single slice for a window-invariant 2D bundle (plan
   ``input_kind="display"``) reaches the network as a 0..1 display image: an 8-bit PNG/JPEG
   as it is (``p / 255``, whatever window it was exported in), a slice in HU rendered in the
   plan's ``display_window_hu`` (W400/L40) first; ``Prediction.input_path_2d`` says which.
   For older HU-input 2D bundles an 8-bit slice (``is_hu`` False) is read as an
   abdominal-window image (W400/L40) and mapped back to pseudo-HU, ``p / 255 · 400 − 160``;
2. ``localize`` stage (when the bundle has one): resample the whole scan to the stage's
   coarse spacing, normalise with its :class:`~liverseg.preprocessing.Plan`, sliding-window
   inference, and take the liver's largest component; its bounding box plus the segment
   stage's ``roi_margin_mm`` is the region of interest. No liver found: the segment stage
   runs on the whole scan and the prediction carries a warning;
3. ``segment`` stage on the region: resample to its finer spacing, normalise,
   sliding-window inference with Gaussian weighting (``overlap`` between windows),
   optional mirroring test-time augmentation (softmax averaged over all flips);
4. back to the input grid: probabilities are resampled linearly to the region's voxels
   on the input grid, then the argmax gives the labels (never nearest-neighbour on labels);
5. postprocessing (:func:`liverseg.inference.postprocess.postprocess_labels`).

A single slice (a Volume with one z-slice) goes to the 2D bundle the same way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch

from liverseg.analysis.confidence import LOW_CONFIDENCE, TumorProbability, drop_unconfident_lesions, drop_unconfident_liver
from liverseg.errors import DimensionError, InputError, ModelError
from liverseg.inference.postprocess import largest_component, postprocess_labels
from liverseg.inference.sliding_window import sliding_window_inference, window_slices
from liverseg.io.volume import Volume
from liverseg.io.limits import MAX_STAGE_VOXELS, MAX_UPSAMPLING, UPSAMPLING_FREE_VOXELS, check_segmentable
from liverseg.models.bundle import ModelBundle, Stage, load_bundle
from liverseg.models.bundle import _resolve as _resolve_bundle
from liverseg.preprocessing.orientation import Reorientation
from liverseg.preprocessing.resample import resample_to_shape, resampled_shape, resize_slices

__all__ = ["Prediction", "Predictor", "ProgressCallback", "pseudo_hu_from_window"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]

#: the display window an 8-bit slice is assumed to be saved with (HU): width 400, level 40
ABDOMINAL_WINDOW_HU = (-160.0, 240.0)


def pseudo_hu_from_window(pixels: np.ndarray, window: tuple[float, float] = ABDOMINAL_WINDOW_HU) -> np.ndarray:
    """Map 8-bit display values (0–255) of a windowed image back to HU (float32).

    >>> pseudo_hu_from_window(np.array([0, 255])).tolist()
    [-160.0, 240.0]
    """
    lo, hi = window
    return (np.asarray(pixels, np.float32) / np.float32(255.0)) * np.float32(hi - lo) + np.float32(lo)


@dataclasses.dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns.

    Attributes:
        labels: uint8 label Volume (0 background, 1 liver, 2 tumor) on the input's own grid
            (same shape, spacing, origin and direction).
        probabilities: float16 softmax (3, z, y, x) on the input grid, when asked for; else None.
        timings_s: seconds per step (``load_model``, ``localize``, ``segment``, ``resample``,
            ``postprocess``, ``total``).
        model: the bundle used: ``name``, ``sha256``, ``kind``, ``path``, ``stages``.
        device: the torch device that ran the networks (``"cpu"``, ``"cuda:0"``).
        warnings: what the user should know about this result (no liver found, ...).
        postprocess: voxel counts of what postprocessing changed.
        roi: the region of interest the segment stage saw, as (start, stop) index pairs (z, y, x)
            on the input grid.
        tumor_probability: the tumor probability on the input grid where the network found
            foreground (:class:`~liverseg.analysis.confidence.TumorProbability`), for lesion confidence.
        input_path_2d: for a single slice, how its intensities reached the 2D network, e.g.
            ``"8-bit image (window unknown)"`` or ``"HU, rendered W400/L40"``; None for a 3D scan.
    """

    labels: Volume
    probabilities: np.ndarray | None
    timings_s: dict[str, float]
    model: dict[str, Any]
    device: str
    warnings: list[str]
    postprocess: dict[str, int] = dataclasses.field(default_factory=dict)
    roi: list[tuple[int, int]] | None = None
    input_path_2d: str | None = None
    tumor_probability: TumorProbability | None = None


def _invert_probability(
    reorient: Reorientation, prob: TumorProbability | None, canonical_shape: Sequence[int]
) -> TumorProbability | None:
    """A tumor probability on the canonical grid, carried back to the source grid's axes."""
    if prob is None:
        return None
    box = reorient.invert_roi([(s.start, s.stop) for s in prob.box], canonical_shape)
    return TumorProbability(box=tuple(slice(a, b) for a, b in box), values=reorient.invert(prob.values))


#: Names of the spatial axes a mirroring TTA may flip, in the networks' (z, y, x) order.
TTA_AXES = ("z", "y", "x")


def _mirror_axes(nd: int, tta: bool, axes: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """Flip axes (of a (B, C, *spatial) tensor) for test-time augmentation: identity first.

    ``axes``: the spatial axes to mirror (names from :data:`TTA_AXES`; None: all of them); every
    combination of them is one pass. A 2D network (nd 2) has only y and x.
    """
    if not tta:
        return [()]
    names = TTA_AXES[-nd:]
    chosen = names if axes is None else tuple(a for a in names if a in axes)
    spatial = tuple(2 + names.index(a) for a in chosen)
    return [combo for r in range(len(spatial) + 1) for combo in itertools.combinations(spatial, r)]


def _linear_weights(n_in: int, n_out: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weights of outputs ``start:stop`` of a linear resampling
    from ``n_in`` to ``n_out`` samples, as ``F.interpolate(..., align_corners=False)`` places
    them: source = (i + 0.5) · n_in / n_out − 0.5, clamped at 0 and at the last sample."""
    i = np.arange(start, stop, dtype=np.float64)
    src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _linear_axis(x: np.ndarray, axis: int, n_out: int, start: int, stop: int) -> np.ndarray:
    """Outputs ``start:stop`` of resampling ``x`` (float32 numpy) linearly along ``axis`` to ``n_out`` samples.

    The same samples as ``F.interpolate(..., mode="trilinear", align_corners=False)``, computed
    for a sub-range only, with two gathers and in-place blending (``a + (b − a) · w``): on the
    2-core CPU many times faster than torch's ``index_select`` on a CT-sized box.
    """
    i0, i1, w = _linear_weights(x.shape[axis], n_out, start, stop)
    return _blend(x, axis, i0, i1, w)


def _blend(x: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x[i0] · (1 − w) + x[i1] · w`` along ``axis``, as ``x[i0] + (x[i1] − x[i0]) · w`` in place."""
    shape = [1] * x.ndim
    shape[axis] = -1
    a = np.take(x, i0, axis=axis)
    b = np.take(x, i1, axis=axis)
    b -= a
    b *= w.reshape(shape)
    b += a
    return b


def _to_float16(x: np.ndarray) -> np.ndarray:
    """``x.astype(np.float16)``, the same bits, through torch: numpy converts values in float16's
    subnormal range (a probability far from any lesion, ~1e-6) one by one, 1.3 s for a
    119 × 282 × 367 box where torch takes 0.03 s."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.float16).numpy()


def _argmax_classes(p: Sequence[np.ndarray]) -> np.ndarray:
    """``argmax`` over the class list ``p`` (arrays of one shape) as uint8, the first class winning
    ties, as ``torch.argmax`` — by comparisons, much faster than a strided reduction over a
    (C, z, y, x) array."""
    labels = np.zeros(p[0].shape, np.uint8)
    best = p[0]
    for k in range(1, len(p)):
        win = p[k] > best
        labels[win] = k
        best = np.where(win, p[k], best) if k < len(p) - 1 else best
    return labels


class _OnnxNet:
    """A stage network run by ONNX Runtime (exported at load time, one window at a time)."""

    def __init__(self, net: torch.nn.Module, patch: Sequence[int], folder: Path, name: str, threads: int | None) -> None:
        import warnings

        import onnxruntime as ort

        path = folder / f"{name}.onnx"
        example = torch.zeros(1, 1, *patch)
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            # the TorchScript exporter: needs only the onnx package (the dynamo one needs onnxscript)
            torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["logits"],
                              dynamo=False, opset_version=17)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.session.run(None, {"x": x[i: i + 1].cpu().numpy()})[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs, 0)).to(x.device)


class Predictor:
    """Segment liver and liver tumors in a CT Volume with a model bundle.

    Args:
        model: the 3D bundle: a bundled name (``models/<name>``), a bundle folder, or a loaded
            :class:`~liverseg.models.bundle.ModelBundle`.
        model_2d: the bundle for single slices, or None (then a slice is refused).
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``), or ``"auto"`` (CUDA when present).
        threads: CPU threads torch may use while predicting (None: torch's default).
        tta: mirroring test-time augmentation. ``True``: all flips (8× the network time in 3D) or
            those of ``tta_axes``; ``False``: none; ``None`` (default): each bundle's own mode
            (config.json ``tta.axes``, chosen on held-out cases, e.g. ``["z"]``: 2 passes; no TTA for
            a bundle without one).
        tta_axes: with ``tta=True``, mirror only these axes (a subset of ``("z", "y", "x")``; every
            combination is one pass: ``("z",)`` is 2 passes); None (default): all three.
        overlap: fraction (0 ≤ overlap < 1) by which neighbouring sliding windows overlap.
        min_tumor_volume_mm3: tumor components smaller than this (mm³) are dropped (become liver).
        engine: ``"torch"`` or ``"onnx"`` (ONNX Runtime on CPU; the networks are exported to a
            temporary folder when first needed, nothing is downloaded).
        sw_batch_size: windows per network call.
        liver_dilation_mm: how far (mm) tumor may reach beyond the liver's outline.
        min_lesion_confidence: lesions whose mean tumor probability (0–1, see
            :mod:`liverseg.analysis.confidence`) is below this become liver; 0 keeps all;
            None (default): the 3D bundle's own rule (config.json ``lesion_confidence``
            ``drop_below``, chosen on held-out cases; 0 when the bundle has none).
        min_liver_confidence: an image whose predicted liver has a mean foreground probability
            below this is reported as having no liver (:func:`~liverseg.analysis.confidence.drop_unconfident_liver`);
            0 turns the rule off; None (default): the bundle's own rule (config.json
            ``liver_confidence`` ``drop_below``: the 2D bundle has one, the 3D bundle none).
        neck_radius_mm: postprocessing rule 1b (:func:`~liverseg.inference.postprocess.detach_necks`):
            a small part joined to the liver only through a neck narrower than twice this (mm),
            such as the heart drawn as liver through the diaphragm, is cut off; 0 turns it off.

    Bundles are loaded (and their sha256 checked) when first needed; :meth:`load` loads them now.
    One Predictor may serve several threads.

    Example:
        >>> predictor = Predictor("liver-tumor-3d", device="cpu", threads=2)   # doctest: +SKIP
        >>> prediction = predictor.predict(read_volume("ct.nii.gz"))           # doctest: +SKIP
        >>> prediction.labels.array.max()                                     # doctest: +SKIP
        2
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelBundle = "liver-tumor-3d",
        *,
        model_2d: str | os.PathLike[str] | ModelBundle | None = "liver-tumor-2d",
        device: str = "cpu",
        threads: int | None = None,
        tta: bool | None = None,
        tta_axes: Sequence[str] | None = None,
        overlap: float = 0.5,
        min_tumor_volume_mm3: float = 10.0,
        engine: Literal["torch", "onnx"] = "torch",
        sw_batch_size: int = 1,
        liver_dilation_mm: float = 3.0,
        min_lesion_confidence: float | None = None,
        min_liver_confidence: float | None = None,
        neck_radius_mm: float = 6.0,
    ) -> None:
        for name, source in (("model", model), ("model_2d", model_2d)):
            if source is None and name == "model":
                raise ValueError("model must be a bundled model name, a bundle folder or a ModelBundle")
            if source is not None and not isinstance(source, (str, os.PathLike, ModelBundle)):
                raise TypeError(
                    f"{name} must be a bundled model name (str), a bundle folder (path) or a ModelBundle; "
                    f"got {type(source).__name__} {source!r}"
                )
        if tta is not None and not isinstance(tta, bool):
            raise TypeError(f"tta must be True, False or None (the bundle's own mode); got {type(tta).__name__} {tta!r}")
        if tta_axes is not None and tta is not True:
            raise ValueError("tta_axes needs tta=True (it chooses which axes the mirroring flips)")
        if tta_axes is not None:
            if isinstance(tta_axes, str) or not tta_axes or any(a not in TTA_AXES for a in tta_axes):
                raise ValueError(f"tta_axes must be a non-empty subset of {TTA_AXES} (e.g. ('z',)); got {tta_axes!r}")
            tta_axes = tuple(a for a in TTA_AXES if a in tta_axes)
        for name, value in (("overlap", overlap), ("min_tumor_volume_mm3", min_tumor_volume_mm3),
                            ("liver_dilation_mm", liver_dilation_mm), ("neck_radius_mm", neck_radius_mm),
                            ("min_lesion_confidence", 0.0 if min_lesion_confidence is None else min_lesion_confidence)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1) (a fraction of the window); got {overlap}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None; got {threads!r}")
        if threads is not None and threads > (os.cpu_count() or 1):
            log.warning("threads=%d is more than the %d CPU cores here (it only slows torch down); using %d",
                        threads, os.cpu_count() or 1, os.cpu_count() or 1)
            threads = os.cpu_count() or 1
        if float(min_tumor_volume_mm3) < 0:
            raise ValueError(f"min_tumor_volume_mm3 must be >= 0 mm³; got {min_tumor_volume_mm3}")
        if not 0 <= float(liver_dilation_mm) <= 50:
            raise ValueError(f"liver_dilation_mm must be in 0..50 mm; got {liver_dilation_mm}")
        if not 0 <= float(neck_radius_mm) <= 30:
            raise ValueError(f"neck_radius_mm must be in 0..30 mm (0 turns the rule off); got {neck_radius_mm}")
        for name, value in (("min_lesion_confidence", min_lesion_confidence), ("min_liver_confidence", min_liver_confidence)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (a mean probability) or None; got {value!r}")
        if engine not in ("torch", "onnx"):
            raise ValueError(f"engine must be 'torch' or 'onnx'; got {engine!r}")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be at least 1; got {sw_batch_size}")
        self.device = self._resolve_device(device)
        if engine == "onnx" and self.device.type != "cpu":
            raise ValueError("engine='onnx' runs on the CPU only; use engine='torch' with a CUDA device")
        for source in (model, model_2d):  # ModelError now, not at the first prediction
            if isinstance(source, (str, os.PathLike)):
                _resolve_bundle(source)
        self._sources: dict[str, str | os.PathLike[str] | ModelBundle | None] = {"3d": model, "2d": model_2d}
        self.threads = None if threads is None else int(threads)
        self.tta: bool | None = tta
        self.tta_axes: tuple[str, ...] | None = tta_axes
        self.overlap = float(overlap)
        self.min_tumor_volume_mm3 = float(min_tumor_volume_mm3)
        self.liver_dilation_mm = float(liver_dilation_mm)
        self.neck_radius_mm = float(neck_radius_mm)
        self._min_lesion_confidence = None if min_lesion_confidence is None else float(min_lesion_confidence)
        self._min_liver_confidence = None if min_liver_confidence is None else float(min_liver_confidence)
        self.engine = engine
        self.sw_batch_size = int(sw_batch_size)
        self._bundles: dict[str, ModelBundle] = {}
        self._nets: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}
        self._lock = threading.RLock()
        self._onnx_dir: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _resolve_device(device: str) -> torch.device:
        if not isinstance(device, str):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            return torch.device("cpu")
        if device == "cuda" or device.startswith("cuda:"):
            if not torch.cuda.is_available():
                raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
            return torch.device(device)
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {device!r}")

    def bundle(self, kind: Literal["3d", "2d"] = "3d") -> ModelBundle:
        """The loaded bundle for ``kind`` (loads and verifies it on first use).

        Raises:
            ModelError: the bundle is missing, damaged (sha256) or of the other kind.
            InputError: ``kind == "2d"`` but this Predictor has no 2D model.
        """
        with self._lock:
            if kind in self._bundles:
                return self._bundles[kind]
            source = self._sources[kind]
            if source is None:
                raise InputError(
                    "this input is a single 2D slice, but no 2D model was given; pass model_2d (--model-2d) "
                    "or give a 3D scan"
                )
            bundle = source if isinstance(source, ModelBundle) else load_bundle(source)
            if bundle.kind != kind:
                raise ModelError(
                    f"model {bundle.name!r} is a {bundle.kind.upper()} bundle, but it was given as the "
                    f"{kind.upper()} model; pass it as {'model_2d' if bundle.kind == '2d' else 'model'} instead"
                )
            if bundle.stage("segment") is None:
                raise ModelError(f"bundle {bundle.name!r} has no 'segment' stage; it cannot produce labels")
            self._bundles[kind] = bundle
            log.info("loaded model %s (%s, sha256 %s…)", bundle.name, bundle.kind, bundle.sha256[:12])
            return bundle

    def _stage_nets(self) -> Iterator[tuple[Stage, Callable[[torch.Tensor], torch.Tensor]]]:
        """Every stage of the configured bundles with its network (loaded, verified and built on first use)."""
        for kind in ("3d", "2d"):
            if kind == "2d" and self._sources["2d"] is None:
                continue
            b = self.bundle(kind)  # type: ignore[arg-type]
            for stage in b.stages:
                yield stage, self._net(kind, b, stage)

    def load(self) -> "Predictor":
        """Load (and verify) the bundles and build their networks now instead of on first use."""
        for _ in self._stage_nets():
            pass
        return self

    def warm_up(self) -> dict[str, float]:
        """Load the bundles, build their networks and run each once on an empty window.

        What a server does at start, so that its first study is as fast as the next: the first
        pass through a network pays one-time costs (kernel selection, the nnFormer's per-window
        index and mask tensors) that later passes do not. Returns the seconds each part took
        (``load``, ``first_pass``).
        """
        t0 = time.perf_counter()
        self.load()
        t1 = time.perf_counter()
        with self._threads(), torch.no_grad():
            for stage, net in self._stage_nets():
                net(torch.zeros(self.sw_batch_size, 1, *stage.plan.patch_size, device=self.device))
        return {"load": round(t1 - t0, 3), "first_pass": round(time.perf_counter() - t1, 3)}

    def model_info(self, kind: Literal["3d", "2d"] = "3d") -> dict[str, Any]:
        """Name, sha256, kind, folder and stages of the bundle used for ``kind``."""
        b = self.bundle(kind)
        tta, tta_axes = self.tta_rule(kind)
        return {
            "name": b.name,
            "sha256": b.sha256,
            "kind": b.kind,
            "path": str(b.path) if b.path is not None else None,
            "stages": [
                {"name": s.name, "role": s.role, "architecture": s.architecture,
                 "spacing_mm": list(s.plan.spacing_mm) if s.plan.spacing_mm else None,
                 "patch_size": list(s.plan.patch_size)}
                for s in b.stages
            ],
            "engine": self.engine,
            "tta": tta,
            "tta_axes": list(tta_axes) if tta and tta_axes is not None else None,
            "tta_from": "bundle" if self.tta is None else "caller",
            "overlap": self.overlap,
            "min_liver_confidence": self.liver_confidence_rule(kind),
        }

    def _net(self, kind: str, bundle: ModelBundle, stage: Stage) -> Callable[[torch.Tensor], torch.Tensor]:
        key = (kind, stage.name)
        with self._lock:
            if key in self._nets:
                return self._nets[key]
            try:
                net = bundle.build(stage, device=self.device)
            except ValueError as exc:  # build_model's reason for an unknown or inconsistent architecture
                raise ModelError(f"bundle {bundle.name!r}, stage {stage.name!r}: {exc}") from exc
            if getattr(net, "deep_supervision", False):
                net.deep_supervision = False
            fn: Callable[[torch.Tensor], torch.Tensor] = net
            if self.engine == "onnx":
                if self._onnx_dir is None:
                    self._onnx_dir = tempfile.TemporaryDirectory(prefix="liverseg-onnx-")
                t0 = time.perf_counter()
                fn = _OnnxNet(net, stage.plan.patch_size, Path(self._onnx_dir.name), f"{kind}-{stage.name}", self.threads)
                log.info("exported stage %s to ONNX in %.1f s", stage.name, time.perf_counter() - t0)
            self._nets[key] = fn
            return fn

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @property
    def min_lesion_confidence(self) -> float:
        """The lesion-dropping threshold used for 3D scans (the option, or the bundle's rule)."""
        return self.lesion_confidence_rule("3d")["drop_below"]

    def liver_confidence_rule(self, kind: Literal["3d", "2d"] = "2d") -> float:
        """The whole-liver threshold for ``kind`` (0: off): the constructor's ``min_liver_confidence``
        if given, else the bundle's config.json ``liver_confidence`` ``drop_below`` (0 without one)."""
        if self._min_liver_confidence is not None:
            return self._min_liver_confidence
        return float((self.bundle(kind).info.get("liver_confidence") or {}).get("drop_below", 0.0))

    def tta_rule(self, kind: Literal["3d", "2d"] = "3d") -> tuple[bool, tuple[str, ...] | None]:
        """(mirror?, axes) for ``kind``: the constructor's ``tta``/``tta_axes`` if ``tta`` was given,
        else the bundle's config.json ``tta`` ``axes`` (a subset of :data:`TTA_AXES`; none: no TTA)."""
        if self.tta is not None:
            return self.tta, self.tta_axes
        axes = (self.bundle(kind).info.get("tta") or {}).get("axes")
        if not axes:
            return False, None
        if isinstance(axes, str) or any(a not in TTA_AXES for a in axes):
            raise ModelError(f"the {kind} bundle's config.json tta.axes must be a subset of {TTA_AXES}; got {axes!r}")
        return True, tuple(a for a in TTA_AXES if a in axes)

    def lesion_confidence_rule(self, kind: Literal["3d", "2d"] = "3d") -> dict[str, float]:
        """``{"drop_below", "flag_below"}`` for ``kind``: the constructor's ``min_lesion_confidence``
        if given, else the bundle's config.json ``lesion_confidence`` (defaults 0 and
        :data:`~liverseg.analysis.confidence.LOW_CONFIDENCE`)."""
        info = self.bundle(kind).info.get("lesion_confidence") or {}
        drop = self._min_lesion_confidence if self._min_lesion_confidence is not None else float(info.get("drop_below", 0.0))
        return {"drop_below": drop, "flag_below": max(drop, float(info.get("flag_below", LOW_CONFIDENCE)))}

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        volume: Volume,
        *,
        progress: ProgressCallback | None = None,
        return_probabilities: bool = False,
    ) -> Prediction:
        """Labels (and optionally probabilities) for ``volume`` on its own grid.

        Args:
            volume: a CT Volume in HU, or a single 8-bit abdominal-window slice (``is_hu`` False).
            progress: called as ``progress(step, fraction)`` with the overall fraction done
                (0–1); steps are ``"load_model"``, ``"localize"``, ``"segment"``,
                ``"postprocess"``, ``"done"``.
            return_probabilities: also return the softmax (float16, (3, z, y, x)) on the input grid.

        Raises:
            InputError: the volume cannot be segmented (empty, not finite, a slice without a 2D model).
            ModelError: the bundle is missing or damaged.
        """
        if not isinstance(volume, Volume):
            raise TypeError(f"volume must be a liverseg.io.Volume; got {type(volume).__name__}")
        check_segmentable(volume.shape)  # a 1 x 1 x 1 "scan" or an icon is refused, not segmented
        if not volume.is_2d:
            reorient = Reorientation.from_direction(volume.direction)
            if not reorient.is_identity:  # the networks see the canonical (DICOM axial) axis order
                canonical = reorient.apply_volume(volume)
                pred = self.predict(canonical, progress=progress, return_probabilities=return_probabilities)
                return dataclasses.replace(
                    pred,
                    labels=volume.with_array(reorient.invert(pred.labels.array), is_hu=False, modality="SEG"),
                    probabilities=None if pred.probabilities is None else reorient.invert(pred.probabilities),
                    roi=reorient.invert_roi(pred.roi, canonical.shape),
                    tumor_probability=_invert_probability(reorient, pred.tumor_probability, canonical.shape),
                )
        report = progress or (lambda step, fraction: None)
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        warnings: list[str] = []
        kind: Literal["3d", "2d"] = "2d" if volume.is_2d else "3d"
        report("load_model", 0.0)
        t0 = time.perf_counter()
        bundle = self.bundle(kind)
        for stage in bundle.stages:
            self._net(kind, bundle, stage)
        timings["load_model"] = time.perf_counter() - t0

        plan_2d = bundle.stages[-1].plan if kind == "2d" else None
        input_path_2d = None
        if plan_2d is not None and plan_2d.input_kind == "display":
            hu, input_path_2d = self._to_display(volume, plan_2d, warnings)  # 0..1 display values, not HU
        else:
            hu = self._to_hu(volume, warnings)
            if kind == "2d":
                input_path_2d = "HU" if volume.is_hu else "8-bit image read as W400/L40 pseudo-HU"
        spacing = volume.spacing
        if kind == "2d" and spacing is None:
            warnings.append("the slice has no pixel size: sizes are in pixels (give the pixel size in mm to get mm²)")
        if spacing is None and kind == "3d":
            warnings.append("the scan has no voxel spacing: it was used at the model's own spacing, and sizes are unknown")
        # no_grad, not inference_mode: the nnFormer caches index/mask tensors per window size, and
        # tensors made in inference mode would break a later training step or ONNX export in this process
        with self._threads(), torch.no_grad():
            probs, roi = self._cascade(kind, bundle, hu, spacing, timings, warnings, report)
            report("postprocess", 0.9)
            t0 = time.perf_counter()
            labels, tumor_probability = self._labels_from_probs(probs, hu.shape, roi, threads=self.threads)
            timings["resample"] = timings.get("resample", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        post = postprocess_labels(
            labels,
            spacing=spacing,
            min_tumor_volume_mm3=self.min_tumor_volume_mm3,
            liver_dilation_mm=self.liver_dilation_mm,
            neck_radius_mm=self.neck_radius_mm,
        )
        rule = self.lesion_confidence_rule(kind)
        final, n_dropped = drop_unconfident_lesions(post.labels, tumor_probability, min_confidence=rule["drop_below"])
        post_summary = {**post.summary(), "low_confidence_lesions_dropped": n_dropped}
        liver_rule = self.liver_confidence_rule(kind)
        full_probs: np.ndarray | None = None  # the softmax on the input grid, made once if anything needs it
        if liver_rule > 0 and (final > 0).any():
            # the bundle's whole-liver rule (2D: faint specks on a slice without liver); see analysis.confidence
            full_probs = self._full_probabilities(probs, hu.shape, roi)
            fg_prob = 1.0 - full_probs[0].astype(np.float32)
            final, liver_conf, liver_dropped = drop_unconfident_liver(final, fg_prob, min_confidence=liver_rule)
            post_summary["liver_confidence"] = round(liver_conf, 4) if liver_conf is not None else None
            if liver_dropped:
                post_summary["low_confidence_liver_dropped_voxels"] = int((post.labels > 0).sum())
                warnings.append(f"a faint liver-like region (mean probability {liver_conf:.2f}, below the model's "
                                f"{liver_rule:.2f}) was not reported as liver")
        timings["postprocess"] = time.perf_counter() - t0
        if not (final > 0).any():
            warnings.append("no liver was found in this image")
        probabilities = None
        if return_probabilities:
            t0 = time.perf_counter()
            probabilities = full_probs if full_probs is not None else self._full_probabilities(probs, hu.shape, roi)
            timings["resample"] += time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        report("done", 1.0)
        for w in warnings:
            log.warning("%s", w)
        label_volume = volume.with_array(final, is_hu=False, modality="SEG")
        return Prediction(
            labels=label_volume,
            probabilities=probabilities,
            timings_s={k: round(v, 4) for k, v in timings.items()},
            model=self.model_info(kind),
            device=str(self.device),
            warnings=warnings,
            postprocess=post_summary,
            tumor_probability=tumor_probability,
            roi=[(int(s.start), int(s.stop)) for s in roi],
            input_path_2d=input_path_2d,
        )

    @staticmethod
    def _to_hu(volume: Volume, warnings: list[str]) -> np.ndarray:
        arr = volume.array
        if arr.size == 0:
            raise InputError("the image is empty (no voxels)")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise InputError("the image holds NaN or infinite values; export it again as CT in HU")
        if volume.is_hu:
            return np.asarray(arr, np.float32)
        if volume.is_2d:
            if arr.min() < 0 or arr.max() > 255:
                raise InputError(
                    f"an image without HU must be an 8-bit abdominal-window slice (values 0–255); "
                    f"this one has values {arr.min()}–{arr.max()}"
                )
            warnings.append(
                "the slice has no Hounsfield units: it was read as an 8-bit abdominal-window image "
                "(W400/L40) and mapped back to pseudo-HU"
            )
            return pseudo_hu_from_window(arr)
        warnings.append("the scan is not marked as CT in HU; its values were used as HU")
        return np.asarray(arr, np.float32)

    def _to_display(self, volume: Volume, plan: Any, warnings: list[str]) -> tuple[np.ndarray, str]:
        """A single slice as the 0..1 display image a window-invariant 2D network reads, and its path.

        HU (DICOM, a one-slice NIfTI): rendered to 8 bits in ``plan.display_window_hu``. An 8-bit
        picture: ``p / 255`` as it is. A 16-bit picture without HU: rendered min–max to 8 bits
        (one of the training windows).
        """
        from liverseg.preprocessing.display import display_from_8bit, render_minmax, render_window

        if volume.is_hu:
            hu = self._to_hu(volume, warnings)
            width, level = plan.display_window_hu
            path = f"HU, rendered W{width:g}/L{level:g}"
            return display_from_8bit(render_window(hu, width_hu=width, level_hu=level)), path
        arr = volume.array
        if arr.size == 0:
            raise InputError("the image is empty (no voxels)")
        if not np.isfinite(arr).all() or arr.min() < 0:
            raise InputError(
                "an image without Hounsfield units must hold display values (8-bit 0–255, or 16-bit); "
                f"this one has values {arr.min()}–{arr.max()}: export the slice as PNG/JPEG or as DICOM in HU"
            )
        if arr.max() > 255:
            warnings.append("the 16-bit image has no Hounsfield units: it was shown to the model min–max (full range)")
            return display_from_8bit(render_minmax(arr)), "16-bit image without HU, rendered min–max"
        warnings.append("the slice has no Hounsfield units: it was read as an 8-bit image in whatever window it was "
                        "exported (the 2D model is trained on many windows)")
        return display_from_8bit(arr), "8-bit image (window unknown)"

    def _cascade(
        self,
        kind: str,
        bundle: ModelBundle,
        hu: np.ndarray,
        spacing: tuple[float, float, float] | None,
        timings: dict[str, float],
        warnings: list[str],
        report: ProgressCallback,
    ) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
        """Softmax of the segment stage on its own grid, and the region (input grid) it covers."""
        loc, seg = bundle.stage("localize"), bundle.stage("segment")
        assert seg is not None
        roi = tuple(slice(0, n) for n in hu.shape)
        seg_start = 0.05
        if loc is not None:
            seg_start = 0.25
            t0 = time.perf_counter()
            probs = self._run_stage(kind, bundle, loc, hu, spacing,
                                    lambda f: report("localize", 0.05 + 0.2 * f))
            liver = largest_component((probs.argmax(0) > 0).cpu().numpy())
            del probs
            timings["localize"] = time.perf_counter() - t0
            if liver.any():
                roi = self._roi_from_coarse(liver, hu.shape, spacing, seg.roi_margin_mm or 0.0)
            else:
                warnings.append(
                    "the localizer found no liver: the segment stage ran on the whole image (slower, less reliable)"
                )
        t0 = time.perf_counter()
        probs = self._run_stage(kind, bundle, seg, hu[roi], spacing,
                                lambda f: report("segment", seg_start + (0.9 - seg_start) * f))
        timings["segment"] = time.perf_counter() - t0
        return probs, roi  # type: ignore[return-value]

    @staticmethod
    def _roi_from_coarse(
        liver: np.ndarray, shape: Sequence[int], spacing: Sequence[float] | None, margin_mm: float
    ) -> tuple[slice, ...]:
        """The liver's bounding box on a coarse grid → index slices on the input grid, plus a margin (mm).

        The coarse grid covers the same field of view (voxel edges aligned at both ends), so
        coarse voxel ``j`` spans input indices ``[j · n / m, (j + 1) · n / m)``.
        """
        roi = []
        for axis, (n, m) in enumerate(zip(shape, liver.shape)):
            other = tuple(a for a in range(liver.ndim) if a != axis)
            idx = np.flatnonzero(liver.any(axis=other))
            lo, hi = idx[0] * n / m, (idx[-1] + 1) * n / m
            pad = margin_mm / spacing[axis] if spacing is not None else 0.0
            roi.append(slice(max(0, int(math.floor(lo - pad))), min(n, int(math.ceil(hi + pad)))))
        return tuple(roi)

    def _run_stage(
        self,
        kind: str,
        bundle: ModelBundle,
        stage: Stage,
        hu: np.ndarray,
        spacing: Sequence[float] | None,
        report: Callable[[float], None],
    ) -> torch.Tensor:
        """Softmax (C, z', y', x') of one stage on the stage's grid (float32, on the device)."""
        plan = stage.plan
        nd = 2 if kind == "2d" else 3
        target = tuple(hu.shape)
        if plan.spacing_mm is not None and spacing is not None:
            target = resampled_shape(hu.shape, spacing, plan.spacing_mm)
            if nd == 2:
                target = (1, *target[1:])
        n_in = math.prod(hu.shape)
        if math.prod(target) > max(MAX_UPSAMPLING * n_in, UPSAMPLING_FREE_VOXELS):  # huge voxels: a tiny file, a huge grid
            raise DimensionError(
                f"the model's {stage.name} stage would resample this scan's {n_in} voxels to "
                f"{math.prod(target)} ({' x '.join(map(str, target))} at {plan.spacing_mm} mm), more than "
                f"{MAX_UPSAMPLING}-fold: its voxels ({' x '.join(f'{s:g}' for s in spacing or ())} mm) are far coarser "
                "than a CT's. Check the voxel size in the header"
            )
        if math.prod(target) > MAX_STAGE_VOXELS:  # before the grid is built: its memory is ~50 bytes a voxel
            raise DimensionError(
                f"the model's {stage.name} stage would resample this scan to {' x '.join(map(str, target))} voxels "
                f"at {plan.spacing_mm} mm, more than the {MAX_STAGE_VOXELS / 1e6:.0f} million it is allowed; the "
                "scan covers far more than an abdomen or its voxel size is wrong: crop it to the abdomen"
            )
        x = resample_to_shape(torch.from_numpy(np.ascontiguousarray(hu, np.float32)), target, order=1)
        x = torch.from_numpy(plan.normalize(x.numpy()))[None, None].to(self.device)  # (1, 1, z, y, x)
        roi_size = tuple(plan.patch_size[-nd:])
        slice_size: tuple[int, ...] | None = None
        if nd == 2:
            x = x[:, :, 0]  # (1, 1, y, x)
            if plan.spacing_mm is None:  # a 2D plan on the pixel grid: the whole slice resized to the patch, as trained
                slice_size = tuple(x.shape[2:])
                x = resize_slices(x, roi_size)
        net = self._net(kind, bundle, stage)
        flips = _mirror_axes(nd, *self.tta_rule(kind))
        padded = [max(n, r) for n, r in zip(x.shape[2:], roi_size)]
        total = max(1, len(window_slices(padded, roi_size, self.overlap)) * len(flips))
        done = [0]

        def counted(batch: torch.Tensor) -> torch.Tensor:
            out = net(batch)
            done[0] += batch.shape[0]
            report(min(1.0, done[0] / total))
            return out

        acc: torch.Tensor | None = None
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            logits = sliding_window_inference(
                xi, roi_size, counted, overlap=self.overlap, sw_batch_size=self.sw_batch_size,
                cval=float(plan.normalize(np.array([plan.clip_hu[0]]))[0]),
            )
            p = torch.softmax(torch.as_tensor(logits).float(), dim=1)
            if axes:
                p = torch.flip(p, axes)
            acc = p if acc is None else acc.add_(p)
        assert acc is not None
        acc /= len(flips)
        if slice_size is not None:
            acc = resize_slices(acc, slice_size)
        probs = acc[0]
        if nd == 2:
            probs = probs[:, None]  # (C, 1, y, x)
        return probs

    @staticmethod
    def _roi_probs(probs: torch.Tensor, roi: Sequence[slice]) -> torch.Tensor:
        shape = tuple(s.stop - s.start for s in roi)
        return resample_to_shape(probs.float().cpu(), shape, order=1)  # type: ignore[return-value]

    @staticmethod
    def _labels_from_probs(
        probs: torch.Tensor, shape: Sequence[int], roi: Sequence[slice], *, threads: int | None = None
    ) -> tuple[np.ndarray, TumorProbability | None]:
        """Argmax of the probabilities resampled linearly onto the input grid's region ``roi``,
        and the tumor probability in the resampled box (None for a 2-class model or no foreground).

        Only the part of the region near the stage's foreground is resampled: where all
        neighbouring stage voxels say background, so does any linear blend of them. Only the
        foreground channels are resampled; background is their complement (the softmax sums
        to 1, and a linear blend keeps the sum). The channels are resampled in parallel threads
        (up to ``threads``, None: the CPU count).
        """
        labels = np.zeros(tuple(shape), np.uint8)
        p = probs.float().cpu().numpy()
        fg = _argmax_classes(list(p)) > 0
        if not bool(fg.any()):
            return labels, None
        out_shape = [s.stop - s.start for s in roi]
        ranges, crop = [], []
        for axis, (n_out, m) in enumerate(zip(out_shape, p.shape[1:])):
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(fg.any(axis=other))
            a, b = int(idx[0]), int(idx[-1])
            scale = n_out / m
            lo = max(0, int(math.floor((a - 1.0) * scale)) - 1)
            hi = min(n_out, int(math.ceil((b + 2.0) * scale)) + 1)
            ranges.append((lo, hi))
            i0, i1, _ = _linear_weights(m, n_out, lo, hi)
            crop.append(slice(int(i0.min()), int(i1.max()) + 1))  # the stage voxels these outputs read
        # indices relative to the crop: resample the whole axis' grid, read only the crop's part
        axes = []
        for axis, (n_out, (lo, hi), c) in enumerate(zip(out_shape, ranges, crop)):
            i0, i1, w = _linear_weights(p.shape[axis + 1], n_out, lo, hi)
            axes.append((axis, i0 - c.start, i1 - c.start, w))

        def resample_channel(k: int) -> np.ndarray:
            ch = np.ascontiguousarray(p[(k, *crop)])
            for axis, i0, i1, w in axes:
                ch = _blend(ch, axis, i0, i1, w)
            return ch

        channels = range(1, p.shape[0])
        workers = min(len(channels), threads or os.cpu_count() or 1)
        if workers > 1:  # numpy's gathers and blends release the GIL: one channel per core
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="liverseg-resample") as pool:
                sub = list(pool.map(resample_channel, channels))
        else:
            sub = [resample_channel(k) for k in channels]
        background = sub[0].copy() if len(sub) == 1 else np.add(sub[0], sub[1])
        for ch in sub[2:]:
            background += ch
        np.subtract(1.0, background, out=background)
        box = tuple(slice(r.start + lo, r.start + hi) for r, (lo, hi) in zip(roi, ranges))
        labels[box] = _argmax_classes([background, *sub])
        tumor = TumorProbability(box=box, values=_to_float16(sub[1])) if len(sub) > 1 else None
        return labels, tumor

    def _full_probabilities(self, probs: torch.Tensor, shape: Sequence[int], roi: Sequence[slice]) -> np.ndarray:
        out = np.zeros((probs.shape[0], *shape), np.float16)
        out[0] = 1.0  # background outside the region of interest
        out[(slice(None), *roi)] = self._roi_probs(probs, roi).to(torch.float16).numpy()
        return out
