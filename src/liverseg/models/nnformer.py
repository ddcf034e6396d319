"""nnFormer: a volumetric transformer for segmentation (Zhou et al., arXiv 2109.03201).

The network, as in the paper and the authors' code (github 282857341/nnFormer),
written anew for liverseg:

* **convolutional stem**: two blocks of (strided 3×3×3 conv, GELU, LayerNorm,
  3×3×3 conv), whose strides multiply to ``patch_size`` (e.g. 2, 4, 4), then a
  LayerNorm: one token per patch;
* **encoder**: stages of transformer blocks at dims ``embed_dim · 2^i``. Each
  block is LV-MSA, multi-head self-attention inside local 3D windows with a
  learned relative position bias; every second block shifts its windows by half
  a window (as Swin). A stage whose window covers its whole feature map is
  GV-MSA, global self-attention (in the paper's Synapse configuration the last
  two stages at the 64×128×128 crop). Between stages a GELU, LayerNorm and a
  strided 3×3×3 conv halve the size and double the channels;
* **decoder** with **skip attention**: each stage upsamples by a transposed
  conv (LayerNorm first), and its first block takes queries from the upsampled
  decoder tokens, keys and values from the encoder's skip tokens; the residual
  is their sum. The remaining blocks are shifted-window self-attention;
* **head**: a transposed conv of stride ``patch_size`` back to full resolution,
  and for deep supervision the same from the coarser decoder stages (1/2, 1/4
  resolution).

``refine_head=True`` (not in the paper) replaces the full-resolution head by a small
convolutional decoder: the finest decoder tokens are upsampled to the stem's first stride
(at most 2 per axis), joined with the stem's features there (a UNETR-style skip), convolved
twice, and a transposed conv of that stride gives the logits. The paper's head turns each
token into its whole ``patch_size`` block of logits by one linear map, which at the CT voxel
sizes of the paper (0.8 mm in plane) is a 3 mm block but at 2.5 mm voxels a 10 mm one: organ
and lesion outlines come out in 10 mm steps; with the refined head in 5 mm steps, as a
convolutional UNet's whose first layer has stride 2.

What differs from the authors' code, on purpose:

* any input size: the input is zero-padded at the far end of each axis to a
  multiple of ``patch_size · 2^(stages-1)`` and the outputs cropped back; inside
  a block a feature map smaller than the window shrinks the window to the map
  (and drops the shift on that axis), a map larger than a multiple of the window
  is padded to one. The relative position bias table is sized by the configured
  window only, so weights do not depend on the input size;
* the relative position index is the exact (injective) one of Swin; the
  authors' version maps some distinct offsets onto one table entry;
* windows may be anisotropic (a 3-tuple per stage) and there is a 2D variant
  (``spatial_dims=2``, 2D convs and 2D windows) for single slices;
* the deep-supervision heads are always built, so one set of weights serves
  training (deep supervision on) and inference (off).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NNFormer"]

#: the largest number of tokens one attention window may hold (attention costs N² memory per window)
MAX_WINDOW_TOKENS = 4096
_MASK_VALUE = -100.0  # added to the logits of token pairs that a shifted window must not mix (as Swin)


def _as_tuple(value: int | Sequence[int], nd: int, what: str) -> tuple[int, ...]:
    """Normalise an int or a sequence to an ``nd``-tuple of ints (a 3-tuple with z = 1 is accepted in 2D)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * nd
    try:
        items = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ValueError(f"{what} must be an int or a sequence of {nd} ints, got {value!r}") from exc
    if nd == 2 and len(items) == 3:
        if items[0] != 1:
            raise ValueError(f"{what} {value!r} has a z entry of {items[0]}; a 2D network needs z = 1 or a 2-tuple")
        items = items[1:]
    if len(items) != nd:
        raise ValueError(f"{what} must have {nd} entries for spatial_dims={nd}, got {value!r}")
    return items


