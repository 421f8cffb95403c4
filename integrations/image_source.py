"""Fetching task images for the backend, and refusing the ones it must not fetch.

A task's image may be:

- a Label Studio path (``/data/upload/...``, ``/data/local-files/?d=...``): fetched from the
  Label Studio the backend was set up with, with its API token;
- an http(s) URL on that Label Studio's origin (token sent) or on an operator-allowed host (no
  token: the token never leaves for another origin);
- a plain file path or ``file://`` URL under the operator's local image root.

Anything else (other hosts, other schemes, paths outside the root, redirects, files larger than the
cap, fetches slower than the deadline) raises :class:`ImageFetchError` with the reason, and neither
the token nor credentials or query strings inside a URL appear in it.

The host that is checked is the host that is connected to: URLs are parsed by the parser requests
itself connects with (urllib3's), and forms that parsers read differently (backslashes, userinfo,
whitespace and control characters, percent-encoded or non-ASCII hosts) are refused outright, as
are URLs on which urllib3 and the standard library disagree. See "A New Era of SSRF" (Orange
Tsai, Black Hat USA 2017) for the parser-mismatch tricks these rules close.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
from cachetools import LRUCache
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import LocationParseError, ReadTimeoutError
from urllib3.util import parse_url

DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters that different URL parsers treat differently (or that requests silently strips).
_AMBIGUOUS_CHARACTERS = re.compile(r"[\\\x00-\x20\x7f]")
_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")


class ImageFetchError(ValueError):
    """A task image that was refused or could not be fetched."""


def redact_url(reference: str) -> str:
    """``reference`` as it may be logged: without userinfo (``user:secret@``) or query string."""
    return _USERINFO.sub("", str(reference)).split("?", 1)[0]


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str  # lower case; IPv6 literals without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def checked_url(url: str) -> tuple[str, Origin]:
    """The URL exactly as requests will send it, and the origin it will connect to.

    Raises :class:`ImageFetchError` for anything that is not a plain, unambiguous http(s) URL.
    """
    shown = redact_url(url)
    if _AMBIGUOUS_CHARACTERS.search(url):
        raise ImageFetchError(f"{shown!r}: URLs with backslashes, whitespace or control characters are refused")
    try:
        prepared = requests.Request("GET", url).prepare().url
        connected = parse_url(prepared)
        standard = urlsplit(url)
        standard_port = standard.port
    except (requests.RequestException, LocationParseError, ValueError, UnicodeError):
        raise ImageFetchError(f"{shown!r} is not a valid URL") from None
    scheme = (connected.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise ImageFetchError(f"{shown!r}: only http and https URLs are fetched")
    if connected.auth or "@" in standard.netloc:
        raise ImageFetchError(f"{shown!r}: URLs with credentials in them are refused")
    if "%" in standard.netloc:
        raise ImageFetchError(f"{shown!r}: percent-encoded hosts are refused")
    host = (connected.host or "").lower().strip("[]")
    if not host or not host.isascii() or host != (standard.hostname or "") or connected.port != standard_port:
        raise ImageFetchError(f"{shown!r}: the host is ambiguous (URL parsers disagree on it)")
    return prepared, Origin(scheme, host, connected.port or DEFAULT_PORTS[scheme])


@dataclass
class LabelStudioConnection:
    """Where one project's Label Studio lives, and the token its files are fetched with."""

    url: str
    token: str | None = field(default=None, repr=False)

    @cached_property
    def origin(self) -> Origin:  # compared on every fetch: parsed once
        return checked_url(self.url)[1]


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
        self.allowed_hosts = {host.lower().strip("[]") for host in allowed_hosts}
        self.local_root = Path(local_root).resolve() if local_root else None
        self.timeout = timeout  # for the whole fetch: connecting, waiting and reading
        self.max_bytes = max_bytes
        self._cache: LRUCache[tuple[str | None, str], bytes] = LRUCache(maxsize=cache_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or .netrc credentials picked up from the environment

    def fetch(self, reference: str, connection: LabelStudioConnection | None) -> bytes:
        """The bytes of the image a task refers to."""
        if not isinstance(reference, str) or not reference:
            raise ImageFetchError("task has no image reference")
        if "\x00" in reference:
            raise ImageFetchError(f"{redact_url(reference)!r}: image references with NUL bytes are refused")
        url = self._absolute(reference, connection)
        # Keyed by the Label Studio the bytes were fetched for, too: a reference refused for one
        # project must not be answered from what another project's connection was allowed to fetch.
        key = (connection.url if connection is not None else None, url)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        data = self._fetch_uncached(url, connection)
        if len(data) <= self._cache.maxsize // 4:  # one huge file must not evict everything
            with self._lock:
                self._cache[key] = data
        return data

    def _absolute(self, reference: str, connection: LabelStudioConnection | None) -> str:
        """Label Studio paths made absolute on the project's Label Studio (the cache key, too)."""
        if not reference.startswith("/data/"):
            return reference
        if connection is None or not connection.url:
            raise ImageFetchError(
                f"{redact_url(reference)} is a Label Studio path, but no Label Studio URL is known: "
                "connect the backend from Label Studio or set LABEL_STUDIO_URL"
            )
        return urljoin(connection.url.rstrip("/") + "/", reference.lstrip("/"))

    def _fetch_uncached(self, reference: str, connection: LabelStudioConnection | None) -> bytes:
        try:
            parts = urlsplit(reference)
        except ValueError:
            raise ImageFetchError(f"{redact_url(reference)!r} is not a valid URL") from None
        if parts.scheme in DEFAULT_PORTS:
            return self._fetch_url(reference, connection)
        if parts.scheme == "file":
            return self._read_local(unquote(parts.path))
        if parts.scheme:
            raise ImageFetchError(f"image scheme {parts.scheme!r} is not supported")
        return self._read_local(reference)

    def _fetch_url(self, url: str, connection: LabelStudioConnection | None) -> bytes:
        prepared, origin = checked_url(url)
        headers = {}
        if connection is not None and origin == connection.origin:
            if connection.token:
                headers["Authorization"] = f"Token {connection.token}"
        elif origin.host not in self.allowed_hosts:
            raise ImageFetchError(
                f"host {origin.host!r} is not the Label Studio this backend was set up with "
                "nor in FRACTURE_AL_ALLOWED_IMAGE_HOSTS"
            )
        shown = redact_url(prepared)
        deadline = time.monotonic() + self.timeout
        try:
            with self._session.get(
                prepared, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
            ) as response:
                if response.is_redirect:
                    raise ImageFetchError(f"{shown} redirects elsewhere; redirects are not followed")
                if response.status_code != 200:
                    raise ImageFetchError(f"{shown} answered HTTP {response.status_code}")
                declared = response.headers.get("Content-Length", "0")
                if not declared.isdigit():
                    raise ImageFetchError(f"{shown} sent a malformed Content-Length")
                if int(declared) > self.max_bytes:
                    raise ImageFetchError(f"{shown} is {int(declared):,} bytes, over the {self.max_bytes:,}-byte cap")
                return self._read_capped(_chunks_until(response, deadline), shown)
        except TimeoutError:
            raise ImageFetchError(f"fetching {shown} took longer than {self.timeout:g} s") from None
        except (requests.RequestException, TransportError) as error:
            raise ImageFetchError(f"fetching {shown} failed: {type(error).__name__}") from None

    def _read_capped(self, chunks: Iterator[bytes], shown: str) -> bytes:
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


def _chunks_until(response: requests.Response, deadline: float) -> Iterator[bytes]:
    """The response body as it arrives, raising :class:`TimeoutError` at ``deadline``.

    ``read1`` returns whatever one receive brings, and the socket's timeout is cut to the time left
    before each receive, so a server that drips a byte at a time cannot stretch the fetch.
    """
    raw = response.raw
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock = getattr(raw.connection, "sock", None)
        if sock is not None:
            sock.settimeout(remaining)
        try:
            chunk = raw.read1(1 << 16, decode_content=True)
        except ReadTimeoutError:
            raise TimeoutError from None
        if not chunk:
            return
        yield chunk
