from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch

from fracture_al.detection.model import ModelConfig, build_model
from fracture_al.detection.model_files import load_model, save_model
from fracture_al.detection.store import MODEL_FILE, ModelStore, ModelStoreError, write_json


def stage_fake_version(store: ModelStore, marker: str) -> Path:
    with store.stage() as staged:
        (staged / MODEL_FILE).write_text(marker)
        write_json(staged / "metrics.json", {"marker": marker})
        return staged


def test_publish_numbers_versions_and_moves_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.publish(stage_fake_version(store, "a"))
    second = store.publish(stage_fake_version(store, "b"))
    assert [v.name for v in store.list()] == ["v0001", "v0002"]
    assert (first.name, second.name) == ("v0001", "v0002")
    assert store.current().name == "v0002"
    assert store.current().metrics == {"marker": "b"}
    assert not list(store.staging_dir.iterdir())


def test_promote_rolls_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish(stage_fake_version(store, "a"))
    store.publish(stage_fake_version(store, "b"))
    store.promote("v0001")
    assert store.current().metrics == {"marker": "a"}
    assert ModelStore(tmp_path).current_name() == "v0001"  # the pointer is on disk, not in memory


def test_publish_without_promoting_keeps_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish(stage_fake_version(store, "a"))
    store.publish(stage_fake_version(store, "b"), make_current=False)
    assert store.current().name == "v0001"


def test_detector_class_names_follow_the_current_detector(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.detector_class_names() == ModelConfig().class_names == ["fracture"]  # none published yet
    for names in (["fracture", "implant"], ["cast"]):
        staged = stage_fake_version(store, "x")
        write_json(staged / "config.json", {"model": ModelConfig(class_names=names).to_dict()})
        store.publish(staged)
    assert store.detector_class_names() == ["cast"]
    store.promote("v0001")
    assert store.detector_class_names() == ["fracture", "implant"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError), store.stage() as staged:
        (staged / MODEL_FILE).write_text("half")
        raise RuntimeError("killed while writing plots")
    assert store.list() == []
    assert not list(store.staging_dir.iterdir())
    with pytest.raises(ModelStoreError, match="no model has been published"):
        store.current()


def test_incomplete_version_is_never_published(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.stage() as staged:
        (staged / "metrics.json").write_text("{}")
        with pytest.raises(ModelStoreError, match=r"no model\.pt"):
            store.publish(staged)
    assert store.list() == []


def test_unknown_version_names_the_known_ones(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish(stage_fake_version(store, "a"))
    with pytest.raises(ModelStoreError, match=r"'v0009' not found .*known: v0001"):
        store.promote("v0009")
    with pytest.raises(ModelStoreError):
        store.get("../../etc")


def _publish_one(root: str, marker: str) -> str:
    store = ModelStore(root)
    return store.publish(stage_fake_version(store, marker)).name


def test_concurrent_publishers_never_share_a_number(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        names = pool.starmap(_publish_one, [(str(tmp_path), f"m{i}") for i in range(12)])
    assert len(set(names)) == 12
    store = ModelStore(tmp_path)
    markers = sorted(v.metrics["marker"] for v in store.list())
    assert markers == sorted(f"m{i}" for i in range(12))


def test_debris_of_a_killed_writer_is_cleared_but_live_writers_are_left_alone(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    finished = multiprocessing.get_context("spawn").Process(target=int)
    finished.start()
    finished.join()  # a pid that no longer runs, as after a SIGKILL
    host = socket.gethostname()
    dead = store.staging_dir / f"{host}-{finished.pid}-abc123"
    alive = store.staging_dir / f"{host}-{os.getpid()}-def456"
    elsewhere = store.staging_dir / f"another-host-{finished.pid}-ghi789"
    for folder in (dead, alive, elsewhere):
        folder.mkdir(parents=True)
        (folder / MODEL_FILE).write_text("half")
    with store.stage():
        pass
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists()
    assert store.list() == []


def test_a_saved_detector_loads_with_other_inference_settings_and_the_same_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_model(build_model(ModelConfig()), ModelConfig(), path)

    plain, plain_config = load_model(path)
    changed, changed_config = load_model(path, overrides={"min_size": 640, "flip_tta": True})

    assert (plain_config.min_size, plain_config.flip_tta) == (512, False)
    assert (changed_config.min_size, changed_config.flip_tta) == (640, True)
    assert plain.transform.min_size == (512,) and changed.transform.min_size == (640,)
    plain_weights, changed_weights = plain.state_dict(), changed.state_dict()
    assert plain_weights.keys() == changed_weights.keys()
    assert all(torch.equal(plain_weights[name], changed_weights[name]) for name in plain_weights)
