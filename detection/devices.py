"""Which torch device to run on. Its own module so that what only predicts (the backend's gunicorn
workers) does not import the training stack (pycocotools, scikit-learn) to learn it."""

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

