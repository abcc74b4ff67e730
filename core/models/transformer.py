"""Planar transformer whose attention cost stays bounded (windowed attention).

``transformer_sc<s>_layers<L>_e<w>``: the tile is cut into ``s**2 x s**2`` patches (one
token each, ``w`` channels), ``L`` transformer blocks attend inside windows of
``WINDOW x WINDOW`` tokens (every other block with windows shifted by half, so information
crosses window borders), and a light decoder upsamples back to full resolution, fused with
a full-resolution convolutional skip so single-pixel targets (deposits) stay sharp.
Memory grows linearly with the tile area (global attention is quadratic: 8 GB for
128 x 256 on CPU, see DESIGN.md section 4).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .unet import ConvBlock, norm2d, pad_to_multiple

WINDOW = 8
"""Side of an attention window, in tokens (64 tokens attend to each other)."""
HEAD_WIDTH = 32
"""Channels per attention head."""


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(x: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = x.shape[-1]
    x = x.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _pads(size: int, window: int, shift: int) -> Tuple[int, int]:
    """Padding (before, after) so that windows start ``shift`` tokens before the grid."""
    before = shift
    after = (-(size + before)) % window
    return before, after


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) windows; padding is masked out."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.shifted = shifted
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) tokens -> same shape."""
        b, h, w, c = x.shape
        win = min(self.window, max(h, w))
        shift = win // 2 if self.shifted else 0
        (top, bottom), (left, right) = _pads(h, win, shift), _pads(w, win, shift)
        xp = F.pad(x, (0, 0, left, right, top, bottom))
        real = F.pad(x.new_ones(1, h, w, 1), (0, 0, left, right, top, bottom))
        hp, wp = xp.shape[1:3]
        tokens = window_partition(xp, win)
        keep = window_partition(real, win)[..., 0].bool()  # (nW, N): real tokens of each window
        keep = keep.repeat(b, 1)[:, None, None, :]  # (B*nW, 1, 1, N) key mask
        qkv = self.qkv(tokens).view(tokens.shape[0], -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keep)
        out = out.transpose(1, 2).reshape(tokens.shape[0], -1, c)
        out = window_merge(self.proj(out), win, b, hp, wp)
        return out[:, top:top + h, left:left + w]


class MixFFN(nn.Module):
    """Token MLP with a depthwise 3x3 convolution (gives positional information, no embeddings)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> same shape."""
        y = x.permute(0, 3, 1, 2)
        y = self.fc2(F.gelu(self.dw(self.fc1(y))))
        return y.permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block: windowed attention + Mix-FFN, both residual."""

    def __init__(self, dim: int, heads: int, shifted: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, WINDOW, shifted)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class WindowTransformer(nn.Module):
    """Planar windowed-attention transformer returning logits (B, num_classes, H, W).

    Args:
        in_channels: encoded input channels.
        num_classes: output classes.
        scale: patches are ``scale**2`` pixels on a side (scale 1: one token per pixel).
        layers: number of transformer blocks.
        width: token embedding width.
    """

    def __init__(self, in_channels: int, num_classes: int = 2, scale: int = 2, layers: int = 4, width: int = 128) -> None:
        super().__init__()
        self.patch = max(1, scale * scale)
        heads = max(1, width // HEAD_WIDTH)
        while width % heads:
            heads -= 1
        decoder = max(8, width // 4)
        self.embed = nn.Conv2d(in_channels, width, self.patch, stride=self.patch)
        self.blocks = nn.ModuleList([Block(width, heads, shifted=i % 2 == 1) for i in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.reduce = nn.Sequential(nn.Conv2d(width, decoder, 1), norm2d(decoder), nn.GELU())
        self.skip = nn.Sequential(nn.Conv2d(in_channels, decoder, 3, padding=1), norm2d(decoder), nn.GELU())
        self.fuse = ConvBlock(2 * decoder, decoder)
        self.head = nn.Conv2d(decoder, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.patch)
        tokens = self.embed(x).permute(0, 2, 3, 1)
        for block in self.blocks:
            tokens = block(tokens)
        coarse = self.reduce(self.norm(tokens).permute(0, 3, 1, 2))
        up = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(self.fuse(torch.cat([up, self.skip(x)], dim=1)))
        return out[..., :h, :w]
