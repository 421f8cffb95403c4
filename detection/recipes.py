"""Named training recipes: the settings a detector is trained with, measured lever by lever.

Each recipe overrides :class:`ModelConfig` and :class:`TrainConfig` fields; ``fit_anchors`` asks
for anchors fitted to the training boxes (:mod:`detection.anchors`). The numbers behind every
choice are in ``benchmarks/reported/recipe_ablation*`` (made by ``benchmarks/recipe_ablation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fracture_al.detection.anchors import fit_anchors
from fracture_al.detection.data import CocoFile
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.training import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    fit_anchors: bool = False

    def configs(
        self, train_coco: CocoFile, *, model: ModelConfig | None = None, train: TrainConfig | None = None
    ) -> tuple[ModelConfig, TrainConfig]:
        """The recipe applied on top of ``model``/``train`` (defaults if None), anchors fitted to
        ``train_coco`` when the recipe asks."""
        model_config = replace(model or ModelConfig(class_names=train_coco.class_names), **self.model)
        if self.fit_anchors:
            sizes, ratios = fit_anchors(train_coco.images, model_config.min_size, model_config.max_size)
            model_config = replace(model_config, anchor_sizes=sizes, aspect_ratios=ratios)
        return model_config, replace(train or TrainConfig(), **self.train)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("baseline", "ModelConfig/TrainConfig defaults: 512 px, SGD lr 0.01, batch 4."),
        Recipe(
            "cpu",
            "512 px, fractures at 65% of draws, best validation epoch kept, 12 epochs planned and the schedule "
            "shortened to what fits in 60 minutes (2-core CPU).",
            # 12: what a fast 2-core CPU now runs in 60 minutes (benchmarks/reported/recipe_ablation_cpu60_folded/),
            # where the validation curve was still rising; a slower CPU gets the budget's shorter schedule.
            train={"epochs": 12, "positive_fraction": 0.65, "select_on": "mAP50", "time_budget_minutes": 60},
        ),
        Recipe(
            "gpu",
            "800 px with multi-scale training, fitted anchors, fractures at 65% of draws, weight EMA, "
            "flip TTA, 36 epochs at batch 8, best validation epoch kept.",
            model={
                "min_size": 800,
                "max_size": 1333,
                "train_min_sizes": [640, 704, 768, 832, 896, 960],
                "flip_tta": True,
            },
            train={
                "epochs": 36,
                "batch_size": 8,
                "lr": 0.02,
                "workers": 4,
                "positive_fraction": 0.65,
                "ema_decay": 0.998,
                "select_on": "mAP50",
            },
            fit_anchors=True,
        ),
    )
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def few_label_train_config(
    base: TrainConfig,
    labelled_images: int,
    *,
    lr_factor: float = 0.25,
    iterations: int = 400,
    ema_decay: float | None = 0.99,
    max_epochs: int = 60,
) -> TrainConfig:
    """Fine-tuning a trained detector on a project's few labels.

    A quarter of the from-scratch learning rate keeps what the source model knows; a fixed number
    of iterations rather than of epochs gives 25 labels as many updates as 200 (a few epochs over
    25 X-rays are a handful of steps); a short warm-up and a fast weight average smooth the noise
    of tiny batches. Measured against plain fine-tuning in benchmarks/few_label_finetune.py.
    """
    epochs = min(max_epochs, max(4, -(-iterations * base.batch_size // max(1, labelled_images))))
    return replace(
        base,
        lr=base.lr * lr_factor,
        epochs=epochs,
        warmup_iterations=min(base.warmup_iterations, iterations // 10),
        ema_decay=ema_decay,
        positive_fraction=None,
        select_on=None,
    )


def retrain_train_config(
    base: TrainConfig, labelled_images: int, *, warm_start: bool, few_label_up_to: int, few_label_iterations: int
) -> tuple[str, TrainConfig]:
    """The recipe of a project's retrain and its settings: few-label fine-tuning
    (:func:`few_label_train_config`) while a warm-started model learns from at most
    ``few_label_up_to`` training X-rays, else ``base`` as it is ("plain").

    Under the body-part shift (benchmarks/reported/few_label_cpu/) few-label fine-tuning beat plain
    fine-tuning at 50 and 100 labels and lost at 200; from ImageNet weights there is nothing to
    keep, so a cold start trains plain.
    """
    if warm_start and labelled_images <= few_label_up_to:
        return "few_label", few_label_train_config(base, labelled_images, iterations=few_label_iterations)
    return "plain", base