def _linspace(stop: float, count: int) -> list[float]:
    """``count`` values rising linearly from 0 to ``stop`` (stochastic-depth rates; no tensors, so meta-safe)."""
    return [stop * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) → (B, *S, C); explicit permutation (ONNX rejects negative ``perm`` entries)."""
    return x.permute(0, *range(2, x.ndim), 1)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, *S, C) → (B, C, *S)."""
    return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1))


# --------------------------------------------------------------------------- window helpers


def _window_partition(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *S, C) with S divisible by ``window`` → (B · n_windows, prod(window), C)."""
    b, c = x.shape[0], x.shape[-1]
    sizes = x.shape[1:-1]
    nd = len(window)
    split: list[int] = []
    for s, w in zip(sizes, window):
        split += [s // w, w]
    x = x.reshape(b, *split, c)
    order = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)] + [1 + 2 * nd]
    return x.permute(*order).reshape(-1, math.prod(window), c)


def _window_reverse(windows: torch.Tensor, window: tuple[int, ...], sizes: Sequence[int], batch: int) -> torch.Tensor:
    """Inverse of :func:`_window_partition`: → (B, *sizes, C)."""
    nd = len(window)
    counts = [s // w for s, w in zip(sizes, window)]
    c = windows.shape[-1]
    x = windows.reshape(batch, *counts, *window, c)
    order = [0]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    order.append(1 + 2 * nd)
    return x.permute(*order).reshape(batch, *sizes, c)


@functools.lru_cache(maxsize=64)
def _relative_position_index(window: tuple[int, ...], table_window: tuple[int, ...]) -> torch.Tensor:
    """(N, N) index into a bias table of shape (prod(2·table_window − 1), heads) for a window ≤ table_window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # nd, N
    rel = coords[:, :, None] - coords[:, None, :]  # nd, N, N in [-(w-1), w-1]
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    stride = 1
    for d in reversed(range(len(window))):
        index += (rel[d] + table_window[d] - 1) * stride
        stride *= 2 * table_window[d] - 1
    return index


@functools.lru_cache(maxsize=64)
def _shift_mask(padded: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> torch.Tensor:
    """(n_windows, N, N) additive mask: 0 within a region of the rolled map, −100 across regions."""
    region = torch.zeros((1, *padded, 1))
    per_dim = []
    for w, s in zip(window, shift):
        per_dim.append((slice(0, -w), slice(-w, -s), slice(-s, None)) if s > 0 else (slice(None),))
    for label, slices in enumerate(itertools.product(*per_dim)):
        region[(slice(None), *slices, slice(None))] = label
    ids = _window_partition(region, window).squeeze(-1)  # nW, N
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(_MASK_VALUE), torch.tensor(0.0))


# --------------------------------------------------------------------------- building blocks


class _DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``p`` in training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim), nn.Dropout(drop))


