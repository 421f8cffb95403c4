"""Fracture segmentation and image-level classification networks: the multi-model study's U-Net,
Attention U-Net, R2U-Net and transformer, and classifiers, from the field's libraries.

Every network takes a 3-channel X-ray resized to ``image_size`` squared (a multiple of 32, which
the U-Nets' four poolings and the Swin transformer's patch merging need). A segmenter returns one
logit map (B, 1, H, W), a classifier one logit per X-ray (B, 1). The two that start from the
ImageNet MobileNetV2 checkpoint the detector also uses (segmentation-models-pytorch's U-Net
encoder, the MobileNetV2 classifier) load it offline through detection.weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fracture_al.detection.weights import load_into, load_state_dict_file, resolve_checkpoint

Task = Literal["segmentation", "classification"]
IMAGENET_MOBILENET_V2 = "mobilenet_v2-b0353104.pth"


@dataclass(frozen=True)
class MaskModelConfig:
    task: Task
    arch: str
    image_size: int = 384
    base_channels: int = 16  # the first stage's width, for the networks trained from scratch

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, not {self.image_size}")
        expected = architecture(self.arch).task
        if expected != self.task:
            raise ValueError(f"{self.arch} is a {expected} network, not a {self.task} one")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MaskModelConfig:
        return cls(**values)


@dataclass(frozen=True)
class MaskArchitecture:
    task: Task
    build: Callable[[MaskModelConfig], nn.Module]
    description: str
    imagenet: Callable[[nn.Module, Path], None] | None = None  # seeds the network from the ImageNet checkpoint
    lr: float = 1e-3  # AdamW's learning rate that trains it (a ViT from scratch diverges at 1e-3)
    # Whether a CPU runs it faster with channels-last weights (model_files.to_device): the
    # convnets 1.3-1.5x, the transformers not (benchmarks/reported/memory_layout*_cpu.json).
    channels_last: bool = True


class Logits(nn.Module):
    """The first output of a network that returns more (MONAI's ViT returns its hidden states too)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.network(x)
        return output[0] if isinstance(output, tuple) else output


def _imagenet_features(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _unet(config: MaskModelConfig) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, in_channels=3, classes=1)


def _unet_imagenet(model: nn.Module, path: Path) -> None:
    load_into(model.encoder, _imagenet_features(load_state_dict_file(path)), source=path, expected="MobileNetV2")


def _attention_unet(config: MaskModelConfig) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    channels = tuple(config.base_channels * 2**i for i in range(5))
    return AttentionUnet(spatial_dims=2, in_channels=3, out_channels=1, channels=channels, strides=(2, 2, 2, 2))


def _r2_unet(config: MaskModelConfig) -> nn.Module:
    from fracture_al.detection.r2unet import R2UNet

    return R2UNet(in_channels=3, out_channels=1, base=config.base_channels)


def _swin_unetr(config: MaskModelConfig) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=3, out_channels=1, feature_size=24, spatial_dims=2)


def _mobilenet_v2_classifier(config: MaskModelConfig) -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None, num_classes=1)


def _mobilenet_v2_imagenet(model: nn.Module, path: Path) -> None:
    features = {k.removeprefix("features."): v for k, v in _imagenet_features(load_state_dict_file(path)).items()}
    load_into(model.features, features, source=path, expected="MobileNetV2")


def _vit(config: MaskModelConfig) -> nn.Module:
    from monai.networks.nets import ViT

    # A small ViT (ViT-S/16 widths, 6 layers): trained from scratch on a few thousand X-rays at most.
    return Logits(ViT(in_channels=3, img_size=config.image_size, patch_size=16, hidden_size=384, mlp_dim=1536,
                      num_layers=6, num_heads=6, classification=True, num_classes=1, spatial_dims=2,
                      post_activation=None))  # fmt: skip


ARCHITECTURES: dict[str, MaskArchitecture] = {
    "unet": MaskArchitecture(
        "segmentation", _unet, "U-Net (segmentation-models-pytorch) on an ImageNet MobileNetV2 encoder; "
        "Ronneberger et al., MICCAI 2015", _unet_imagenet,
    ),
    "attention_unet": MaskArchitecture(
        "segmentation", _attention_unet, "Attention U-Net (MONAI); Oktay et al., arXiv 1804.03999"
    ),
    "r2_unet": MaskArchitecture(
        "segmentation", _r2_unet, "R2U-Net (detection/r2unet.py); Alom et al., arXiv 1802.06955"
    ),
    "swin_unetr": MaskArchitecture(
        "segmentation", _swin_unetr, "SwinUNETR in 2-D (MONAI): a Swin transformer encoder; Hatamizadeh et al., "
        "arXiv 2201.01266", channels_last=False,
    ),
    "mobilenet_v2": MaskArchitecture(
        "classification", _mobilenet_v2_classifier, "ImageNet MobileNetV2 with a fracture / no fracture head",
        _mobilenet_v2_imagenet,
    ),
    "vit": MaskArchitecture(
        "classification", _vit, "Vision Transformer (MONAI), 16 px patches; Dosovitskiy et al., ICLR 2021", lr=1e-4,
        channels_last=False,
    ),
}


def architecture(name: str) -> MaskArchitecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}") from None


def architectures(task: Task) -> list[str]:
    return [name for name, arch in ARCHITECTURES.items() if arch.task == task]


def build_mask_model(
    config: MaskModelConfig, *, imagenet: bool = False, search_dirs: Iterable[Path] = (), allow_download: bool = False
) -> nn.Module:
    """The network with random weights, or seeded from ImageNet where the architecture can be."""
    arch = architecture(config.arch)
    model = arch.build(config)
    if imagenet and arch.imagenet is not None:
        path = resolve_checkpoint(IMAGENET_MOBILENET_V2, search_dirs=search_dirs, allow_download=allow_download)
        arch.imagenet(model, path)
    return model
