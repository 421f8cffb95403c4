"""The model store: numbered, immutable model versions and a movable "current" pointer.

Layout under the store's root::

    versions/v0001/   model.pt, config.json, metrics.json, history.json, plots/*.png
    staging/          versions being written (never read by anyone else)
    rejected/         candidates a quality gate turned down, with rejection.json
    CURRENT           the name of the version being served

A version is written completely in ``staging/`` and then renamed into ``versions/`` in one
``rename(2)``: readers see all of it or none of it, a crash leaves only staging debris, and the
rename fails when another process already took the number, so two writers never share one.

The store reads and writes files and pointers only: it loads no network, so listing versions
needs no torch (detection/model_files.py saves and loads the networks in them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fracture_al.detection.image_score import ProbabilityCalibration

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
MODEL_FILE = "model.pt"


class ModelStoreError(LookupError):
    """A version that does not exist, or a store with no current version."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    path: Path

    @property
    def number(self) -> int:
        return int(VERSION_PATTERN.match(self.name).group(1))

    @property
    def weights_path(self) -> Path:
        return self.path / MODEL_FILE

    def read_json(self, name: str) -> dict[str, Any]:
        file = self.path / name
        return json.loads(file.read_text()) if file.exists() else {}

    @property
    def task(self) -> str:
        """What the version's network does: detection, segmentation or classification."""
        return task_of(self.read_json("config.json").get("model", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return self.read_json("metrics.json")

    @property
    def operating_threshold(self) -> float | None:
        """The box-score threshold calibrated on the version's validation X-rays
        (detection.evaluation.operating_threshold); None if it had none to calibrate on."""
        return (self.metrics.get("validation") or {}).get("operating_threshold")

    @property
    def probability_calibration(self) -> ProbabilityCalibration:
        """How the version's fracture probability is calibrated, as fitted on its validation X-rays
        (detection.evaluation.probability_calibration); the identity where it had none to fit on.
        Raises ModelStoreError (not served: the backend answers 503) where the stored one is malformed."""
        # Imported here: listing or pointing at versions needs no numpy or scipy.
        from fracture_al.detection.image_score import ProbabilityCalibration

        try:
            return ProbabilityCalibration.from_dict(
                (self.metrics.get("validation") or {}).get("probability_calibration"))
        except ValueError as error:
            raise ModelStoreError(f"model version {self.name}: {error}") from error

    @property
    def provenance(self) -> dict[str, Any]:
        """What the version was made from (see detection/provenance.py); empty for older versions."""
        return self.read_json("provenance.json")

    @property
    def plots(self) -> list[Path]:
        return sorted((self.path / "plots").glob("*.png"))

    @property
    def created_at(self) -> float:
        return self.weights_path.stat().st_mtime


DETECTION = "detection"
SEGMENTATION = "segmentation"
# What a detector tells apart (besides background) unless its config says otherwise.
DEFAULT_CLASS_NAMES = ("fracture",)


def task_of(config: dict[str, Any]) -> str:
    """A saved config's task; detectors were saved before tasks existed, hence the default."""
    return config.get("task", DETECTION)


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")


class ModelStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / "staging"
        self.rejected_dir = self.root / "rejected"

    def pointer(self, task: str = DETECTION) -> Path:
        """The file naming the task's served version: one per task, so a project can be served boxes
        and masks side by side (the detector's keeps its original name)."""
        return self.root / ("CURRENT" if task == DETECTION else f"CURRENT-{task}")

    # Reading -----------------------------------------------------------------------------------
    def list(self) -> list[ModelVersion]:
        if not self.versions_dir.is_dir():
            return []
        versions = [
            ModelVersion(entry.name, entry)
            for entry in self.versions_dir.iterdir()
            if entry.is_dir() and VERSION_PATTERN.match(entry.name)
        ]
        return sorted(versions, key=lambda version: version.number)

    def get(self, name: str) -> ModelVersion:
        path = self.versions_dir / name
        if not VERSION_PATTERN.match(name) or not path.is_dir():
            known = ", ".join(v.name for v in self.list()) or "none"
            raise ModelStoreError(f"model version {name!r} not found in {self.root} (known: {known})")
        return ModelVersion(name, path)

    def current_name(self, task: str = DETECTION) -> str | None:
        try:
            return self.pointer(task).read_text().strip() or None
        except FileNotFoundError:
            return None

    def current(self, task: str = DETECTION) -> ModelVersion:
        name = self.current_name(task)
        if name is None:
            what, flag = ("model", "") if task == DETECTION else (f"{task} model", f" --task {task}")
            raise ModelStoreError(f"no {what} has been published in {self.root} yet: run "
                                  f"`fracture-al train{flag}` first")  # fmt: skip
        return self.get(name)

    def detector_class_names(self) -> list[str]:
        """The classes the current detector tells apart; the default ones while there is none."""
        name = self.current_name(DETECTION)
        saved = self.get(name).read_json("config.json")["model"] if name else {}
        return list(saved.get("class_names", DEFAULT_CLASS_NAMES))

    def resolve(self, name: str | None, task: str = DETECTION) -> ModelVersion:
        """``name`` if given, else the task's current version."""
        return self.get(name) if name else self.current(task)

    # Writing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A private directory to write a version into; removed if the block fails."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self._remove_dead_writers_debris()
        path = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{os.getpid()}-", dir=self.staging_dir))
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def _remove_dead_writers_debris(self) -> None:
        """Staging folders of processes on this host that died mid-write (a killed worker)."""
        for entry in self.staging_dir.iterdir():
            # "<host>-<pid>-<random>": mkdtemp's random part has no "-", a host name may.
            host, pid, _ = ([*entry.name.rsplit("-", 2), "", ""])[:3]
            if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def publish(self, staged: Path, *, make_current: bool = True) -> ModelVersion:
        """Move a fully written staging directory into place under the next free version number."""
        if not (staged / MODEL_FILE).is_file():
            raise ModelStoreError(f"{staged} has no {MODEL_FILE}: refusing to publish it")
        _fsync_tree(staged)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        number = max((version.number for version in self.list()), default=0) + 1
        while True:
            target = self.versions_dir / f"v{number:04d}"
            try:
                os.rename(staged, target)  # fails if another writer took this number first
                break
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number += 1
        _fsync_directory(self.versions_dir)
        version = ModelVersion(target.name, target)
        if make_current:
            self.promote(version.name)
        return version

    def reject(self, staged: Path, reason: dict[str, Any]) -> Path:
        """Keep a candidate that was not published, with its metrics and the reason, for inspection."""
        write_json(staged / "rejection.json", reason)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        target = self.rejected_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{staged.name}"
        os.rename(staged, target)
        return target

    def rejected(self) -> list[Path]:
        return sorted(self.rejected_dir.iterdir()) if self.rejected_dir.is_dir() else []

    def promote(self, name: str) -> ModelVersion:
        """Serve ``name`` for its task from now on; also how a rollback is done."""
        version = self.get(name)
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".CURRENT.{os.getpid()}.{time.monotonic_ns()}"
        temporary.write_text(version.name + "\n")
        os.replace(temporary, self.pointer(version.task))
        return version


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
        elif path.is_dir():
            _fsync_directory(path)
    _fsync_directory(root)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
