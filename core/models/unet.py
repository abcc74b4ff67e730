"""Planar U-Net: our own small definition for local / projected rasters.

``unet_sc<s>_layers<L>_e<w>``: ``L`` resolution stages with widths ``w * 2**i``, each
stage after the first downsampled by ``s`` (max pooling) and brought back by a transposed
convolution.

Normalisation is ``ChannelNorm`` (LayerNorm over the channels of each pixel): no statistics
over space or batch, so (1) a pixel's output depends only on its receptive field, not on
the rest of the window, which keeps tiled prediction seamless (GroupNorm's per-window
statistics gave visible seams), and (2) training and evaluation behave the same with any
batch size, DDP needing no synchronised statistics (BatchNorm would).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at every pixel of a (B, C, H, W) tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def norm2d(channels: int) -> nn.Module:
    """The normalisation of every convolutional block (see the module docstring for why)."""
    return ChannelNorm(channels)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by ChannelNorm and GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm2d(out_channels),
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
