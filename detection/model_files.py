"""Saved networks: a model file holds a network's weights and the config that rebuilds it, for
every task (detection, segmentation, classification), and where a network sits on a device. Kept
apart from the model store, which only moves files and pointers, so that reading
the store needs no torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fracture_al.detection.mask_models import MaskModelConfig, architecture, build_mask_model
from fracture_al.detection.model import ModelConfig, build_model
from fracture_al.detection.store import DETECTION, ModelVersion, task_of


def model_config_from_dict(config: dict[str, Any]) -> ModelConfig | MaskModelConfig:
    return ModelConfig.from_dict(config) if task_of(config) == DETECTION else MaskModelConfig.from_dict(config)


def version_model_config(version: ModelVersion) -> ModelConfig | MaskModelConfig:
    """The config that rebuilds ``version``'s network (its ``config.json``)."""
    return model_config_from_dict(version.read_json("config.json")["model"])


def saved_model_config(path: Path) -> ModelConfig | MaskModelConfig:
    """The config saved in the model file at ``path``, without building its network."""
    return model_config_from_dict(torch.load(path, map_location="cpu", weights_only=True)["model_config"])


def to_device(model: torch.nn.Module, config: ModelConfig | MaskModelConfig,
              device: torch.device) -> torch.nn.Module:  # fmt: skip
    """``model`` on ``device``, in the memory layout its network runs fastest in there: on a CPU a
    convolutional network's weights go to channels-last memory, the layout oneDNN's convolutions
    compute in, so they are not reordered on every call. On a 2-core Intel Xeon
    (``benchmarks/reported/memory_layout_cpu.json``): training the detector 1.22x, predicting 1.2x
    on one X-ray and 1.4x on a scoring pass; the segmentation and classification convnets 1.4-1.5x
    predicting and 1.3-1.5x training (``memory_layout_mask_training_cpu.json``); the same
    computation up to float rounding. The transformers gain little or nothing (SwinUNETR 0.95x
    predicting, 1.08x training; ViT 1.00x both), so theirs stay as they are
    (``MaskArchitecture.channels_last``).
    GPUs keep PyTorch's default layout (not measured there)."""
    model.to(device)
    convnet = isinstance(config, ModelConfig) or architecture(config.arch).channels_last
    if convnet and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def save_model(model: torch.nn.Module, config: ModelConfig | MaskModelConfig, path: Path) -> None:
    torch.save({"model": model.state_dict(), "model_config": config.to_dict()}, path)


def load_model(
    path: Path, device: torch.device | str = "cpu", *, overrides: Mapping[str, Any] | None = None
) -> tuple[torch.nn.Module, ModelConfig | MaskModelConfig]:
    """Rebuild a saved network of any task (no pretrained checkpoint needed: the file has every weight),
    in eval mode on ``device``, in the layout it runs fastest in there (:func:`to_device`).
    ``overrides`` replaces config fields that leave the weights' shapes alone (e.g. ``flip_tta``,
    ``min_size``), to predict with the same weights under other settings."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = model_config_from_dict(saved["model_config"])
    if overrides:
        config = replace(config, **overrides)
    model = build_model(config) if isinstance(config, ModelConfig) else build_mask_model(config)
    model.load_state_dict(saved["model"])
    return to_device(model, config, torch.device(device)).eval(), config
