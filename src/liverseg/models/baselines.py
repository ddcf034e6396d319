"""Convolutional baselines for controlled comparisons with the nnFormer.

Not a bundled model: these exist so that a recipe can swap only the network
(``"architecture": "unet-3d-baseline"``) and train it with the same data, plan,
sampler, augmentation, loss, optimizer and time budget as an nnFormer stage. That
answers "is a gap the transformer's, or the pipeline's?" by measurement.

``unet-3d-baseline`` is MONAI's residual ``UNet`` (channels 16, 32, 64, 128, 256,
strides 2, 2, 2, 2, two residual units per level: 4.8 M parameters), the plain 3D UNet
used as the project's calibration point in the workplace notes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BASELINE_CONFIGS", "BaselineUNet"]

#: name → :class:`BaselineUNet` kwargs
BASELINE_CONFIGS: dict[str, dict[str, Any]] = {
    "unet-3d-baseline": {
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 3,
        "channels": (16, 32, 64, 128, 256),
        "strides": (2, 2, 2, 2),
        "num_res_units": 2,
    },
}


class BaselineUNet(nn.Module):
    """MONAI's residual UNet that, like :class:`~liverseg.models.nnformer.NNFormer`, takes any input size.

    The input is padded at the far end of each axis to a multiple of the product of the
    strides and the output cropped back. There are no deep-supervision heads.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for CT).
        num_classes: output channels (logits).
        channels: feature channels per level.
        strides: downsampling stride per level transition (``len(channels) - 1`` entries).
        num_res_units: residual units per level.
        deep_supervision: must be ``False`` (accepted so recipes can pass it).

    Raises:
        ValueError: ``deep_supervision=True``, or invalid MONAI UNet arguments.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 3,
        channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        strides: tuple[int, ...] = (2, 2, 2, 2),
        num_res_units: int = 2,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        if deep_supervision:
            raise ValueError("the UNet baseline has no deep-supervision heads; set deep_supervision to false in the recipe's stage")
        if len(strides) != len(channels) - 1:
            raise ValueError(f"strides needs len(channels) - 1 = {len(channels) - 1} entries; got {len(strides)}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.deep_supervision = False
        self.size_multiple = math.prod(int(s) for s in strides)
        self.net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, *spatial)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {'z, y, x' if self.spatial_dims == 3 else 'y, x'}); got {tuple(x.shape)}"
            )
        sizes = x.shape[2:]
        m = self.size_multiple
        pads: list[int] = []
        for s in reversed(sizes):
            pads += [0, (m - s % m) % m]
        out = self.net(F.pad(x, pads) if any(pads) else x)
        return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


def build_baseline(name: str, **overrides: Any) -> BaselineUNet:
    """Build a registered baseline with ``overrides`` on top of its kwargs."""
    kwargs = copy.deepcopy(BASELINE_CONFIGS[name])
    kwargs.update(overrides)
    return BaselineUNet(**kwargs)