class _WindowAttention(nn.Module):
    """Multi-head attention inside windows with a relative position bias.

    ``cross=False``: queries, keys and values from the same tokens (LV-MSA / GV-MSA).
    ``cross=True``: the skip attention of the decoder; keys and values are projected
    from the encoder's skip tokens, the (normalised) decoder tokens are the queries
    as they are (no query projection, as in the authors' code).
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...], *, cross: bool, attn_drop: float,
                 proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.window = window
        self.cross = cross
        self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if cross:
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, window: tuple[int, ...], mask: torch.Tensor | None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B·nW, N, C) queries (and keys/values unless ``context`` holds them); mask: (nW, N, N)."""
        bw, n, c = x.shape
        h = self.num_heads
        if self.cross:
            assert context is not None
            kv = self.kv(context).reshape(bw, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
            q = x.reshape(bw, n, h, c // h).transpose(1, 2)
        else:
            qkv = self.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        index = _relative_position_index(window, self.window).to(x.device)
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, h).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(bw // nw, nw, h, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.reshape(bw, h, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class _TransformerBlock(nn.Module):
    """Pre-norm transformer block on channels-last maps (B, *S, C) with (shifted) window attention.

    ``cross=True`` makes it the decoder's skip-attention block: ``forward(x_up, skip)``.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...], *, shifted: bool, cross: bool,
                 mlp_ratio: float, drop: float, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.window = window
        self.shifted = shifted and not cross
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, num_heads, window, cross=cross, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)

    def _window_and_shift(self, sizes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        window = tuple(min(w, int(s)) for w, s in zip(self.window, sizes))
        shift = tuple(w // 2 if (self.shifted and int(s) > w) else 0 for w, s in zip(self.window, sizes))
        return window, shift

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[0], x.shape[-1]
        sizes = tuple(int(s) for s in x.shape[1:-1])
        nd = len(sizes)
        window, shift = self._window_and_shift(sizes)
        if skip is not None:
            shortcut = x + skip
            queries, context = self.norm1(x), self.norm1(skip)
        else:
            shortcut = x
            queries, context = self.norm1(x), None

        pads: list[int] = [0, 0]
        for s, w in zip(reversed(sizes), reversed(window)):
            pads += [0, (w - s % w) % w]
        padded = tuple(s + (w - s % w) % w for s, w in zip(sizes, window))
        dims = tuple(range(1, nd + 1))

        def to_windows(t: torch.Tensor) -> torch.Tensor:
            if any(pads):
                t = F.pad(t, pads)
            if any(shift):
                t = torch.roll(t, shifts=tuple(-s for s in shift), dims=dims)
            return _window_partition(t, window)

        mask = _shift_mask(padded, window, shift).to(x.device) if any(shift) else None
        out = self.attn(to_windows(queries), window, mask, None if context is None else to_windows(context))
        out = _window_reverse(out, window, padded, b)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=dims)
        if any(pads):
            out = out[(slice(None), *[slice(0, s) for s in sizes], slice(None))]
        x = shortcut + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _ConvNormAct(nn.Module):
    """Conv → (GELU → LayerNorm over channels) as in the authors' stem; channels-first in and out."""

    def __init__(self, conv: nn.Module, channels: int, *, act_norm: bool) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.LayerNorm(channels) if act_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = _channels_first(self.norm(_channels_last(F.gelu(x))))
        return x


class _Stem(nn.Sequential):
    """Two (strided conv, GELU, LN, conv[, GELU, LN]) blocks; total stride = ``patch_size``."""

    def __init__(self, nd: int, in_channels: int, embed_dim: int, patch_size: tuple[int, ...]) -> None:
        conv = nn.Conv3d if nd == 3 else nn.Conv2d
        first = tuple(min(p, 2) for p in patch_size)
        second = tuple(p // f for p, f in zip(patch_size, first))
        half = embed_dim // 2
        super().__init__(
            _ConvNormAct(conv(in_channels, half, 3, stride=first, padding=1), half, act_norm=True),
            _ConvNormAct(conv(half, half, 3, padding=1), half, act_norm=True),
            _ConvNormAct(conv(half, embed_dim, 3, stride=second, padding=1), embed_dim, act_norm=True),
            _ConvNormAct(conv(embed_dim, embed_dim, 3, padding=1), embed_dim, act_norm=False),
        )


class _RefineHead(nn.Module):
    """Finer head: tokens → the stem's first stride, joined with the stem's features there,
    two convs, then a transposed conv of that stride to logits on the input grid.

    Channels-first in and out: ``tokens`` (B, dim, *S/patch), ``stem_mid`` (B, half, *S/first).
    """

    def __init__(self, nd: int, dim: int, half: int, num_classes: int,
                 first: tuple[int, ...], second: tuple[int, ...]) -> None:
        super().__init__()
        conv = nn.Conv3d if nd == 3 else nn.Conv2d
        up = nn.ConvTranspose3d if nd == 3 else nn.ConvTranspose2d
        self.up_mid = up(dim, half, second, stride=second)
        self.mid = nn.Sequential(
            _ConvNormAct(conv(2 * half, half, 3, padding=1), half, act_norm=True),
            _ConvNormAct(conv(half, half, 3, padding=1), half, act_norm=True),
        )
        self.out = up(half, num_classes, first, stride=first)

    def forward(self, tokens: torch.Tensor, stem_mid: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(torch.cat([self.up_mid(tokens), stem_mid], dim=1)))


class _Downsample(nn.Module):
    """GELU → LayerNorm → 3×3(×3) conv, stride 2: halves the size, doubles the channels (channels-last)."""

    def __init__(self, nd: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduction = (nn.Conv3d if nd == 3 else nn.Conv2d)(dim, 2 * dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _channels_first(self.norm(F.gelu(x)))
        return _channels_last(self.reduction(x))


class _Upsample(nn.Module):
    """LayerNorm → transposed conv 2, stride 2: doubles the size, halves the channels (channels-last)."""

    def __init__(self, nd: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = (nn.ConvTranspose3d if nd == 3 else nn.ConvTranspose2d)(dim, dim // 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_last(self.up(_channels_first(self.norm(x))))


class _EncoderStage(nn.Module):
    def __init__(self, blocks: list[_TransformerBlock], downsample: _Downsample | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class _DecoderStage(nn.Module):
    def __init__(self, upsample: _Upsample, blocks: list[_TransformerBlock]) -> None:
        super().__init__()
        self.upsample = upsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](self.upsample(x), skip)  # skip attention
        for block in self.blocks[1:]:
            x = block(x)
        return x


# --------------------------------------------------------------------------- the network


class NNFormer(nn.Module):
    """nnFormer segmentation network, 3D (B, C, D, H, W) or 2D (B, C, H, W), any input size.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output channels (logits), e.g. 3 for background / liver / tumor.
        embed_dim: channels of the first stage; stage ``i`` has ``embed_dim · 2^i``. Must be even.
        depths: transformer blocks per encoder stage (≥ 2 stages; the paper uses 2, 2, 2, 2).
            The decoder mirrors all but the deepest stage.
        num_heads: attention heads per stage; each must divide that stage's channels.
        patch_size: total stride of the convolutional stem per axis (z, y, x), each 1, 2 or 4
            (the paper: 2, 4, 4 for CT of about 1.5 × 0.8 × 0.8 mm).
        window_size: attention window per stage, an int (cube) or a tuple per axis, in tokens.
            A window at least as large as a stage's feature map makes that stage global (GV-MSA).
        deep_supervision: in training mode return ``[full, 1/2, 1/4, ...]`` logits
            (``len(depths) − 1`` outputs); otherwise (or in eval mode) only the full-resolution logits.
            May be switched later by setting the attribute; the heads always exist.
        spatial_dims: 3 or 2 (2D: 2D convs and windows; window / patch 3-tuples must have z = 1).
        mlp_ratio: hidden size of the MLPs relative to the channels.
        drop_rate, attn_drop_rate: dropout after projections / on attention weights.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks (encoder
            and decoder each, as in the authors' code).
        refine_head: the full-resolution output comes from a small convolutional decoder with
            a skip from the stem (see the module docstring) instead of one transposed conv of
            stride ``patch_size``.

    Raises:
        ValueError: with the reason, for inconsistent arguments, and at call time for an input
            with the wrong number of dimensions or channels.

    Example:
        >>> net = NNFormer(in_channels=1, num_classes=3, embed_dim=16, depths=(2, 2, 2, 2),
        ...                num_heads=(1, 2, 4, 8), patch_size=(2, 4, 4), window_size=(4, 4, 8, 4))
        >>> net(torch.zeros(1, 1, 19, 37, 41)).shape
        torch.Size([1, 3, 19, 37, 41])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        patch_size: int | Sequence[int],
        window_size: int | Sequence[int | Sequence[int]],
        deep_supervision: bool = False,
        spatial_dims: int = 3,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        refine_head: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        nd = spatial_dims
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (the stem's first block has embed_dim / 2 channels), got {embed_dim}")
        depths = tuple(int(d) for d in depths)
        num_heads = tuple(int(h) for h in num_heads)
        n_stages = len(depths)
        if n_stages < 2:
            raise ValueError(f"depths needs at least 2 stages (an encoder stage and a decoder stage), got {depths}")
        if any(d < 1 for d in depths):
            raise ValueError(f"every stage needs at least one block, got depths={depths}")
        if len(num_heads) != n_stages:
            raise ValueError(f"num_heads has {len(num_heads)} entries but depths has {n_stages}; give one per stage")
        for i, h in enumerate(num_heads):
            dim = embed_dim * 2**i
            if h < 1 or dim % h:
                raise ValueError(f"num_heads[{i}]={h} does not divide stage {i}'s {dim} channels (embed_dim · 2^{i})")
        patch = _as_tuple(patch_size, nd, "patch_size")
        if any(p not in (1, 2, 4) for p in patch):
            raise ValueError(f"patch_size entries must be 1, 2 or 4 (two stem convs of stride ≤ 2 each), got {patch_size!r}")
        if isinstance(window_size, int) and not isinstance(window_size, bool):
            windows = [_as_tuple(window_size, nd, "window_size")] * n_stages
        else:
            window_list = list(window_size)  # type: ignore[arg-type]
            if len(window_list) != n_stages:
                raise ValueError(f"window_size has {len(window_list)} entries but depths has {n_stages}; give one per stage")
            windows = [_as_tuple(w, nd, f"window_size[{i}]") for i, w in enumerate(window_list)]
        for i, w in enumerate(windows):
            if any(v < 1 for v in w):
                raise ValueError(f"window_size[{i}]={w} must be ≥ 1 token on every axis")
            if math.prod(w) > MAX_WINDOW_TOKENS:
                raise ValueError(
                    f"window_size[{i}]={w} holds {math.prod(w)} tokens, larger than the allowed {MAX_WINDOW_TOKENS} "
                    "(attention memory grows with the square of the window); use a smaller window"
                )
        if not 0.0 <= drop_path_rate < 1.0 or not 0.0 <= drop_rate < 1.0 or not 0.0 <= attn_drop_rate < 1.0:
            raise ValueError("drop_rate, attn_drop_rate and drop_path_rate must be in [0, 1)")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")

        self.spatial_dims = nd
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.patch_size = patch
        self.window_size = tuple(windows)
        self.deep_supervision = bool(deep_supervision)
        #: the input is padded to a multiple of this per axis (voxels)
        self.size_multiple = tuple(p * 2 ** (n_stages - 1) for p in patch)

        dims = [embed_dim * 2**i for i in range(n_stages)]
        self.stem = _Stem(nd, in_channels, embed_dim, patch)
        self.stem_norm = nn.LayerNorm(embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)

        def make_blocks(dim: int, heads: int, window: tuple[int, ...], depth: int, rates: list[float], *,
                        decoder: bool) -> list[_TransformerBlock]:
            return [
                _TransformerBlock(dim, heads, window, shifted=(j % 2 == 1) or (decoder and j > 0),
                                  cross=decoder and j == 0, mlp_ratio=mlp_ratio, drop=drop_rate,
                                  attn_drop=attn_drop_rate, drop_path=rates[j])
                for j in range(depth)
            ]

        enc_rates = _linspace(drop_path_rate, sum(depths))
        self.encoder = nn.ModuleList()
        for i in range(n_stages):
            rates = enc_rates[sum(depths[:i]):sum(depths[: i + 1])]
            down = _Downsample(nd, dims[i]) if i < n_stages - 1 else None
            self.encoder.append(_EncoderStage(make_blocks(dims[i], num_heads[i], windows[i], depths[i], rates,
                                                          decoder=False), down))
        self.encoder_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

        # decoder stage i (0 = finest) works at encoder stage i's size and channels
        dec_depths = depths[:-1]
        dec_rates = _linspace(drop_path_rate, sum(dec_depths))
        self.decoder = nn.ModuleList()
        for i in range(n_stages - 1):
            # the authors assign stochastic depth rates to decoder stages in the same order as the encoder's
            rates = dec_rates[sum(dec_depths[:i]):sum(dec_depths[: i + 1])]
            self.decoder.append(_DecoderStage(_Upsample(nd, dims[i + 1]),
                                              make_blocks(dims[i], num_heads[i], windows[i], dec_depths[i], rates,
                                                          decoder=True)))
        up = nn.ConvTranspose3d if nd == 3 else nn.ConvTranspose2d
        # heads[k] turns decoder stage k into logits at 1/2^k of the input resolution
        self.heads = nn.ModuleList(up(dims[k], num_classes, patch, stride=patch) for k in range(n_stages - 1))
        self.refine_head = bool(refine_head)
        if self.refine_head:
            first = tuple(min(p, 2) for p in patch)
            second = tuple(p // f for p, f in zip(patch, first))
            # replaces heads[0] for the full-resolution output; heads[1:] (deep supervision) stay
            self.heads[0] = nn.Identity()
            self.refine = _RefineHead(nd, dims[0], embed_dim // 2, num_classes, first, second)
            self._register_load_state_dict_pre_hook(self._drop_unused_head)
        self.apply(self._init_weights)

    @staticmethod
    def _drop_unused_head(state_dict: dict, prefix: str, *args: object) -> None:
        # weights saved by a version that kept the unused stride-`patch` head beside the refined one
        for key in [k for k in state_dict if k.startswith(prefix + "heads.0.")]:
            del state_dict[key]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError when ``x`` is not (B, in_channels, *spatial) with ``spatial_dims`` axes."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != self.spatial_dims + 2:
            layout = "(B, C, D, H, W)" if self.spatial_dims == 3 else "(B, C, H, W)"
            raise ValueError(f"expected a {self.spatial_dims + 2}-D input {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"the network was built for {self.in_channels} input channel(s) but the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); pass (B, {self.in_channels}, ...) or rebuild with in_channels={x.shape[1]}"
            )
        if any(int(s) < 1 for s in x.shape[2:]):
            raise ValueError(f"the input has an empty spatial axis: shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, num_classes, *input spatial); a list ``[full, 1/2, 1/4, ...]`` under deep supervision."""
        self.check_input(x)
        sizes = [int(s) for s in x.shape[2:]]
        pads: list[int] = []
        for s, m in zip(reversed(sizes), reversed(self.size_multiple)):
            pads += [0, (m - s % m) % m]
        if any(pads):
            x = F.pad(x, pads)

        if self.refine_head:
            stem_mid = self.stem[1](self.stem[0](x))
            h = self.stem[3](self.stem[2](stem_mid))
        else:
            h = self.stem(x)
        h = self.pos_drop(self.stem_norm(_channels_last(h)))  # (B, *S, C)
        skips: list[torch.Tensor] = []
        for stage, norm in zip(self.encoder, self.encoder_norms):
            out, h = stage(h)
            skips.append(norm(out))
        y = skips[-1]
        decoded: list[torch.Tensor] = [y] * len(self.decoder)
        for i in reversed(range(len(self.decoder))):
            y = self.decoder[i](y, skips[i])
            decoded[i] = y

        supervise = self.training and self.deep_supervision
        n_out = len(self.heads) if supervise else 1
        outputs = []
        for k in range(n_out):
            if k == 0 and self.refine_head:
                logits = self.refine(_channels_first(decoded[0]), stem_mid)
            else:
                logits = self.heads[k](_channels_first(decoded[k]))
            crop = [slice(None), slice(None)] + [slice(0, -(-s // 2**k)) for s in sizes]
            outputs.append(logits[tuple(crop)])
        return outputs if supervise else outputs[0]
