"""The Predictor's sliding window against MONAI's ``sliding_window_inference`` (the reference it replaces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from liverseg.inference.sliding_window import gaussian_importance_map, sliding_window_inference, window_slices


def _net(x: torch.Tensor) -> torch.Tensor:
    """A position-dependent 3-class 'network': windows disagree, so blending weights matter."""
    nd = x.ndim - 2
    ramp = torch.linspace(-1, 1, x.shape[-1]).view(*([1] * (nd + 1)), -1)
    return torch.cat([x * 2 + ramp, torch.sin(3 * x) - ramp, x.mean() + 0 * x], dim=1)


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "batch"),
    [
        ((1, 1, 30, 41, 37), (16, 16, 16), 0.5, 1),
        ((1, 1, 76, 152, 152), (80, 96, 96), 0.5, 1),  # 3D-IRCADb 17 at 2.5 mm under the bundled 3D model's window
        ((2, 1, 9, 20, 18), (8, 8, 8), 0.25, 3),
        ((1, 1, 5, 7, 40), (8, 8, 8), 0.5, 2),  # smaller than the window on two axes: padded, cropped back
        ((1, 1, 33, 47), (16, 16), 0.6, 1),  # 2D
        ((1, 1, 256, 256), (256, 256), 0.5, 1),  # 2D, one window
    ],
)
def test_matches_monai(shape, roi, overlap, batch):
    from monai.inferers import sliding_window_inference as monai_swi

    torch.manual_seed(0)
    x = torch.randn(*shape)
    ours = sliding_window_inference(x, roi, _net, overlap=overlap, sw_batch_size=batch, cval=-1.5)
    ref = monai_swi(x, roi, batch, _net, overlap=overlap, mode="gaussian", padding_mode="constant", cval=-1.5)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, torch.as_tensor(ref), rtol=0, atol=1e-6)


def test_windows_and_weights_match_monai():
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for image, roi, overlap in [((76, 152, 152), (80, 96, 96), 0.5), ((100, 37), (32, 32), 0.25), ((9,), (9,), 0.5)]:
        padded = tuple(max(n, r) for n, r in zip(image, roi))
        interval = _get_scan_interval(padded, roi, len(roi), (overlap,) * len(roi))
        assert window_slices(padded, roi, overlap) == dense_patch_slices(padded, roi, interval)
        ref = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
        torch.testing.assert_close(gaussian_importance_map(roi), ref, rtol=0, atol=0)


def test_counts_every_window_and_checks_arguments():
    calls = []

    def net(x):
        calls.append(x.shape[0])
        return x

    x = torch.ones(1, 1, 20, 20)
    out = sliding_window_inference(x, (8, 8), net, overlap=0.5, sw_batch_size=4)
    assert sum(calls) == len(window_slices((20, 20), (8, 8), 0.5)) == 16
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)  # blending a constant gives the constant
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window_inference(x, (8, 8, 8), net)
    with pytest.raises(ValueError, match="overlap"):
        window_slices((20,), (8,), 1.0)
    with pytest.raises(ValueError, match="returned windows"):
        sliding_window_inference(x, (8, 8), lambda t: t[..., :4])
