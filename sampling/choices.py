"""The names of the sampler's choices, light enough for the settings object to import."""

from typing import Literal

Uncertainty = Literal[
    "least_confidence", "entropy", "margin", "image_entropy", "image_entropy_tta", "tta", "cald", "hard_negative",
    "mask",
]
Aggregation = Literal["max", "mean", "sum"]
Strategy = Literal["uncertainty", "k_center", "kmeans_pp"]
