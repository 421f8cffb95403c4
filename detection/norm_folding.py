"""Frozen batch norms folded into the convolutions before them: same function, fewer passes.

A detector's pretrained backbone keeps its batch-norm statistics and affine weights frozen
(torchvision's ``FrozenBatchNorm2d``), which applies ``x * scale + shift`` as two passes over every
activation map, and two more in the backward pass: about a quarter of a CPU training step of the
MobileNetV2 detector. A fixed affine map after a bias-free convolution folds into it exactly,
``conv(x, W) * scale + shift = conv(x, W * scale) + shift`` ("batch normalization folding", Jacob et
al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, section 3.2), so the multiply lands on the small weight tensor and the
shift becomes the convolution's bias, added inside the convolution kernel.

The folded weight is recomputed from the convolution's own weight at every call: a trainable
convolution keeps training its own weight with the gradients it had unfolded, and a saved model's
weights keep their names and values, so models saved before and after folding load into either.
"""

from __future__ import annotations

import itertools

import torch
from torchvision.ops import FrozenBatchNorm2d


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm that the convolution before it applies: it keeps its buffers (a saved
    model's weights) and passes activations on unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NormFoldedConv2d(torch.nn.Conv2d):
    """A bias-free convolution that applies the frozen batch norm after it (``folded_norm``)."""

    folded_norm: FoldedFrozenBatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.folded_norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), shift)


def fold_frozen_norms(model: torch.nn.Module) -> int:
    """Fold every frozen batch norm that directly follows a bias-free ``Conv2d`` in a
    ``Sequential`` (where order is execution order) into that convolution; returns how many.

    Modules change class in place, as ``torch.nn.utils.parametrize`` does: parameters stay the
    same objects (their ``requires_grad``, an optimizer holding them) and the state dict keeps its
    keys."""
    folded = 0
    for parent in list(model.modules()):
        if not isinstance(parent, torch.nn.Sequential):
            continue
        for conv, norm in itertools.pairwise(parent):
            if type(conv) is torch.nn.Conv2d and conv.bias is None and type(norm) is FrozenBatchNorm2d:
                norm.__class__ = FoldedFrozenBatchNorm2d
                conv.__class__ = NormFoldedConv2d
                # A plain attribute, not a submodule: the norm's buffers stay where the state dict
                # has always had them.
                object.__setattr__(conv, "folded_norm", norm)
                folded += 1
    return folded
