"""Faster R-CNN architectures for fracture detection, and loading their pretrained weights.

The offline default, ``mobilenet_v2_fpn``, differs from torchvision's MobileNet recipe on purpose:
torchvision's ``mobilenet_backbone(fpn=True)`` feeds the FPN two maps that are both at 1/32 of
the input with anchors from 32 px, while the median FracAtlas fracture box is about 30 px. Here
the FPN takes the end of the 1/8, 1/16 and 1/32 stages and the smallest anchors are 16 px.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    mobilenet_backbone,
    resnet_fpn_backbone,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fracture_al.detection.norm_folding import fold_frozen_norms
from fracture_al.detection.store import DEFAULT_CLASS_NAMES
from fracture_al.detection.weights import WeightsError, load_into, load_state_dict_file, resolve_checkpoint

DEFAULT_ARCH = "mobilenet_v2_fpn"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a detector; saved beside every model version."""

    arch: str = DEFAULT_ARCH
    class_names: list[str] = field(default_factory=lambda: list(DEFAULT_CLASS_NAMES))
    min_size: int = 512
    max_size: int = 800
    trainable_backbone_layers: int = 4
    # Low on purpose: mAP and the uncertainty sampler need the low-score boxes too; the backend
    # and the CLI apply their own display threshold.
    box_score_thresh: float = 0.01
    detections_per_image: int = 100
    # Anchor sizes (pixels at the resized scale) per FPN level, finest first, and their ratios.
    anchor_sizes: list[list[int]] = field(default_factory=lambda: [[16, 24], [32, 48], [64, 96], [128, 256]])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # Width of the box head's two fully connected layers (torchvision's TwoMLPHead uses 1024).
    box_head_size: int = 1024
    # Shorter sides drawn at random per training image (multi-scale training); empty = min_size only.
    train_min_sizes: list[int] = field(default_factory=list)
    # Predict on the image and its mirror and fuse the two (see detection/tta.py).
    flip_tta: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1  # + background

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)


@dataclass(frozen=True)
class Architecture:
    build: Callable[[ModelConfig], FasterRCNN]
    pretrained_file: str
    # "detector": a COCO Faster R-CNN checkpoint; "backbone": an ImageNet classifier checkpoint.
    pretrained_part: Literal["detector", "backbone"]


def _common_kwargs(config: ModelConfig) -> dict[str, Any]:
    # torchvision draws a training size from ``min_size`` and evaluates at its last entry.
    return {
        "min_size": (*config.train_min_sizes, config.min_size),
        "max_size": config.max_size,
        "box_score_thresh": config.box_score_thresh,
        "box_detections_per_img": config.detections_per_image,
    }


def _mobilenet_v2_fpn(config: ModelConfig) -> FasterRCNN:
    features = torchvision.models.mobilenet_v2(norm_layer=FrozenBatchNorm2d).features
    # Last block of the 1/8, 1/16 and 1/32 stages (32, 96 and 1280 channels).
    return_layers = {"6": "0", "13": "1", "18": "2"}
    _freeze_leading_stages(features, config.trainable_backbone_layers)
    backbone = BackboneWithFPN(
        features,
        return_layers=return_layers,
        in_channels_list=[32, 96, 1280],
        out_channels=128,
        extra_blocks=LastLevelMaxPool(),
    )
    if len(config.anchor_sizes) != 4:
        raise ValueError("mobilenet_v2_fpn needs anchor sizes for 4 levels (1/8, 1/16, 1/32, 1/64)")
    anchors = AnchorGenerator(
        sizes=tuple(tuple(sizes) for sizes in config.anchor_sizes),
        aspect_ratios=(tuple(config.aspect_ratios),) * 4,
    )
    roi_size = 7
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=roi_size, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * roi_size**2, config.box_head_size),
        box_predictor=FastRCNNPredictor(config.box_head_size, config.num_classes),
        # Lean proposal and RoI budgets: a CPU trains about three times faster with them, and an
        # X-ray holds a handful of fractures, not COCO's crowds.
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=300,
        box_batch_size_per_image=128,
        **_common_kwargs(config),
    )


