"""Short training runs on the bundled FracAtlas X-rays."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from fracture_al.detection import training
from fracture_al.detection.data import collate, eval_transforms
from fracture_al.detection.devices import cpu_has_amx
from fracture_al.detection.engine import LOSS_NAMES, LossLog, compute_losses, train_one_epoch
from fracture_al.detection.model import ModelConfig
from fracture_al.detection.model_files import version_model_config
from fracture_al.detection.store import ModelStore
from fracture_al.detection.training import (
    Initialisation,
    TrainConfig,
    WarmupCosine,
    epochs_within_budget,
    fit,
    initial_model,
    load_splits,
    prepare_for_training,
)

CPU = torch.device("cpu")
SMALL = ModelConfig(min_size=256, max_size=384)
TINY = ModelConfig(min_size=128, max_size=160)  # for what needs iterations, not learning: a few times faster


@pytest.mark.slow
def test_short_training_lowers_the_loss(sample_dir: Path, tmp_path: Path) -> None:
    splits = load_splits(sample_dir)
    # Measured on un-augmented train images, before and after, with the same model code path.
    loader = torch.utils.data.DataLoader(splits["train"].dataset(eval_transforms()), batch_size=4, collate_fn=collate)
    untrained, _ = initial_model(SMALL, Initialisation())
    before = compute_losses(untrained, loader, CPU)

    outcome = fit(
        SMALL,
        TrainConfig(epochs=3, batch_size=4, workers=0),
        splits["train"],
        None,
        tmp_path / "run",
        device=CPU,
        init=Initialisation(),
    )
    after = compute_losses(outcome.model, loader, CPU)

    assert after["loss"] < 0.7 * before["loss"], (before, after)
    # Every iteration logs the five losses people know from torchvision.
    assert set(LOSS_NAMES) <= set(outcome.loss_log.iterations[0])
    assert len(outcome.loss_log.iterations) == 3 * 6


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_amx(), reason="this CPU has no AMX, where bfloat16 training is refused")
def test_cpu_bf16_training_lowers_the_loss_and_keeps_float32_weights(sample_dir: Path, tmp_path: Path) -> None:
    splits = load_splits(sample_dir)
    loader = torch.utils.data.DataLoader(splits["train"].dataset(eval_transforms()), batch_size=4, collate_fn=collate)
    untrained, _ = initial_model(SMALL, Initialisation())
    before = compute_losses(untrained, loader, CPU)

    outcome = fit(SMALL, TrainConfig(epochs=3, batch_size=4, workers=0, cpu_bf16=True), splits["train"], None,
                  tmp_path / "run", device=CPU, init=Initialisation())  # fmt: skip

    assert compute_losses(outcome.model, loader, CPU)["loss"] < 0.7 * before["loss"]
    convolutions = [p for p in outcome.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert {value.dtype for value in outcome.model.state_dict().values() if value.is_floating_point()} == {
        torch.float32
    }


class _DtypeRecorder(torch.nn.Module):
    """A stand-in detector that records the dtype its layer computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        out = self.linear(torch.stack(images))
        self.dtypes.append(out.dtype)
        return {"loss_classifier": out.float().pow(2).mean()}


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_train_one_epoch_computes_in_bfloat16_only_when_asked(bf16: bool, expected: torch.dtype) -> None:
    model = _DtypeRecorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loader = [([torch.rand(4), torch.rand(4)], [{}, {}]) for _ in range(3)]
    iterations = train_one_epoch(model, optimizer, scheduler, loader, CPU, 1, LossLog(), bf16=bf16)
    assert iterations == 3
    assert model.dtypes == [expected] * 3
    assert model.linear.weight.dtype == torch.float32  # autocast casts per operation, never the weights


def test_a_cpu_trains_in_channels_last_and_in_bfloat16_only_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = initial_model(TINY, Initialisation())
    convolutions = [p for p in model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous() for p in convolutions)
    # A test cannot choose its CPU: the hardware query is what is replaced.
    monkeypatch.setattr(training, "cpu_has_amx", lambda: False)
    with pytest.raises(ValueError, match="needs a CPU with AMX"):
        prepare_for_training(model, TINY, TrainConfig(cpu_bf16=True), CPU)
    assert all(p.is_contiguous() for p in model.parameters())  # refused before anything changed

    assert not prepare_for_training(model, TINY, TrainConfig(), CPU)
    convolutions = [p for p in model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)
    assert prepare_for_training(model, TINY, TrainConfig(cpu_bf16=True), CPU)


def test_trained_version_has_metrics_and_the_three_plots(trained_home: Path) -> None:
    version = ModelStore(trained_home / "models").current()
    assert version.name == "v0001"
    metrics = version.metrics
    for split in ("validation", "test"):
        for key in ("mAP", "mAP50", "mAP75", "AR100", "accuracy", "sensitivity", "specificity", "auroc"):
            assert key in metrics[split]
    assert [plot.name for plot in version.plots] == ["losses.png", "test_predictions.png", "validation.png"]
    for plot in version.plots:
        with Image.open(plot) as picture:
            assert picture.width > 300 and picture.height > 200
    config = version.read_json("config.json")
    assert config["model"]["arch"] == "mobilenet_v2_fpn"
    assert config["pretrained_from"].endswith("mobilenet_v2-b0353104.pth")
    assert len(version.read_json("history.json")["epochs"]) == 2


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint(sample_dir: Path, tmp_path: Path) -> None:
    splits = load_splits(sample_dir)
    run_dir = tmp_path / "run"
    first = fit(
        TINY,
        TrainConfig(epochs=1, batch_size=8, workers=0),
        splits["train"],
        None,
        run_dir,
        device=CPU,
        init=Initialisation(),
    )
    resumed = fit(
        TINY,
        TrainConfig(epochs=2, batch_size=8, workers=0),
        splits["train"],
        None,
        run_dir,
        device=CPU,
        init=Initialisation(),
        resume=True,
    )
    assert [row["epoch"] for row in resumed.epochs] == [1, 2]
    assert resumed.loss_log.iterations[:3] == first.loss_log.iterations  # epoch 1 was not re-run
    assert {row["epoch"] for row in resumed.loss_log.iterations} == {1, 2}


