"""A loopback server standing in for Label Studio's file serving: it records the Authorization
header of every request, so tests can see where a token went."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    files: dict[str, bytes]
    seen_authorization: list[str | None]


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        self.server.seen_authorization.append(self.headers.get("Authorization"))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.org/x.jpg")
            self.end_headers()
            return
        body = self.server.files.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def url_of(server: FileServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
