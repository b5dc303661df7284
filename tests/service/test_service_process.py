"""``quads-serve`` as a real uvicorn process on 127.0.0.1: concurrency, limits on the wire, shutdown."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.live_server import Server, free_port, serve_command
from tests.pickle_payload import PicklePayload
from tests.service_inputs import (
    ENCODINGS,
    MEDIA_TYPES,
    PHRASES,
    encode,
    write_tiny_checkpoint,
)

MAX_BODY_BYTES = 1_000_000
BODY_TIMEOUT_SECONDS = 1.0


@pytest.fixture(scope="module")
def server(checkpoint_path, tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("server") / "server.log",
        QUADS_MODEL=str(checkpoint_path),
        QUADS_MAX_BATCH_SIZE="4",
        QUADS_MAX_WAIT_MS="5",
        QUADS_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        QUADS_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def clips(speech) -> list[tuple[bytes, str]]:
    """Six (bytes, media type) clips: three phrases, two encodings each."""
    out = []
    for i, phrase in enumerate(PHRASES):
        samples, rate = speech[phrase]
        for fmt, subtype, to_rate, channels in (ENCODINGS[i], ENCODINGS[i + 4]):
            out.append((encode(samples, rate, fmt, subtype, to_rate, channels), MEDIA_TYPES[fmt]))
    return out


def classify(client: httpx.Client, clip: tuple[bytes, str]) -> httpx.Response:
    data, media_type = clip
    return client.post("/intent", files={"file": ("clip", data, media_type)}, params={"top_k": 6})


def test_concurrent_answers_equal_sequential_answers(server, clips):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        sequential = [classify(client, clip).json() for clip in clips]
        requests = [clips[i % len(clips)] for i in range(4 * len(clips))]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda clip: classify(client, clip), requests))
        metrics = client.get("/metrics").text

    assert [r.status_code for r in responses] == [200] * len(requests)
    for i, response in enumerate(responses):
        expected, answer = sequential[i % len(clips)], response.json()
        assert answer["intent"] == expected["intent"]
        assert [s["intent"] for s in answer["top_k"]] == [s["intent"] for s in expected["top_k"]]
        for got, want in zip(answer["top_k"], expected["top_k"]):
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    assert f'quads_http_requests_total{{route="/intent",status="200"}} {float(len(clips) + len(requests))}' in metrics


def raw_request(port: int, head: bytes, body_parts: list[bytes], read_timeout: float = 10) -> bytes:
    """Send ``head`` and ``body_parts`` over a plain socket; return what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
        return answer


