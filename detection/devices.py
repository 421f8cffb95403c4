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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16). Elsewhere oneDNN
    emulates bfloat16 and autocast to it trains slower than float32. (torch.cpu only exposes these
    checks under private names.)"""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
