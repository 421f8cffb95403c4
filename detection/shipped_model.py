"""The pretrained fracture detector shipped inside the package, and how a new model store starts from it.

``detection/shipped/`` holds the weights (half precision), ``manifest.json`` (their SHA-256, the
recipe, the command that made them and their test metrics) and ``MODEL_CARD.md``. A store with no
version yet gets it as its first version, marked ``source: shipped``; its file is checked against
the manifest's SHA-256 before it is installed and every time the version is loaded, so a damaged
or replaced file is refused instead of served.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path
from typing import Any

from fracture_al.detection.digests import sha256_of
from fracture_al.detection.store import MODEL_FILE, ModelStore, ModelStoreError, ModelVersion, write_json

SHIPPED_DIR = Path(__file__).parent / "shipped"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "MODEL_CARD.md"
SHIPPED_SOURCE = "shipped"


class ShippedModelError(ModelStoreError):
    """The shipped weights are missing, or their content is not what the manifest says."""


def manifest(folder: Path = SHIPPED_DIR) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ShippedModelError(f"{path} is missing: this installation of fracture-al has no shipped model")
    return json.loads(path.read_text())


def verify_file(path: Path, expected_sha256: str) -> Path:
    """``path`` if its SHA-256 is ``expected_sha256``; else a clear error."""
    if not path.is_file():
        raise ShippedModelError(f"model file {path} is missing")
    found = sha256_of(path)
    if found != expected_sha256:
        raise ShippedModelError(
            f"model file {path} has SHA-256 {found}, not the {expected_sha256} it was published with: "
            "it was damaged or replaced, and is not loaded (reinstall fracture-al, or promote another version)"
        )
    return path


def verified_weights(folder: Path = SHIPPED_DIR) -> Path:
    """The shipped weights file, verified against the manifest."""
    content = manifest(folder)
    return verify_file(folder / content["file"], content["sha256"])


def verify_version(version: ModelVersion) -> None:
    """Refuse a version whose weights no longer match the SHA-256 recorded when it was installed."""
    expected = version.provenance.get("sha256")
    if expected:
        verify_file(version.weights_path, expected)


def install_shipped(store: ModelStore, folder: Path = SHIPPED_DIR) -> ModelVersion:
    """Publish the shipped detector into ``store`` as a new version (made current)."""
    content = manifest(folder)
    weights = verified_weights(folder)
    with store.stage() as staged:
        shutil.copyfile(weights, staged / MODEL_FILE)
        verify_file(staged / MODEL_FILE, content["sha256"])
        shutil.copyfile(folder / CARD_FILE, staged / CARD_FILE)
        write_json(staged / "config.json", {"model": content["model"], "train": content.get("train", {}),
                                            "data": content.get("data", {}), "source": SHIPPED_SOURCE})  # fmt: skip
        write_json(staged / "metrics.json", content.get("metrics", {}))
        write_json(staged / "provenance.json", {
            "source": SHIPPED_SOURCE, "sha256": content["sha256"], "name": content.get("name"),
            "trained_on": content.get("data", {}).get("train"), "command": content.get("command"),
        })  # fmt: skip
        return store.publish(staged, make_current=True)


def open_store(root: Path) -> ModelStore:
    """The model store at ``root``; a store with no version yet starts from the shipped detector."""
    store = ModelStore(root)
    if store.list() or not (SHIPPED_DIR / MANIFEST_FILE).is_file():
        return store
    store.root.mkdir(parents=True, exist_ok=True)
    with (store.root / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the backend and a worker may open a new home together
        if not store.list():
            install_shipped(store)
    return store