def test_chunked_upload_over_the_limit_is_cut_off(server):
    head = b"POST /intent HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = 100_000
    parts = [b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n" for _ in range(MAX_BODY_BYTES // chunk + 1)]
    answer = raw_request(server.port, head, parts)  # no Content-Length: only counting can stop it
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer and b"body-too-large" in answer
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_stalled_upload_is_cut_off_with_408(server):
    head = b"POST /intent HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 50000\r\n\r\n"
    start = time.monotonic()
    answer = raw_request(server.port, head, [b"RIFF" + b"\0" * 996])  # then nothing more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body-timeout" in answer
    assert BODY_TIMEOUT_SECONDS <= time.monotonic() - start < BODY_TIMEOUT_SECONDS + 5


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_live_metrics(server, clips):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        classify(client, clips[0])
        client.post("/intent", content=b"junk", headers={"Content-Type": "audio/wav"})
        text = client.get("/metrics").text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_bad_model_path_exits_with_the_reason(tmp_path):
    missing = tmp_path / "nope" / "quads-fsc-4bit.safetensors"
    result = subprocess.run(
        [*serve_command(), "--port", str(free_port())],
        env={**os.environ, "QUADS_MODEL": str(missing)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"quads-serve: cannot start: {missing}: no such checkpoint file" in result.stderr


# Records GOMP_SPINCOUNT when torch is first imported, then runs quads-serve on a missing model.
_TORCH_IMPORT_WATCH = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, Watch())
from service.cli import cli
try:
    cli(sys.argv[1:])
except SystemExit:
    pass
print(seen)
"""


def test_openmp_policy_is_set_before_torch_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["QUADS_MODEL"] = str(tmp_path / "missing.safetensors")
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_IMPORT_WATCH, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "['10000']", result.stderr[-2000:]  # libgomp reads it when torch loads
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # the operator's own policy is left alone
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_IMPORT_WATCH, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "[None]", result.stderr[-2000:]


def test_a_bad_setting_is_named_without_loading_torch():
    env = {**os.environ, "QUADS_BITS": "12"}
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_IMPORT_WATCH], env=env, capture_output=True, text=True, timeout=60
    )
    assert "QUADS_BITS" in result.stderr and result.stdout.strip() == "[]"


def test_sigterm_drains_then_finishes_in_flight_requests(checkpoint_path, speech_wav, tmp_path):
    # The batch wait holds a lone request in flight for 2 s, across the SIGTERM and the 1-s drain below.
    server = Server(
        tmp_path / "server.log",
        QUADS_MODEL=str(checkpoint_path),
        QUADS_DRAIN_SECONDS="1",
        QUADS_MAX_BATCH_SIZE="8",
        QUADS_MAX_WAIT_MS="2000",
    )
    try:
        server.wait_ready()
        in_flight: dict[str, httpx.Response] = {}
        request = threading.Thread(
            target=lambda: in_flight.setdefault(
                "response",
                httpx.post(
                    f"{server.url}/intent", content=speech_wav, headers={"Content-Type": "audio/wav"}, timeout=60
                ),
            )
        )
        request.start()
        deadline = time.monotonic() + 10
        while "quads_requests_in_flight 1.0" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the engine"
            time.sleep(0.05)

        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        readiness = httpx.get(f"{server.url}/readyz")  # still listening during the drain period
        assert readiness.status_code == 503 and readiness.json()["type"] == "urn:quads:problem:draining"
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        request.join(timeout=30)
        assert in_flight["response"].status_code == 200, in_flight["response"].text
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz")
    finally:
        server.stop()


@pytest.mark.parametrize("damage", ["tampered", "truncated", "pickle"])
def test_refuses_to_start_on_a_damaged_or_unsafe_checkpoint(tmp_path, damage):
    path = write_tiny_checkpoint(tmp_path / "m.safetensors", bits=4)
    data = bytearray(path.read_bytes())
    marker = tmp_path / "pwned"
    if damage == "tampered":
        data[-10] ^= 0xFF  # a byte of the last tensor
        expected = "content hash mismatch"
    elif damage == "truncated":
        data = data[: len(data) // 2]
        expected = "not a readable .safetensors file"
    else:
        data = pickle.dumps(PicklePayload(marker))
        expected = "pickle file, not a QUADS"
    path.write_bytes(bytes(data))
    result = subprocess.run(
        [*serve_command(), "--port", str(free_port())],
        env={**os.environ, "QUADS_MODEL": str(path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"quads-serve: cannot start: {path}: " in result.stderr and expected in result.stderr
    assert not marker.exists()


def test_json_logs_carry_request_ids_and_leave_probes_out(checkpoint_path, tmp_path, speech_wav):
    log = tmp_path / "server.log"
    server = Server(log, log_level="info", QUADS_MODEL=str(checkpoint_path), QUADS_LOG_FORMAT="json")
    try:
        server.wait_ready()  # polls /readyz: not an access line at info level
        kept = httpx.post(
            f"{server.url}/intent", files={"file": ("a.wav", speech_wav)}, headers={"X-Request-ID": "client-42"}
        )
        assert kept.status_code == 200 and kept.headers["x-request-id"] == "client-42"
        forged = httpx.post(
            f"{server.url}/intent", content=b"nope", headers={"Content-Type": "audio/wav", "X-Request-ID": 'x" forged'}
        )
        made = forged.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made) and forged.json()["request_id"] == made
        httpx.get(f"{server.url}/metrics")
        httpx.get(f"{server.url}/healthz")
    finally:
        server.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["request_id"] == "client-42" and "POST /intent" in line["message"] for line in access), access
    assert any(line["request_id"] == made and " 400" in line["message"] for line in access), access
    assert not [line for line in access if any(path in line["message"] for path in ("/healthz", "/readyz", "/metrics"))]
    assert any(line["logger"] == "service" and line["message"].startswith("serving ") for line in lines)
    assert all({"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines)
