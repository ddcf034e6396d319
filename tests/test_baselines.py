"""The convolutional baseline used for controlled comparisons (configs/experiments/fine-unet.json)."""

from __future__ import annotations

import pytest
import torch

from liverseg.models import build_model


def test_unet_baseline_any_size_and_parameter_count() -> None:
    net = build_model("unet-3d-baseline").eval()
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 4.81) < 0.01
    with torch.inference_mode():
        out = net(torch.randn(1, 1, 13, 37, 29))
    assert out.shape == (1, 3, 13, 37, 29)


def test_unet_baseline_trains_and_refuses_what_it_cannot_do() -> None:
    net = build_model("unet-3d-baseline", channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    net(torch.randn(2, 1, 9, 17, 11)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="deep-supervision"):
        build_model("unet-3d-baseline", deep_supervision=True)
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="unet-3d-baseline"):
        build_model("no-such-model")
