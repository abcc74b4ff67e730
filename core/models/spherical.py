"""Spherical models built from torch-harmonics layers (used as a library).

They treat their input grid as the WHOLE sphere (equiangular: colatitude 0..pi, longitude
0..2pi, periodic), so they suit global EPSG:4326 rasters; on a local tile they still run
but the geometry is approximate (training logs a warning). Each takes its input grid
``img_size`` at construction because the DISCO / attention kernels are precomputed for it.

A 1x1 convolution reduces the bands BEFORE the first spherical layer: a DISCO convolution
materialises (B, C_in, K, H, W), 28.5 GB for 99 bands at 2000 x 4000 (DESIGN.md section 4).
DISCO downsampling needs the longitude count divisible by the output's, so a grid that does
not divide is resampled (ResampleS2) to the next one that does and back at the end.

torch-harmonics is imported here only; ``registry`` imports this module lazily.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch_harmonics as th
from torch import nn

from .unet import norm2d

KERNEL = (3, 3)
"""DISCO kernel shape (radial x azimuthal basis functions)."""

Shape = Tuple[int, int]


def grid_shapes(img_size: Sequence[int], scale: int, levels: int) -> List[Shape]:
    """Grids of each level: level 0 is the (possibly rounded up) input grid, level i is /scale**i."""
    mult = max(1, scale ** (levels - 1))
    h = -(-int(img_size[0]) // mult) * mult
    w = -(-int(img_size[1]) // mult) * mult
    return [(h // scale**i, w // scale**i) for i in range(levels)]


def heads_for(dim: int, head_width: int = 32) -> int:
    """About one head per ``head_width`` channels, and a divisor of ``dim``."""
    heads = max(1, dim // head_width)
    while dim % heads:
        heads -= 1
    return heads


class _Resample(nn.Module):
    """Periodic spherical resampling between two grids; identity when they are equal."""

    def __init__(self, src: Shape, dst: Shape) -> None:
        super().__init__()
        self.op: nn.Module = nn.Identity() if tuple(src) == tuple(dst) else th.ResampleS2(*src, *dst)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _disco(cin: int, cout: int, src: Shape, dst: Shape) -> nn.Module:
    return th.DiscreteContinuousConvS2(cin, cout, in_shape=src, out_shape=dst, kernel_shape=KERNEL, bias=False)


class DiscoBlock(nn.Module):
    """DISCO convolution (src grid -> dst grid) + ChannelNorm + GELU."""

    def __init__(self, cin: int, cout: int, src: Shape, dst: Shape) -> None:
        super().__init__()
        self.conv = _disco(cin, cout, src, dst)
        self.norm = norm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x)))


class SphericalUNet(nn.Module):
    """U-Net of DISCO convolutions (down) and transposed DISCO convolutions (up).

    Args:
        in_channels: encoded input channels (reduced by a 1x1 convolution first).
        num_classes: output classes.
        scale, layers, width: downsampling factor, stages, first-stage width (doubling per stage).
        img_size: the input grid (H, W) the model will always be given.
    """

    def __init__(self, in_channels: int, num_classes: int = 2, scale: int = 2, layers: int = 4, width: int = 32,
                 img_size: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        self.img_size = (int(img_size[0]), int(img_size[1]))
        shapes = grid_shapes(self.img_size, scale, layers)
        widths = [width * 2**i for i in range(layers)]
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, widths[0], 1), norm2d(widths[0]), nn.GELU())
        self.to_grid = _Resample(self.img_size, shapes[0])
        self.from_grid = _Resample(shapes[0], self.img_size)
        self.encoders = nn.ModuleList(
            [DiscoBlock(widths[0], widths[0], shapes[0], shapes[0])]
            + [DiscoBlock(widths[i - 1], widths[i], shapes[i - 1], shapes[i]) for i in range(1, layers)]
        )
        self.ups = nn.ModuleList([
            th.DiscreteContinuousConvTransposeS2(widths[i], widths[i - 1], in_shape=shapes[i], out_shape=shapes[i - 1],
                                                 kernel_shape=KERNEL, bias=False)
            for i in range(layers - 1, 0, -1)
        ])
        self.fuse = nn.ModuleList([
            nn.Sequential(nn.Conv2d(2 * widths[i - 1], widths[i - 1], 1), norm2d(widths[i - 1]), nn.GELU())
            for i in range(layers - 1, 0, -1)
        ])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_grid(self.reduce(x))
        skips: List[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.ups, self.fuse):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return self.from_grid(self.head(x))


class AttentionBlock(nn.Module):
    """Neighbourhood attention on the sphere + a 1x1 MLP, both residual (pre-norm)."""

    def __init__(self, dim: int, shape: Shape, heads: int) -> None:
        super().__init__()
        self.norm1 = norm2d(dim)
        self.attn = th.NeighborhoodAttentionS2(dim, in_shape=shape, out_shape=shape, num_heads=heads)
        self.norm2 = norm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SphericalSegformer(nn.Module):
    """Segformer-like hierarchy on the sphere: DISCO downsampling + neighbourhood attention.

    Stage i works on the grid /scale**i with ``width / 2**(layers-1-i)`` channels (the last
    stage is the widest, ``width``); every stage's output is brought to the first grid,
    fused by a 1x1 convolution and classified.
    """

    def __init__(self, in_channels: int, num_classes: int = 2, scale: int = 2, layers: int = 4, width: int = 128,
                 img_size: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        self.img_size = (int(img_size[0]), int(img_size[1]))
        shapes = grid_shapes(self.img_size, scale, layers)
        widths = [max(8, width // 2 ** (layers - 1 - i)) for i in range(layers)]
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, widths[0], 1), norm2d(widths[0]), nn.GELU())
        self.to_grid = _Resample(self.img_size, shapes[0])
        self.from_grid = _Resample(shapes[0], self.img_size)
        self.downs = nn.ModuleList(
            [DiscoBlock(widths[0], widths[0], shapes[0], shapes[0])]
            + [DiscoBlock(widths[i - 1], widths[i], shapes[i - 1], shapes[i]) for i in range(1, layers)]
        )
        self.blocks = nn.ModuleList(
            [AttentionBlock(widths[i], shapes[i], heads=heads_for(widths[i])) for i in range(layers)]
        )
        decoder = widths[0]
        self.project = nn.ModuleList([nn.Conv2d(widths[i], decoder, 1) for i in range(layers)])
        self.ups = nn.ModuleList([_Resample(shapes[i], shapes[0]) for i in range(layers)])
        self.fuse = nn.Sequential(nn.Conv2d(layers * decoder, decoder, 1), norm2d(decoder), nn.GELU())
        self.head = nn.Conv2d(decoder, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_grid(self.reduce(x))
        features: List[torch.Tensor] = []
        for down, block, project, up in zip(self.downs, self.blocks, self.project, self.ups):
            x = block(down(x))
            features.append(up(project(x)))
        return self.from_grid(self.head(self.fuse(torch.cat(features, dim=1))))
