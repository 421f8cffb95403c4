"""R2U-Net: U-Net with recurrent residual convolutional units.

Alom, Hasan, Yakopcic, Taha and Asari, "Recurrent Residual Convolutional Neural Network based on
U-Net (R2U-Net) for Medical Image Segmentation", arXiv 1802.06955 (2018). Neither MONAI nor
segmentation-models-pytorch has it, so it is written here from the paper: every U-Net double
convolution becomes a recurrent residual unit, two recurrent convolutions (each applied ``t + 1``
times, feeding its own output back with the input) around a 1x1 projection with a residual sum.
"""

from __future__ import annotations

import torch
from torch import nn


class RecurrentConv(nn.Module):
    """x -> f(x), then f(x + f_prev) for ``t`` more steps, with one shared convolution (eq. 1-2)."""

    def __init__(self, channels: int, t: int):
        super().__init__()
        self.t = t
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.conv(x)
        for _ in range(self.t):
            state = self.conv(x + state)
        return state


class RecurrentResidualUnit(nn.Module):
    """The RRCU: a 1x1 projection, two recurrent convolutions, and the projection added back (eq. 3)."""

    def __init__(self, in_channels: int, out_channels: int, t: int):
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1)
        self.body = nn.Sequential(RecurrentConv(out_channels, t), RecurrentConv(out_channels, t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.body(x)


class R2UNet(nn.Module):
    """Four poolings deep, as in the paper; ``base`` channels at the first stage, doubled per stage."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 16, t: int = 2):
        super().__init__()
        widths = [base * 2**i for i in range(5)]
        inputs = [in_channels, *widths[:-1]]
        self.encoders = nn.ModuleList(RecurrentResidualUnit(i, o, t) for i, o in zip(inputs, widths, strict=True))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, stride=2) for w in reversed(widths[1:]))
        self.decoders = nn.ModuleList(RecurrentResidualUnit(w, w // 2, t) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else self.pool(x))
            skips.append(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        return self.head(x)
