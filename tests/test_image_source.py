"""The backend's image fetching against loopback listeners: the host checked is the host connected
to, no token leaves for another origin, credentials never reach a log, and the deadline is total."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from loopback_servers import FileServer, url_of

from fracture_al.integrations.image_source import (
    ImageFetchError,
    ImageSource,
    LabelStudioConnection,
    checked_url,
    redact_url,
)

TOKEN = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it (and answers none)."""

    port: int
    connections: list[bytes] = field(default_factory=list)


@pytest.fixture()
def listener() -> Iterator[Listener]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    found = Listener(server.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(0.5)
                try:
                    found.connections.append(connection.recv(4096))
                except TimeoutError:
                    found.connections.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield found
    stop.set()
    thread.join()
    server.close()


def tricks(port: int) -> list[str]:
    """URLs whose host some parser reads as ``localhost`` (allowed) while requests would connect to
    the listener on 127.0.0.1, or which are otherwise ambiguous (see "A New Era of SSRF", 2017)."""
    return [
        f"http://127.0.0.1:{port}\\@localhost/x.jpg",
        f"HTTP://127.0.0.1:{port}\\@LOCALHOST/x.jpg",
        f"http://127.0.0.1:{port}\\\\@localhost/x.jpg",
        f"http://localhost@127.0.0.1:{port}/x.jpg",
        f"http://localhost:{port}@127.0.0.1:{port}/x.jpg",
        f"http://user:secret@localhost:{port}/x.jpg",
        f"http://127.0.0.1:{port}#@localhost/x.jpg",
        f"http://127.0.0.1:{port}?@localhost/x.jpg",
        f"http://localhost\t@127.0.0.1:{port}/x.jpg",
        f"http://local\thost:{port}/x.jpg",
        f"http://localhost%2f@127.0.0.1:{port}/x.jpg",
        f"http://127.0.0.1:{port}%2f@localhost/x.jpg",
        f"http://127.0.0.1%3A{port}/x.jpg",
        f"http://%6c%6f%63%61%6c%68%6f%73%74:{port}/x.jpg",
        f"http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/x.jpg",  # full-width "localhost"
        f"http://[::ffff:127.0.0.1]:{port}/x.jpg",
        f"http://0x7f.0.0.1:{port}/x.jpg",
        f"http://2130706433:{port}/x.jpg",
        f"http://127.1:{port}/x.jpg",
        f" http://127.0.0.1:{port}/x.jpg",
        f"http://127.0.0.1:{port}/x.jpg\x00",
        f"http://[::1:{port}/x.jpg",
        f"http://localhost:{port}:80/x.jpg",
        f"ftp://localhost:{port}/x.jpg",
        f"gopher://localhost:{port}/x.jpg",
    ]


def test_the_allowed_form_reaches_the_listener(listener: Listener) -> None:
    """The control: without it, the refusals below would pass against a dead listener too."""
    with pytest.raises(ImageFetchError):
        ImageSource(allowed_hosts=["localhost"], timeout=1).fetch(f"http://localhost:{listener.port}/x.jpg", None)
    assert len(listener.connections) == 1 and listener.connections[0].startswith(b"GET /x.jpg")


@pytest.mark.parametrize("index", range(len(tricks(1))))
def test_parser_mismatch_tricks_are_refused_and_reach_nothing(listener: Listener, index: int) -> None:
    url = tricks(listener.port)[index]
    source = ImageSource(allowed_hosts=["localhost"], timeout=1)
    label_studio = LabelStudioConnection(f"http://localhost:{listener.port + 1}", TOKEN)
    with pytest.raises(ImageFetchError) as refused:
        source.fetch(url, label_studio)
    time.sleep(0.1)  # a connection that was made would be recorded by now
    assert listener.connections == []
    assert "secret" not in str(refused.value) and TOKEN not in str(refused.value)


def test_redirects_to_the_listener_are_not_followed(listener: Listener) -> None:
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{listener.port}/x.jpg")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        label_studio = LabelStudioConnection(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
        with pytest.raises(ImageFetchError, match="redirects"):
            ImageSource().fetch("/data/upload/1/x.jpg", label_studio)
    finally:
        server.shutdown()
    assert listener.connections == []


def test_the_token_goes_only_to_the_label_studio_origin(listener: Listener) -> None:
    source = ImageSource(allowed_hosts=["127.0.0.1"], timeout=1)
    elsewhere = LabelStudioConnection(f"http://127.0.0.1:{listener.port + 1}", TOKEN)
    with pytest.raises(ImageFetchError):
        source.fetch(f"http://127.0.0.1:{listener.port}/x.jpg", elsewhere)  # allowed host, other port
    with pytest.raises(ImageFetchError):
        source.fetch("/data/upload/1/x.jpg", LabelStudioConnection(f"http://127.0.0.1:{listener.port}", TOKEN))
    assert len(listener.connections) == 2
    assert TOKEN.encode() not in listener.connections[0]
    assert f"Authorization: Token {TOKEN}".encode() in listener.connections[1]


def test_a_dripping_host_is_cut_off_at_the_deadline() -> None:
    """One byte every 0.3 s resets every per-read timeout; only a total deadline stops it."""

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(ImageFetchError, match="longer than 2 s"):
            ImageSource(allowed_hosts=["127.0.0.1"], timeout=2).fetch(
                f"http://127.0.0.1:{server.server_address[1]}/slow.jpg", None
            )
    finally:
        server.shutdown()
    assert time.monotonic() - started < 10  # the drip alone would take 300 s


@pytest.mark.parametrize(
    ("reference", "shown"),
    [
        ("http://user:secret@host.example/x.jpg?signature=abc", "http://host.example/x.jpg"),
        ("https://a:b@host.example:8443/p/x.png", "https://host.example:8443/p/x.png"),
        ("/data/upload/1/x.jpg", "/data/upload/1/x.jpg"),
    ],
)
def test_logged_urls_lose_credentials_and_queries(reference: str, shown: str) -> None:
    assert redact_url(reference) == shown


def test_checked_url_gives_the_origin_connected_to() -> None:
    prepared, origin = checked_url("http://LocalHost:8080/data/x.jpg?d=1")
    assert prepared == "http://localhost:8080/data/x.jpg?d=1"
    assert (origin.scheme, origin.host, origin.port) == ("http", "localhost", 8080)
    assert checked_url("https://[::1]/x.jpg")[1].host == "::1"
    assert checked_url("https://example.org/x.jpg")[1].port == 443


def test_bytes_fetched_for_one_label_studio_are_not_served_where_that_fetch_would_be_refused(
    file_server: FileServer,
) -> None:
    source = ImageSource()  # no allowed hosts: only a project's own Label Studio may be fetched from
    label_studio = LabelStudioConnection(url_of(file_server), TOKEN)
    absolute = f"{url_of(file_server)}/data/upload/1/xray.jpg"
    assert source.fetch(absolute, label_studio) == file_server.files["/data/upload/1/xray.jpg"]
    with pytest.raises(ImageFetchError, match="not the Label Studio"):
        source.fetch(absolute, LabelStudioConnection("http://127.0.0.1:1", TOKEN))  # another project's
    with pytest.raises(ImageFetchError, match="not the Label Studio"):
        source.fetch(absolute, None)
