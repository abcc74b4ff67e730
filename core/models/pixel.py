"""Small models for tens of positives: a per-pixel network and a small-receptive-field CNN.

With 20 to 300 deposits a network of millions of parameters memorises them; what wins on
such data (MaxEnt, weights of evidence, sparse logistic regression) is a per-pixel model
with strong regularisation and a choice of bands. These two keep that shape:

- ``pixel_sc1_layers<L>_e<w>``: 1x1 convolutions only, i.e. an MLP over each pixel's
  bands (``L`` hidden layers of ``w`` units, dropout). No context: a pixel's output
  depends on its own bands, so prediction needs no overlap and any window size works.
- ``cnn_sc<d>_layers<L>_e<w>``: a 1x1 band reduction to ``w`` channels, then ``L``
  residual 3x3 convolutions with dilation ``d`` (receptive radius ``L * d`` pixels), a
  1x1 head; dropout. It sees a small neighbourhood (a fault a few pixels away, a contact);
  it trains on pixel patches, the square of that radius around each sampled pixel
  (``SmallCNN.centre``, ``training.PixelBatches``).

Both start with a 1x1 convolution over the encoded bands (``band_layer``): the sparsity
penalty of training (group lasso per band, ``losses.band_group_penalty``) acts on its
weights, so the network can switch a noise band off entirely, as L1 regression does.
No normalisation layer needs window statistics, so tiled prediction is seamless.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT = 0.2
"""Dropout after every hidden layer (few positives: the model must not memorise them)."""


class PixelMLP(nn.Module):
    """Per-pixel MLP as 1x1 convolutions: logits (B, num_classes, H, W) for any H, W.

    Args:
        in_channels: encoded input channels.
        num_classes: output classes (2: softmax over background / positive).
        layers: hidden layers (>= 1).
        width: units per hidden layer.
        dropout: dropout probability after each hidden layer.
    """

    multiple = 1
    context = 0

    def __init__(self, in_channels: int, num_classes: int = 2, layers: int = 2, width: int = 32,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        self.band_layer = nn.Conv2d(in_channels, width, 1)
        body: List[nn.Module] = [nn.GELU(), nn.Dropout(dropout)]
        for _ in range(layers - 1):
            body += [nn.Conv2d(width, width, 1), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.band_layer(x)))


class ChannelwiseLayer(nn.Module):
    """Each input channel to its own ``width`` units: (B, C, H, W) -> (B, C * width, H, W), channel-major.

    ``weight`` shows the (width, C, 1, 1) matrix a 1x1 convolution would hold, so the band
    penalty (group lasso per band) and the band ranking read it as they read ``PixelMLP``'s.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.channels, self.width = channels, width
        self.scale = nn.Parameter(torch.randn(channels, width))
        self.bias = nn.Parameter(0.5 * torch.randn(channels, width))

    @property
    def weight(self) -> torch.Tensor:
        return self.scale.t()[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x[:, :, None] * self.scale[None, :, :, None, None] + self.bias[None, :, :, None, None]
        return y.reshape(b, c * self.width, h, w)


class AdditiveNet(nn.Module):
    """A neural additive model: the logit is a sum of one learnt curve per encoded channel.

    Each channel (a numeric band's rank score, a class's one-hot) passes through its own
    small MLP (``layers`` hidden layers of ``width`` units, grouped 1x1 convolutions); a 1x1
    head sums them. No band meets another, as in weights of evidence, MaxEnt with hinge
    features or a GAM: few deposits cannot be spent on interactions, and each band's curve
    can be read off. Per pixel, like ``PixelMLP``.
    """

    multiple = 1
    context = 0

    def __init__(self, in_channels: int, num_classes: int = 2, layers: int = 1, width: int = 8,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        hidden = in_channels * width
        self.band_layer = ChannelwiseLayer(in_channels, width)
        body: List[nn.Module] = [nn.GELU(), nn.Dropout(dropout)]
        for _ in range(layers - 1):
            body += [nn.Conv2d(hidden, hidden, 1, groups=in_channels), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.band_layer(x)))


class ResidualConv(nn.Module):
    """x + conv3x3(GELU(x)), dilated; zero padding keeps the size."""

    def __init__(self, width: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.conv(self.act(x)))

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The same block without padding: (B, w, h, w') -> (B, w, h - 2d, w' - 2d), the pixels whose whole
        neighbourhood is in ``x`` (their values equal ``forward``'s)."""
        d = self.conv.dilation[0]
        y = F.conv2d(self.act(x), self.conv.weight, self.conv.bias, dilation=d)
        return x[:, :, d:-d, d:-d] + self.drop(y)


def pixels_last_1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution, as a matrix product over each pixel's channels.

    Equal to the convolution; on patches stored pixels-last (``EncodedRaster.patches``) the
    product reads each pixel's channels in one run: 110 channels into 16 on a step's
    4608 patches of 5 x 5 took about a third of the convolution's time (fwd + bwd, CPU)."""
    y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return y.permute(0, 3, 1, 2)


class SmallCNN(nn.Module):
    """1x1 band reduction, ``layers`` residual dilated 3x3 convolutions, 1x1 head.

    Args:
        in_channels: encoded input channels.
        num_classes: output classes.
        dilation: dilation of the 3x3 convolutions (the ``sc`` of the name).
        layers: 3x3 convolutions (receptive radius ``layers * dilation``).
        width: channels after the band reduction.
        dropout: dropout probability in every residual branch and before the head.
    """

    multiple = 1

    def __init__(self, in_channels: int, num_classes: int = 2, dilation: int = 1, layers: int = 2, width: int = 16,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        self.context = layers * dilation
        self.band_layer = nn.Conv2d(in_channels, width, 1)
        self.body = nn.Sequential(*[ResidualConv(width, dilation, dropout) for _ in range(layers)])
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.band_layer(x)))

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, 1, 1) at the centre of (B, C, 2r+1, 2r+1) patches (r = ``context``), what
        ``forward`` gives there; unpadded, so each layer computes only what the centre needs
        (training on pixel patches; at radius 2 with 110 channels a step took 0.14 s against 0.22 s padded)."""
        side = 2 * self.context + 1
        if x.shape[-2:] != (side, side):
            raise ValueError(f"centre() takes {side} x {side} patches, got {tuple(x.shape[-2:])}")
        h = pixels_last_1x1(self.band_layer, x)
        for block in self.body:
            h = block.unpadded(h)
        return self.head(h)


class PatchCentre(nn.Module):
    """A context model in training on pixel patches: its ``centre`` output as the forward pass.

    Wrapped only for the training steps (``training.member_step``); the model itself, its
    weights and the checkpoint are unchanged, and validation and prediction run it on windows.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.centre(x)
