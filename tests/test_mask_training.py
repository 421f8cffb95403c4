"""The segmentation and classification networks learn on the bundled sample, and their training
engine evaluates, keeps the best epoch and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fracture_al.detection.data import CocoFile
from fracture_al.detection.mask_data import MaskDataset
from fracture_al.detection.mask_models import ARCHITECTURES, MaskModelConfig, architectures, build_mask_model
from fracture_al.detection.mask_training import MaskTrainConfig, evaluate_masks, fit_masks, loss_function
from fracture_al.detection.training import load_splits

SIZE = 128


@pytest.fixture(scope="module")
def batch(sample_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four fractured and four healthy sample X-rays, as the networks take them."""
    coco = CocoFile(sample_dir / "train.json")
    dataset = MaskDataset(coco, sample_dir / "images", SIZE, train=False)
    fractured = [i for i, record in enumerate(coco.images) if record.polygons]
    healthy = [i for i, record in enumerate(coco.images) if not record.boxes]
    assert len(fractured) >= 4 and len(healthy) >= 4
    items = [dataset[i] for i in fractured[:4] + healthy[:4]]
    return tuple(torch.stack([item[part] for item in items]) for part in range(3))  # type: ignore[return-value]


def test_masks_follow_the_outlines_through_the_transforms(batch) -> None:
    images, masks, labels = batch
    assert images.shape == (8, 3, SIZE, SIZE) and masks.shape == (8, 1, SIZE, SIZE)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert all(masks[i].sum() > 0 for i in range(4)) and all(masks[i].sum() == 0 for i in range(4, 8))
    assert labels.tolist() == [1.0] * 4 + [0.0] * 4


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_lowers_its_loss_in_a_few_steps(name: str, batch) -> None:
    torch.manual_seed(0)
    images, masks, labels = batch
    config = MaskModelConfig(ARCHITECTURES[name].task, name, image_size=SIZE)
    model = build_mask_model(config, imagenet=ARCHITECTURES[name].imagenet is not None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ARCHITECTURES[name].lr)
    loss_of = loss_function(config)
    losses = []
    for _ in range(8):
        loss = loss_of(model(images), masks, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) / 2 < losses[0], losses


def test_a_wrong_task_or_size_is_refused() -> None:
    with pytest.raises(ValueError, match="segmentation network"):
        MaskModelConfig("classification", "unet")
    with pytest.raises(ValueError, match="multiple of 32"):
        MaskModelConfig("segmentation", "unet", image_size=100)
    assert set(architectures("segmentation")) == {"unet", "attention_unet", "r2_unet", "swin_unetr"}


@pytest.mark.slow
def test_fit_masks_validates_keeps_the_best_epoch_and_resumes(sample_dir: Path, tmp_path: Path) -> None:
    splits = load_splits(sample_dir)
    train, val = splits["train"], splits["val"]
    config = MaskModelConfig("segmentation", "unet", image_size=SIZE)
    first = fit_masks(config, MaskTrainConfig(epochs=1, batch_size=8), train, val, tmp_path / "run",
                      device=torch.device("cpu"))  # fmt: skip
    assert [e["epoch"] for e in first.epochs] == [1] and first.selected_epoch == 1
    assert {"dice_fractured", "dice_all", "jaccard_fractured", "auroc"} <= set(first.epochs[0])
    resumed = fit_masks(config, MaskTrainConfig(epochs=2, batch_size=8), train, val, tmp_path / "run",
                        device=torch.device("cpu"), resume=True)  # fmt: skip
    assert [e["epoch"] for e in resumed.epochs] == [1, 2]  # epoch 1 read back, only epoch 2 trained
    assert resumed.images_seen == len(train.coco.images)
    convolutions = [p for p in resumed.model.parameters() if p.dim() == 4]  # a CPU trains a convnet in channels-last
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    metrics, scores = evaluate_masks(resumed.model, config, val, MaskTrainConfig(), torch.device("cpu"))
    assert len(scores) == len(val.coco.images) and all(0.0 <= s.dice <= 1.0 for s in scores)
    fractured = [s for s in scores if s.fractured]
    assert fractured and metrics["dice_fractured"]["value"] == pytest.approx(
        sum(s.dice for s in fractured) / len(fractured))


def test_a_warm_start_continues_from_the_saved_segmenter(sample_dir: Path, tmp_path: Path) -> None:
    """A retrain starts from the served model's weights: with a learning rate too small to move
    them, the retrained network's weights are the saved ones (BatchNorm's running statistics, which
    no learning rate holds, aside), not a fresh initialisation."""
    from fracture_al.detection.model_files import save_model

    splits = load_splits(sample_dir)
    config = MaskModelConfig("segmentation", "unet", image_size=64)
    saved = build_mask_model(config)
    with torch.no_grad():
        saved.segmentation_head[0].bias.fill_(3.0)  # a mark no random initialisation has
    save_model(saved, config, tmp_path / "served.pt")

    still = MaskTrainConfig(epochs=1, batch_size=8, lr=1e-12, select_on=None)
    outcome = fit_masks(config, still, splits["train"], None, tmp_path / "run", device=torch.device("cpu"),
                        warm_start=tmp_path / "served.pt")  # fmt: skip

    trained = dict(outcome.model.named_parameters())
    assert trained and all(torch.allclose(trained[name], value, atol=1e-6) for name, value in saved.named_parameters())
    assert outcome.model.segmentation_head[0].bias.item() == pytest.approx(3.0)
