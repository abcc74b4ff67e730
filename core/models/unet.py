"""Planar U-Net: our own small definition for local / projected rasters.

``unet_sc<s>_layers<L>_e<w>``: ``L`` resolution stages with widths ``w * 2**i``, each
stage after the first downsampled by ``s`` (max pooling) and brought back by a transposed
convolution. GroupNorm instead of BatchNorm because batches are small (a few tiles) and
DDP then needs no synchronised statistics.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels`` (works for tiny widths too)."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by GroupNorm and GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads the bottom/right so H and W are multiples of ``multiple`` (crop back after)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x


class UNet(nn.Module):
    """Planar U-Net returning logits (B, num_classes, H, W) for any H, W.

    Args:
        in_channels: encoded input channels.
        num_classes: output classes (2 for binary segmentation with softmax).
        scale: downsampling factor between stages.
        layers: number of resolution stages (1 = no downsampling).
        width: channels of the first stage; stage i has ``width * 2**i``.
    """

    def __init__(self, in_channels: int, num_classes: int = 2, scale: int = 2, layers: int = 4, width: int = 32) -> None:
        super().__init__()
        widths: List[int] = [width * 2**i for i in range(layers)]
        self.scale = scale
        self.multiple = scale ** (layers - 1)
        self.encoders = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])] + [ConvBlock(widths[i - 1], widths[i]) for i in range(1, layers)]
        )
        self.pool = nn.MaxPool2d(scale) if scale > 1 else nn.Identity()
        self.ups = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i], widths[i - 1], scale, stride=scale) for i in range(layers - 1, 0, -1)]
        )
        self.decoders = nn.ModuleList([ConvBlock(2 * widths[i - 1], widths[i - 1]) for i in range(layers - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple)
        skips: List[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)[..., :h, :w]
