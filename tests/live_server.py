"""A real ``quads-serve`` process on 127.0.0.1 for the tests, and raw HTTP/1.1 over a socket.

``Server`` starts the service as users do (the console script, else ``python -m service.cli``),
logs to a file, waits for ``/readyz`` and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("quads-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


class Server:
    """A ``quads-serve`` child process; its log goes to a file (a full pipe would block it)."""

    def __init__(self, log: Path, log_level: str = "warning", **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # float32 unless a test says otherwise: tests compare answers with the float32 model
        # (the default, auto, may pick bfloat16 on this CPU: service.compute_path).
        environment = {**os.environ, "QUADS_THREADS": "1", "QUADS_PRECISION": "float32", **env}
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*serve_command(), "--host", "127.0.0.1", "--port", str(self.port), "--log-level", log_level],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"quads-serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"quads-serve was not ready within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def read_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split HTTP/1.1 responses (each with a Content-Length) out of a byte stream."""
    responses = []
    while match := re.match(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n(.*?)\r\n\r\n", data, re.S):
        headers = dict(line.decode().lower().split(": ", 1) for line in match.group(2).split(b"\r\n"))
        end = match.end() + int(headers["content-length"])
        responses.append((int(match.group(1)), headers, data[match.end() : end]))
        data = data[end:]
    assert data == b"", f"not a response: {data[:200]!r}"
    return responses


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` while reading every byte the server answers, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sender = threading.Thread(target=lambda: _send_ignoring_close(sock, payload))
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the server closed with our surplus unread; what it sent first is kept
            pass
        sender.join()
        return answer


def _send_ignoring_close(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass
