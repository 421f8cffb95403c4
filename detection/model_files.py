"""Saved networks: a model file holds a network's weights and the config that rebuilds it, for
every task (detection, segmentation, classification). Kept apart from the model store, which only
moves files and pointers, so that reading the store needs no torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fracture_al.detection.mask_models import MaskModelConfig, build_mask_model
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


def save_model(model: torch.nn.Module, config: ModelConfig | MaskModelConfig, path: Path) -> None:
    torch.save({"model": model.state_dict(), "model_config": config.to_dict()}, path)


def load_model(
    path: Path, device: torch.device | str = "cpu", *, overrides: Mapping[str, Any] | None = None
) -> tuple[torch.nn.Module, ModelConfig | MaskModelConfig]:
    """Rebuild a saved network of any task (no pretrained checkpoint needed: the file has every weight).
    ``overrides`` replaces config fields that leave the weights' shapes alone (e.g. ``flip_tta``,
    ``min_size``), to predict with the same weights under other settings."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = model_config_from_dict(saved["model_config"])
    if overrides:
        config = replace(config, **overrides)
    model = build_model(config) if isinstance(config, ModelConfig) else build_mask_model(config)
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), config
