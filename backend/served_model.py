"""The model the backend serves: whatever the store's CURRENT pointer names, reloaded when it moves."""

from __future__ import annotations

import logging
import threading

import torch

from fracture_al.detection.predictor import Predictor
from fracture_al.detection.store import ModelStore

log = logging.getLogger(__name__)


class ServedModel:
    def __init__(self, store: ModelStore, device: torch.device):
        self.store = store
        self.device = device
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str | None:
        """The version that is current in the store (what the next prediction will use)."""
        return self.store.current_name()

    def predictor(self) -> Predictor:
        """The current version's predictor, loading it first if CURRENT moved since the last call.

        Reading the one-line pointer per request is cheaper than any file watcher and works the
        same when the store sits on a network share that several machines publish into.
        """
        wanted = self.store.current().name
        with self._lock:
            if self._predictor is None or self._predictor.version != wanted:
                log.info("loading model version %s", wanted)
                self._predictor = Predictor.from_version(self.store.get(wanted), self.device)
            return self._predictor
