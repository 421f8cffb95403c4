"""Content digests of files: how pretrained checkpoints, the shipped detector and every model
version's inputs are identified and checked. Without torch, so that the CLI's quick commands stay quick."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
