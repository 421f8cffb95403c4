"""Services on this machine's loopback: a free port, and whether (or once) a URL answers."""

from __future__ import annotations

import socket
import subprocess
import time

import requests


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str, *, timeout: float = 2.0) -> bool:
    """Something serves HTTP at ``url`` (any answer below 500)."""
    try:
        return requests.get(url, timeout=timeout).status_code < 500
    except requests.RequestException:
        return False


def wait_until_answering(url: str, *, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers; False once ``timeout`` passes or ``process`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(url):
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (so a server of ours can bind it). Bound as servers
    bind, with SO_REUSEADDR: connections of a stopped server lingering in TIME_WAIT do not count."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
