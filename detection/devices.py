"""Which torch device to run on, and how a network for inference sits on it. Its own module so
that what only predicts (the backend's gunicorn workers) does not import the training stack
(pycocotools, scikit-learn) to learn it."""

from __future__ import annotations

import torch


def choose_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no GPU; use --device cpu")
    return torch.device(name)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, the only bfloat16 hardware under which bfloat16 autocast
    trained the detector faster than float32: 1.36x on an Intel Xeon with AMX, 0.86x on one with
    AVX512-BF16 but no AMX (benchmarks/reported/recipe_ablation_cpu60_cpu_bf16/,
    recipe_ablation_cpu_cost_bf16_no_amx/); without either oneDNN emulates bfloat16. (torch.cpu
    exposes the check under a private name only.)"""
    return torch.cpu._is_amx_tile_supported()


def for_inference(model: torch.nn.Module, device: torch.device, *, channels_last: bool = True) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode. On a CPU a convolutional network's weights go to
    channels-last memory, the layout oneDNN's convolutions compute in, so they are not reordered
    on every call: 1.3x for the detector on one X-ray, 1.4x for a scoring pass, 1.3-1.5x for the
    segmentation and classification convnets, with the same outputs to float rounding
    (``benchmarks/reported/inference_layout_cpu.json``). The transformers gain nothing (SwinUNETR
    0.91x, ViT 1.05x), so theirs stay as they are (``channels_last=False``)."""
    model = model.to(device).eval()
    if channels_last and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model
