"""The fine-tuning recipes a retrain chooses between (detection/recipes.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fracture_al.detection.recipes import few_label_train_config, retrain_train_config
from fracture_al.detection.training import TrainConfig

BASE = TrainConfig(epochs=4, batch_size=4, lr=0.01, warmup_iterations=100, positive_fraction=0.65, select_on="mAP50")


def choose(labelled: int, *, warm_start: bool = True, up_to: int = 100, iterations: int = 400):
    return retrain_train_config(BASE, labelled, warm_start=warm_start, few_label_up_to=up_to,
                                few_label_iterations=iterations)  # fmt: skip


def test_a_warm_start_on_few_labels_fine_tunes_gently_for_a_fixed_number_of_updates() -> None:
    name, config = choose(50)
    assert name == "few_label"
    # 400 updates of 4 X-rays over 50 X-rays: 32 epochs, at a quarter of the rate, averaged.
    assert (config.epochs, config.lr, config.ema_decay, config.warmup_iterations) == (32, 0.0025, 0.99, 40)
    # Nothing to select on and no fracture oversampling of a handful of X-rays.
    assert config.select_on is None and config.positive_fraction is None
    assert (config.batch_size, config.seed) == (BASE.batch_size, BASE.seed)


@pytest.mark.parametrize(
    ("labelled", "warm_start", "up_to"),
    [
        (101, True, 100),  # more labels than the recipe was measured to help with
        (10, False, 100),  # from ImageNet weights there is nothing to keep
        (10, True, 0),  # turned off
    ],
)
def test_otherwise_the_retrain_trains_plain(labelled: int, warm_start: bool, up_to: int) -> None:
    assert choose(labelled, warm_start=warm_start, up_to=up_to) == ("plain", BASE)


def test_the_boundary_belongs_to_the_few_label_recipe() -> None:
    assert choose(100)[0] == "few_label" and choose(101)[0] == "plain"


@given(labelled=st.integers(1, 2000), iterations=st.integers(1, 2000), batch=st.integers(1, 16))
def test_few_label_epochs_give_at_least_the_asked_updates_unless_capped(labelled: int, iterations: int,
                                                                        batch: int) -> None:  # fmt: skip
    base = TrainConfig(batch_size=batch)
    config = few_label_train_config(base, labelled, iterations=iterations, max_epochs=60)
    updates = config.epochs * -(-labelled // batch)
    assert 4 <= config.epochs <= 60
    assert updates >= iterations or config.epochs == 60
    # Never many more than asked: one epoch fewer would fall short (or the 4-epoch floor rules).
    assert config.epochs == 4 or (config.epochs - 1) * labelled < iterations * batch
