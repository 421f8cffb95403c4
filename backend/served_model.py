"""The models the backend serves: per task, whatever the store's pointer for it names, reloaded
when it moves."""

from __future__ import annotations

import logging
import threading

import torch

from fracture_al.detection.mask_predictor import MaskPredictor
from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import DETECTION, ModelStore

log = logging.getLogger(__name__)


class ServedModel:
    def __init__(self, store: ModelStore, device: torch.device, task: str = DETECTION):
        self.store = store
        self.device = device
        self.task = task
        self._predictor: Predictor | MaskPredictor | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        """The version that is current in the store for this task (what the next prediction will use)."""
        return self.store.current_name(self.task)

    def predictor(self) -> Predictor | MaskPredictor:
        """The current version's predictor, loading it first if the pointer moved since the last call.

        Reading the one-line pointer per request is cheaper than any file watcher and works the
        same when the store sits on a network share that several machines publish into.
        """
        wanted = self.store.current(self.task).name
        with self._lock:
            if self._predictor is None or self._predictor.version != wanted:
                log.info("loading %s model version %s", self.task, wanted)
                load = Predictor.from_version if self.task == DETECTION else MaskPredictor.from_version
                self._predictor = load(self.store.get(wanted), self.device)
            return self._predictor