def test_warm_start_predicts_what_the_served_version_predicts(trained_home: Path, sample_dir: Path) -> None:
    """Training's warm start (``initial_model``, what retraining uses) and serving (``Predictor``)
    load a version by different paths; before any step they must be the same detector, and not
    the ImageNet-initialised one (which a warm start that lost its weights would fall back to)."""
    from torchvision.transforms.v2 import functional as F

    from fracture_al.detection.images import load_image
    from fracture_al.detection.predictor import Predictor

    version = ModelStore(trained_home / "models").current()
    image = load_image(sorted((sample_dir / "images").glob("*.jpg"))[0])
    tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)

    def boxes_of(model: torch.nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return model.eval()([tensor])[0]["boxes"]

    served = Predictor.from_version(version, CPU).predict([image])[0]
    assert len(served.boxes)  # the fixture keeps every candidate box
    warm, _ = initial_model(version_model_config(version), Initialisation(model_file=version.weights_path))
    assert torch.allclose(boxes_of(warm), torch.as_tensor(served.boxes, dtype=torch.float32), atol=1e-3)
    fresh, _ = initial_model(version_model_config(version), Initialisation())
    fresh_boxes = boxes_of(fresh)
    assert fresh_boxes.shape != boxes_of(warm).shape or not torch.allclose(fresh_boxes, boxes_of(warm), atol=1e-3)


@pytest.mark.slow
def test_same_seed_same_run(sample_dir: Path, tmp_path: Path) -> None:
    splits = load_splits(sample_dir)

    def losses(seed: int, name: str) -> list[float]:
        config = TrainConfig(epochs=1, batch_size=8, workers=0, seed=seed)
        outcome = fit(TINY, config, splits["train"], None, tmp_path / name, device=CPU, init=Initialisation())
        return [row["loss"] for row in outcome.loss_log.iterations]

    first = losses(7, "a")
    assert losses(7, "b") == first  # same order, same augmentations, same numbers
    assert losses(8, "c") != first


def test_the_schedule_warms_up_then_anneals_to_zero_at_its_end() -> None:
    schedule = WarmupCosine(warmup=10, total=110)
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.5)  # half-way through the cosine
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)
    schedule.shorten(60)  # by a time budget: the cosine now ends at 60
    assert schedule(35) == pytest.approx(0.5)
    assert schedule(60) == pytest.approx(0.0, abs=1e-12)
    schedule.shorten(20)  # shorter than the warm-up was: the warm-up keeps to a quarter of it
    assert schedule.warmup == 5
    assert schedule(5) == pytest.approx(1.0)
    assert schedule(20) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("planned", "done", "per_epoch", "left", "expected"),
    [
        (36, 1, 60.0, 35 * 66.0, 36),  # time for every planned epoch, each 10% slower: unchanged
        (36, 1, 60.0, 10 * 66.0 + 59, 11),  # 10 more fit, the 11th would cross the budget if 10% slower
        (36, 1, 60.0, 10 * 60.0 + 59, 10),  # at the measured pace alone, the 10th would
        (36, 3, 60.0, 0.0, 3),  # no time left: stop where it is
        (36, 3, 60.0, -30.0, 3),  # past the budget already: never fewer than done
        (4, 1, 0.0, 100.0, 4),  # an epoch that took no measurable time keeps the plan
    ],
)
def test_the_epochs_a_time_budget_holds(planned: int, done: int, per_epoch: float, left: float, expected: int) -> None:
    assert epochs_within_budget(planned, done, per_epoch, left) == expected


@pytest.mark.slow
@pytest.mark.parametrize("slow_epoch", [None, 4])
def test_a_time_budget_shortens_the_schedule_so_the_learning_rate_still_anneals(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_epoch: int | None
) -> None:
    # The budget is read off a clock that advances only with training: one second per iteration,
    # 8% more in ``slow_epoch`` (the last epoch running slower than those measured, within the 10%
    # slack). Wall-clock time would make the outcome depend on the machine running the test.
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    rates: list[float] = []

    def tick(step: dict) -> None:
        rates.append(step["lr"])
        clock["now"] += 1.08 if step["epoch"] == slow_epoch else 1.0

    splits = load_splits(sample_dir)
    outcome = fit(
        TINY,
        TrainConfig(epochs=50, batch_size=8, workers=0, time_budget_minutes=0.25),
        splits["train"],
        None,
        tmp_path / "run",
        device=CPU,
        init=Initialisation(),
        on_iteration=tick,
    )
    # 24 X-rays at batch 8: 3-second epochs, so 15 seconds hold the first and 12 // (3 * 1.1) more.
    assert len(outcome.epochs) == 4
    assert len(rates) == 12, "an epoch was cut short by the deadline"
    assert rates[-1] < 0.1 * max(rates), rates  # the last iteration ran near the end of the cosine
