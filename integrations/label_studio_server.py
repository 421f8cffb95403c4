"""Starting a Label Studio server from its own virtualenv, on loopback.

Label Studio pins redis, rq and Django versions that conflict with ours, so it lives in a separate
virtualenv (``.venv-labelstudio``, made by ``make``) and is only ever spoken to over HTTP.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fracture_al.integrations.loopback import port_is_free, wait_until_answering

DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".venv-labelstudio"


class LabelStudioStartError(RuntimeError):
    """Label Studio is not installed, its port is taken, or it did not become healthy in time."""


@dataclass
class LabelStudioServer:
    data_dir: Path
    port: int
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)  # 40 hex characters: Label Studio's legacy API token
    local_files_root: Path | None = None
    venv: Path = DEFAULT_VENV
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    def environment(self) -> dict[str, str]:
        """Label Studio's settings; the admin account's password and token go here, not on its
        command line, which every local user can read (``ps``, ``/proc/<pid>/cmdline``)."""
        env = {
            **os.environ,
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            # Backends and webhooks on 127.0.0.1 are refused by default as "reserved addresses".
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
        }
        if self.local_files_root is not None:
            env["LOCAL_FILES_SERVING_ENABLED"] = "true"
            env["LOCAL_FILES_DOCUMENT_ROOT"] = str(self.local_files_root)
        return env

    def start(self, log_file: Path, *, timeout: float = 240.0) -> None:
        if not self.executable.exists():
            raise LabelStudioStartError(
                f"Label Studio is not installed at {self.executable}: run `make labelstudio` "
                "(it needs its own virtualenv), or point LABEL_STUDIO_URL at a running one"
            )
        if not port_is_free(self.port):
            raise LabelStudioStartError(f"port {self.port} is already in use: choose another one")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.executable), "start",
            "--internal-host", "127.0.0.1", "--port", str(self.port), "--host", self.url,
            "--no-browser", "--data-dir", str(self.data_dir), "--enable-legacy-api-token",
        ]  # fmt: skip
        with log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_healthy(timeout, log_file)

    def wait_healthy(self, timeout: float, log_file: Path) -> None:
        if wait_until_answering(f"{self.url}/health", timeout=timeout, process=self.process):
            return
        if self.process is not None and self.process.poll() is not None:
            raise LabelStudioStartError(f"Label Studio exited with {self.process.returncode}; see {log_file}")
        self.stop()
        raise LabelStudioStartError(f"Label Studio did not answer within {timeout:.0f} s; see {log_file}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)  # it forks helpers: end the whole session
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
