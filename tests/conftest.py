from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fracture_al.settings import SAMPLE_DIR

SHARED_FRACATLAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fracatlas"

# Test runs must not write into the user's ~/.fracture-al or reach for the network.
os.environ.setdefault("FRACTURE_AL_ALLOW_WEIGHT_DOWNLOAD", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def shared_fracatlas() -> Path:
    if not SHARED_FRACATLAS.is_dir():
        pytest.skip(f"{SHARED_FRACATLAS} is not present")
    return SHARED_FRACATLAS


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A fracture-al home holding one small model trained on the bundled sample (v0001)."""
    from detection.model import ModelConfig
    from detection.store import ModelStore
    from detection.training import Initialisation, TrainConfig, fit, load_splits
    from detection.versioning import data_sources, publish_outcome

    home = tmp_path_factory.mktemp("home")
    splits = load_splits(sample_dir)
    outcome = fit(
        ModelConfig(min_size=256, max_size=384),
        TrainConfig(epochs=2, batch_size=4, workers=0),
        splits["train"],
        splits["val"],
        home / "runs" / "fixture",
        device=torch.device("cpu"),
        init=Initialisation(),
    )
    publish_outcome(
        ModelStore(home / "models"), outcome, test_split=splits["test"], data_sources=data_sources(**splits)
    )
    return home