def _freeze_leading_stages(features: torch.nn.Sequential, trainable_stages: int) -> None:
    """Freeze all but the last ``trainable_stages`` stride stages (torchvision's convention)."""
    stage_starts = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    stage_starts.append(len(features) - 1)
    if not 0 <= trainable_stages <= len(stage_starts):
        raise ValueError(f"trainable_backbone_layers must be in 0..{len(stage_starts)}")
    freeze_before = len(features) if trainable_stages == 0 else stage_starts[len(stage_starts) - trainable_stages]
    for block in features[:freeze_before]:
        block.requires_grad_(False)


def _resnet50_fpn(config: ModelConfig) -> FasterRCNN:
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,
        norm_layer=FrozenBatchNorm2d,
        trainable_layers=min(config.trainable_backbone_layers, 5),
    )
    return FasterRCNN(backbone, num_classes=config.num_classes, **_common_kwargs(config))


def _resnet50_fpn_v2(config: ModelConfig) -> FasterRCNN:
    # v2 keeps trainable BatchNorm everywhere, as torchvision trained it.
    return torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(
        weights=None,
        weights_backbone=None,
        num_classes=config.num_classes,
        **_common_kwargs(config),
    )


def _mobilenet_v3_fpn(low_resolution: bool) -> Callable[[ModelConfig], FasterRCNN]:
    def build(config: ModelConfig) -> FasterRCNN:
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=FrozenBatchNorm2d,
            trainable_layers=min(config.trainable_backbone_layers, 6),
        )
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        extra = (
            {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05}
            if low_resolution
            else {}
        )
        return FasterRCNN(
            backbone,
            num_classes=config.num_classes,
            rpn_anchor_generator=anchors,
            **extra,
            **_common_kwargs(config),
        )

    return build


ARCHITECTURES: dict[str, Architecture] = {
    "mobilenet_v2_fpn": Architecture(_mobilenet_v2_fpn, "mobilenet_v2-b0353104.pth", "backbone"),
    "fasterrcnn_resnet50_fpn": Architecture(_resnet50_fpn, "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "detector"),
    "fasterrcnn_resnet50_fpn_v2": Architecture(
        _resnet50_fpn_v2, "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "detector"
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": Architecture(
        _mobilenet_v3_fpn(low_resolution=False),
        "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
        "detector",
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Architecture(
        _mobilenet_v3_fpn(low_resolution=True),
        "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
        "detector",
    ),
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}") from None


def build_model(config: ModelConfig) -> FasterRCNN:
    """The detector's structure with random weights (pretrained ones come from load_pretrained),
    its frozen batch norms folded into their convolutions (:mod:`~fracture_al.detection.norm_folding`)."""
    model = architecture(config.arch).build(config)
    fold_frozen_norms(model)
    return model


def load_pretrained(
    model: FasterRCNN,
    config: ModelConfig,
    *,
    weights_file: Path | None = None,
    search_dirs: Iterable[Path] = (),
    allow_download: bool = False,
) -> Path:
    """Seed ``model`` from its architecture's pretrained checkpoint; returns the file used."""
    arch = architecture(config.arch)
    path = resolve_checkpoint(
        arch.pretrained_file,
        explicit=weights_file,
        search_dirs=search_dirs,
        allow_download=allow_download,
    )
    state = load_state_dict_file(path)
    if arch.pretrained_part == "backbone":
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        load_into(model.backbone.body, features, source=path, expected=f"{config.arch} backbone")
    else:
        _load_detector_except_classes(model, state, source=path, expected=config.arch)
    return path


def _load_detector_except_classes(
    model: FasterRCNN, state: dict[str, torch.Tensor], *, source: Path, expected: str
) -> None:
    """Load a COCO detector checkpoint, keeping our own freshly initialised class predictor."""
    predictor_keys = {f"roi_heads.box_predictor.{key}" for key in model.roi_heads.box_predictor.state_dict()}
    transferable = {key: value for key, value in state.items() if key not in predictor_keys}
    if len(transferable) == len(state):
        raise WeightsError(f"{source} has no Faster R-CNN box predictor: it is not a {expected} checkpoint")
    predictor = model.roi_heads.box_predictor
    model.roi_heads.box_predictor = torch.nn.Identity()
    try:
        load_into(model, transferable, source=source, expected=expected)
    finally:
        model.roi_heads.box_predictor = predictor
