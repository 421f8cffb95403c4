"""Fetching task images for the backend, and refusing the ones it must not fetch.

A task's image may be:

- a Label Studio path (``/data/upload/...``, ``/data/local-files/?d=...``): fetched from the
  Label Studio the backend was set up with, with its API token;
- an http(s) URL on that Label Studio's host (token sent) or on an operator-allowed host (no token:
  the token never leaves for another host);
- a plain file path or ``file://`` URL under the operator's local image root.

Anything else (other hosts, other schemes, paths outside the root, redirects, files larger than the
cap) raises :class:`ImageFetchError` with the reason, and the token never appears in it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
from cachetools import LRUCache

from fracture_al.settings import Settings


class ImageFetchError(ValueError):
    """A task image that was refused or could not be fetched."""


@dataclass
class LabelStudioConnection:
    url: str
    token: str | None = field(default=None, repr=False)

    @property
    def origin(self) -> tuple[str, str]:
        parts = urlsplit(self.url)
        return parts.scheme, parts.netloc


class ImageSource:
    def __init__(
        self,
        *,
        allowed_hosts: list[str] = (),
        local_root: Path | None = None,
        timeout: float = 15.0,
        max_bytes: int = 50 * 1024 * 1024,
        cache_bytes: int = 64 * 1024 * 1024,
    ):
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.local_root = Path(local_root).resolve() if local_root else None
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._cache: LRUCache[str, bytes] = LRUCache(maxsize=cache_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self._session = requests.Session()

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageSource:
        return cls(
            allowed_hosts=settings.allowed_image_hosts,
            local_root=settings.local_image_root,
            timeout=settings.image_fetch_timeout,
            max_bytes=settings.max_image_bytes,
            cache_bytes=settings.image_cache_bytes,
        )

    def fetch(self, reference: str, connection: LabelStudioConnection | None) -> bytes:
        """The bytes of the image a task refers to."""
        if not isinstance(reference, str) or not reference:
            raise ImageFetchError("task has no image reference")
        with self._lock:
            cached = self._cache.get(reference)
        if cached is not None:
            return cached
        data = self._fetch_uncached(reference, connection)
        if len(data) <= self._cache.maxsize // 4:  # one huge file must not evict everything
            with self._lock:
                self._cache[reference] = data
        return data

    def _fetch_uncached(self, reference: str, connection: LabelStudioConnection | None) -> bytes:
        parts = urlsplit(reference)
        if parts.scheme in ("http", "https"):
            return self._fetch_url(reference, connection)
        if parts.scheme == "file":
            return self._read_local(unquote(parts.path))
        if parts.scheme:
            raise ImageFetchError(f"image scheme {parts.scheme!r} is not supported")
        if reference.startswith("/data/"):
            if connection is None or not connection.url:
                raise ImageFetchError(
                    f"{reference} is a Label Studio path, but no Label Studio URL is known: "
                    "connect the backend from Label Studio or set LABEL_STUDIO_URL"
                )
            return self._fetch_url(urljoin(connection.url.rstrip("/") + "/", reference.lstrip("/")), connection)
        return self._read_local(reference)

    def _fetch_url(self, url: str, connection: LabelStudioConnection | None) -> bytes:
        parts = urlsplit(url)
        headers = {}
        if connection is not None and (parts.scheme, parts.netloc) == connection.origin:
            if connection.token:
                headers["Authorization"] = f"Token {connection.token}"
        elif (parts.hostname or "").lower() not in self.allowed_hosts:
            raise ImageFetchError(
                f"host {parts.hostname!r} is not the Label Studio this backend was set up with "
                "nor in FRACTURE_AL_ALLOWED_IMAGE_HOSTS"
            )
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"  # no query: it may carry signatures
        try:
            with self._session.get(
                url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
            ) as response:
                if response.is_redirect:
                    raise ImageFetchError(f"{shown} redirects elsewhere; redirects are not followed")
                if response.status_code != 200:
                    raise ImageFetchError(f"{shown} answered HTTP {response.status_code}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > self.max_bytes:
                    raise ImageFetchError(f"{shown} is {declared:,} bytes, over the {self.max_bytes:,}-byte cap")
                return self._read_capped(response.iter_content(1 << 16), shown)
        except requests.RequestException as error:
            raise ImageFetchError(f"fetching {shown} failed: {type(error).__name__}") from None

    def _read_capped(self, chunks, shown: str) -> bytes:
        received, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageFetchError(f"{shown} is over the {self.max_bytes:,}-byte cap")
            received.append(chunk)
        return b"".join(received)

    def _read_local(self, path_text: str) -> bytes:
        if self.local_root is None:
            raise ImageFetchError(f"{path_text}: local paths are refused (no FRACTURE_AL_LOCAL_IMAGE_ROOT set)")
        candidate = Path(path_text)
        resolved = (candidate if candidate.is_absolute() else self.local_root / candidate).resolve()
        if not resolved.is_relative_to(self.local_root):
            raise ImageFetchError(f"{path_text}: outside the allowed image root")
        try:
            size = os.path.getsize(resolved)
            if size > self.max_bytes:
                raise ImageFetchError(f"{path_text} is {size:,} bytes, over the {self.max_bytes:,}-byte cap")
            return resolved.read_bytes()
        except OSError as error:
            raise ImageFetchError(f"{path_text}: {error.strerror or error}") from None
