"""Retraining a project's segmentation model from its brush and polygon annotations.

The retrain job exports each annotated X-ray's fracture mask as outlines beside its boxes
(``integrations.label_studio.write_coco_dataset``); this trains the served segmenter further on
them (warm start; the bundled U-Net from ImageNet when none is served yet), scores candidate and
served model on the project's frozen validation X-rays, and publishes the candidate only when
:func:`worker.gate.mask_gate` says it is better, else keeps it under ``models/rejected/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fracture_al.detection.mask_metrics import MaskScores
from fracture_al.detection.mask_models import MaskModelConfig
from fracture_al.detection.mask_training import MaskTrainConfig, evaluate_masks, fit_masks
from fracture_al.detection.model_files import load_model, version_model_config
from fracture_al.detection.provenance import PROVENANCE_FILE, exported_records
from fracture_al.detection.shipped_model import verify_version
from fracture_al.detection.store import SEGMENTATION, ModelStore, ModelVersion, write_json
from fracture_al.detection.training import DataSplit, load_splits
from fracture_al.detection.versioning import data_sources, staged_mask_outcome
from fracture_al.settings import Settings
from fracture_al.worker.gate import GateRule, mask_gate

FIRST_ARCHITECTURE = "unet"  # the study's best segmenter on FracAtlas (benchmarks/reported/segmentation_study_gpu)


def retrain_segmenter(
    settings: Settings,
    store: ModelStore,
    project_id: int,
    masks: Path,
    run_dir: Path,
    device: torch.device,
    rule: GateRule,
) -> dict[str, Any]:
    """Train, gate and publish (or keep) a segmenter on the exported masks in ``masks``."""
    if not (masks / "train.json").is_file():
        return {"status": "skipped", "reason": "no annotated training X-rays with a mask control"}
    splits = load_splits(masks)
    current = store.current(SEGMENTATION) if store.current_name(SEGMENTATION) else None
    model_config = version_model_config(current) if current else MaskModelConfig(SEGMENTATION, FIRST_ARCHITECTURE)
    train_config = MaskTrainConfig(epochs=settings.retrain_epochs, batch_size=settings.retrain_batch_size,
                                   time_budget_minutes=settings.retrain_time_budget_minutes, seed=settings.seed,
                                   select_on=None)  # fmt: skip
    outcome = fit_masks(model_config, train_config, splits["train"], None, run_dir, device=device,
                        weights_dirs=tuple(settings.weights_dirs), resume=True,
                        warm_start=current.weights_path if current else None)  # fmt: skip
    validation = splits.get("val")
    candidate_metrics, candidate = _scores(outcome.model, model_config, validation, train_config, device)
    served = _served_scores(current, validation, train_config, device)
    decision = mask_gate(candidate, served, rule)
    sources = {**data_sources(train=splits["train"], val=validation), "label_studio_project": project_id}
    with staged_mask_outcome(store, outcome, test_split=None, data_sources=sources, device=device,
                             validation_metrics=candidate_metrics) as staged:  # fmt: skip
        write_json(staged / PROVENANCE_FILE, {
            "source": "retrained", "label_studio_project": project_id, "warm_start": current.name if current else None,
            "trained_on": exported_records(splits["train"]),
            "validated_on": exported_records(validation) if validation is not None else [],
            "gate": decision.to_dict(),
        })  # fmt: skip
        if decision.passed:
            version = store.publish(staged)
            return {"status": "published", "model_version": version.name, "gate": decision.to_dict(),
                    "train_images": len(splits["train"].coco.images)}  # fmt: skip
        kept = store.reject(staged, decision.to_dict())
    return {"status": "rejected", "gate": decision.to_dict(), "kept_at": str(kept)}


def _scores(model, config: MaskModelConfig, validation: DataSplit | None, train_config: MaskTrainConfig,
            device: torch.device) -> tuple[dict[str, Any] | None, list[MaskScores]]:  # fmt: skip
    if validation is None:
        return None, []
    intervals, scores = evaluate_masks(model, config, validation, train_config, device)
    return {name: interval["value"] for name, interval in intervals.items()}, scores


def _served_scores(current: ModelVersion | None, validation: DataSplit | None, train_config: MaskTrainConfig,
                   device: torch.device) -> list[MaskScores] | None:  # fmt: skip
    if current is None:
        return None
    verify_version(current)
    model, config = load_model(current.weights_path, device)
    return _scores(model, config, validation, train_config, device)[1]
