"""Saved networks: a model file holds a network's weights and the config that rebuilds it, for
every task (detection, segmentation, classification), and a network is rebuilt ready for
inference. Kept apart from the model store, which only moves files and pointers, so that reading
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


def for_inference(model: torch.nn.Module, config: ModelConfig | MaskModelConfig,
                  device: torch.device) -> torch.nn.Module:  # fmt: skip
    """``model`` on ``device`` in eval mode. On a CPU a convolutional network's weights go to
    channels-last memory, the layout oneDNN's convolutions compute in, so they are not reordered
    on every call: 1.2x for the detector on one X-ray, 1.4x for a scoring pass, 1.4-1.5x for the
    segmentation and classification convnets, with the same outputs to float rounding
    (``benchmarks/reported/memory_layout_cpu.json``). The transformers gain nothing (SwinUNETR
    0.95x, ViT 1.00x), so theirs stay as they are (``MaskArchitecture.channels_last``)."""
    model = model.to(device).eval()
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
    ready for inference on ``device`` (:func:`for_inference`).
    ``overrides`` replaces config fields that leave the weights' shapes alone (e.g. ``flip_tta``,
    ``min_size``), to predict with the same weights under other settings."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = model_config_from_dict(saved["model_config"])
    if overrides:
        config = replace(config, **overrides)
    model = build_model(config) if isinstance(config, ModelConfig) else build_mask_model(config)
    model.load_state_dict(saved["model"])
    return for_inference(model, config, torch.device(device)), config
