"""Hostile and odd input against a real ``quads-serve`` process on 127.0.0.1.

A table of requests, each with the answer it must get: valid-but-odd audio gets a 200 equal to
the model run alone on the same bytes; everything else gets a 4xx problem+json with a detail;
nothing gets a 5xx. Raw sockets cover what an HTTP client library will not send: a lying
Content-Length, malformed HTTP, and clients that send a byte a second. After all of it the
service still gives the answer it gave before.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.http_checks import assert_problem, assert_problem_bytes
from tests.live_server import Server, exchange, read_responses
from tests.service_inputs import LABELS, PHRASES, encode, reference_probabilities
from tests.speech import encode as encode_samples
from tests.speech import encode_container

MAX_BODY_BYTES = 600_000
MAX_AUDIO_SECONDS = 8
BODY_TIMEOUT_SECONDS = 3.0
CUT_OFF_SLACK_SECONDS = 2.5  # a busy 2-core host may be this late to close a timed-out connection
BOUNDARY = "quads-hostile-boundary"


# --- building requests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """Real speech to build clips from: mono float32 ``samples`` at ``rate`` (espeak-ng's 22.05 kHz)."""

    samples: np.ndarray
    rate: int

    def clip(self, fmt: str = "WAV", subtype: str = "PCM_16", rate: int = 16000, channels: int = 1) -> bytes:
        return encode(self.samples, self.rate, fmt, subtype, rate, channels)


@dataclass(frozen=True)
class Request:
    """A POST /intent body. ``clip``: the audio bytes a 200 must be the model's answer for."""

    body: bytes | Callable[[], Iterator[bytes]]  # a generator function is sent chunked
    content_type: str | None
    clip: bytes | None = None


@dataclass(frozen=True)
class Part:
    name: bytes
    filename: bytes | None
    data: bytes
    content_type: bytes | None = b"audio/wav"


def raw(data: bytes, content_type: str | None = "audio/wav") -> Request:
    return Request(data, content_type, clip=data)


def multipart(*parts: Part, boundary: str = BOUNDARY) -> Request:
    """multipart/form-data, written by hand so that names and filenames can hold anything."""
    body = b""
    for part in parts:
        disposition = b'form-data; name="%s"' % part.name
        if part.filename is not None:
            disposition += b'; filename="%s"' % part.filename
        body += b"--%s\r\nContent-Disposition: %s\r\n" % (boundary.encode(), disposition)
        if part.content_type is not None:
            body += b"Content-Type: %s\r\n" % part.content_type
        body += b"\r\n" + part.data + b"\r\n"
    body += b"--%s--\r\n" % boundary.encode()
    files = [p.data for p in parts if p.name == b"file" and p.filename is not None]
    return Request(body, f"multipart/form-data; boundary={BOUNDARY}", clip=files[0] if len(files) == 1 else None)


def upload(data: bytes, filename: bytes = b"clip.wav", content_type: bytes | None = b"audio/wav") -> Request:
    return multipart(Part(b"file", filename, data, content_type))


def wav_header(rate: int = 16000, channels: int = 1, bits: int = 16, data_bytes: int = 0) -> bytes:
    """A 44-byte PCM WAV header that claims ``data_bytes`` of samples (whatever follows it)."""
    block = channels * bits // 8
    # Absurd values overflow the derived fields, as they would in a C writer.
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) % 2**32, block % 2**16, bits)
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_bytes, 2**32 - 1))
        + b"WAVEfmt "
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def png_bytes() -> bytes:
    """A valid 1x1 grey PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )


def chunked(total: int, chunk: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        for _ in range(0, total, chunk):
            yield b"\0" * chunk

    return chunks


def with_value(m: Material, value: float) -> bytes:
    """The speech as 32-bit float WAV with every 100th sample replaced by ``value``."""
    samples = m.samples.copy()
    samples[::100] = value
    return encode_samples(samples, m.rate, "WAV", "FLOAT")


def noise_seconds(seconds: float, rate: int = 16000) -> bytes:
    return encode_samples(
        np.random.default_rng(0).uniform(-0.1, 0.1, int(seconds * rate)).astype(np.float32), rate, "WAV", "PCM_16"
    )


@dataclass(frozen=True)
class Case:
    """One request of the corpus and the answer it must get (``slug``: the problem type of a 4xx)."""

    name: str
    request: Callable[[Material], Request] = field(repr=False)
    status: int
    slug: str | None = None


def container(m: Material, fmt: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    import torch

    from core.audio import resample

    return encode_container(resample(torch.from_numpy(m.samples), m.rate).numpy(), fmt, codec, rate, layout)


def webm_claiming_hours(data: bytes) -> bytes:
    """The WebM with its Segment Info Duration (an 8-byte float, in ms) set to two hours."""
    patched = bytearray(data)
    struct.pack_into(">d", patched, patched.index(b"\x44\x89\x88") + 3, 2 * 3600 * 1000.0)
    return bytes(patched)


CORPUS = [
    # The envelope: body, multipart structure, content type, size.
    Case("empty body", lambda m: raw(b""), 422, "empty-audio"),
    Case("empty file part", lambda m: upload(b""), 422, "empty-audio"),
    Case("no file field", lambda m: multipart(Part(b"audio", b"clip.wav", m.clip())), 422, "missing-file"),
    Case("multipart with no parts", lambda m: multipart(), 422, "missing-file"),
    Case(
        "multipart cut before its first boundary",
        lambda m: Request(b"--" + BOUNDARY.encode()[:5], f"multipart/form-data; boundary={BOUNDARY}"),
        422,
        "missing-file",
    ),
    Case(
        "two file fields",
        lambda m: multipart(Part(b"file", b"a.wav", m.clip()), Part(b"file", b"b.wav", m.clip())),
        400,
        "malformed-multipart",
    ),
    Case(
        "file as a plain value", lambda m: multipart(Part(b"file", None, b"clip.wav", None)), 422, "file-not-uploaded"
    ),
    Case(
        "multipart without a boundary",
        lambda m: Request(upload(m.clip()).body, "multipart/form-data"),
        400,
        "malformed-multipart",
    ),
    Case(
        "multipart with another boundary",
        lambda m: Request(upload(m.clip()).body, "multipart/form-data; boundary=other"),
        400,
        "malformed-multipart",
    ),
    Case(
        "40 form fields",
        lambda m: multipart(*[Part(b"f%d" % i, None, b"v", None) for i in range(40)]),
        400,
        "malformed-multipart",
    ),
    Case("content type text/plain", lambda m: raw(m.clip(), "text/plain"), 415, "unsupported-media-type"),
    Case("content type application/json", lambda m: raw(m.clip(), "application/json"), 415, "unsupported-media-type"),
    Case("no content type", lambda m: raw(m.clip(), None), 415, "unsupported-media-type"),
    Case(
        "content type multipart/mixed",
        lambda m: raw(upload(m.clip()).body, f"multipart/mixed; boundary={BOUNDARY}"),
        415,
        "unsupported-media-type",
    ),
    Case("body over the limit, declared", lambda m: raw(bytes(MAX_BODY_BYTES + 1)), 413, "body-too-large"),
    Case(
        "body over the limit, chunked",
        lambda m: Request(chunked(MAX_BODY_BYTES + 64 * 1024), "audio/wav"),
        413,
        "body-too-large",
    ),
    Case("file part over the limit", lambda m: upload(bytes(MAX_BODY_BYTES)), 413, "body-too-large"),
    # Bytes that are not audio, or not usable audio.
    Case("text as audio", lambda m: raw(b"turn on the lights, please\n" * 20), 400, "undecodable-audio"),
    Case(
        "JSON as audio",
        lambda m: upload(json.dumps({"intent": "activate_lights", "audio": [0.1] * 100}).encode()),
        400,
        "undecodable-audio",
    ),
    Case("PNG as audio", lambda m: upload(png_bytes(), b"clip.png", b"image/png"), 400, "undecodable-audio"),
    Case("random bytes", lambda m: raw(np.random.default_rng(0).bytes(20_000)), 400, "undecodable-audio"),
    Case("WAV header without a data chunk", lambda m: raw(wav_header()[:36]), 400, "undecodable-audio"),
    Case("WAV header with an empty data chunk", lambda m: raw(wav_header()), 422, "empty-audio"),
    Case("WAV header claiming 4 GB and no data", lambda m: raw(wav_header(data_bytes=2**32 - 100)), 422, "empty-audio"),
    Case(
        "WAV with zero samples",
        lambda m: raw(encode_samples(np.zeros(0, np.float32), 16000, "WAV", "PCM_16")),
        422,
        "empty-audio",
    ),
    Case(
        "WAV with 65535 channels",
        lambda m: raw(wav_header(channels=65535, data_bytes=2**31) + bytes(1000)),
        400,
        "undecodable-audio",
    ),
    Case("WAV at 0 Hz", lambda m: raw(wav_header(rate=0, data_bytes=1000) + bytes(1000)), 400, "undecodable-audio"),
    Case("float WAV with NaN", lambda m: raw(with_value(m, np.nan)), 400, "undecodable-audio"),
    Case("float WAV with Inf", lambda m: raw(with_value(m, -np.inf)), 400, "undecodable-audio"),
    Case("float WAV with 1e30", lambda m: raw(with_value(m, 1e30)), 400, "undecodable-audio"),
    Case(
        "audio over the duration limit", lambda m: upload(noise_seconds(MAX_AUDIO_SECONDS + 1)), 422, "audio-too-long"
    ),
    Case(
        "JSON file part", lambda m: upload(b"{}" * 10_000, b"clip.json", b"application/json"), 400, "undecodable-audio"
    ),
    # Valid but odd: answered like any clip.
    Case("10 ms of audio", lambda m: raw(noise_seconds(0.01)), 200),
    Case("one sample", lambda m: raw(encode_samples(np.array([0.5], np.float32), 16000, "WAV", "PCM_16")), 200),
    Case("truncated WAV", lambda m: raw(m.clip()[: len(m.clip()) // 2 + 1]), 200),
    Case(
        "WAV header claiming 4 GB before real speech",
        lambda m: raw(wav_header(data_bytes=2**32 - 100) + m.clip()[44:]),
        200,
    ),
    Case("8-bit WAV", lambda m: raw(m.clip(subtype="PCM_U8")), 200),
    Case("24-bit WAV", lambda m: raw(m.clip(subtype="PCM_24")), 200),
    Case("32-bit float WAV", lambda m: raw(m.clip(subtype="FLOAT")), 200),
    Case("8 kHz", lambda m: raw(m.clip(rate=8000)), 200),
    Case("22.05 kHz", lambda m: raw(m.clip(rate=22050)), 200),
    Case("44.1 kHz", lambda m: raw(m.clip(rate=44100)), 200),
    Case("48 kHz", lambda m: raw(m.clip(rate=48000)), 200),
    Case("stereo", lambda m: raw(m.clip(channels=2)), 200),
    Case("6 channels", lambda m: raw(m.clip(channels=6)), 200),
    Case("pure silence", lambda m: raw(encode_samples(np.zeros(16000, np.float32), 16000, "WAV", "PCM_16")), 200),
    Case(
        "full-scale clipping",
        lambda m: raw(encode_samples(np.clip(m.samples * 50, -1, 1), m.rate, "WAV", "PCM_16")),
        200,
    ),
    Case("FLAC", lambda m: upload(m.clip("FLAC"), b"clip.flac", b"audio/flac"), 200),
    Case("OGG Vorbis", lambda m: upload(m.clip("OGG", "VORBIS"), b"clip.ogg", b"audio/ogg"), 200),
    Case("MP3", lambda m: upload(m.clip("MP3", "MPEG_LAYER_III"), b"clip.mp3", b"audio/mpeg"), 200),
    Case("FLAC labelled audio/wav", lambda m: raw(m.clip("FLAC"), "audio/wav"), 200),
    Case("WAV in a text/plain file part", lambda m: upload(m.clip(), b"clip.txt", b"text/plain"), 200),
    Case("file part without a content type", lambda m: upload(m.clip(), b"clip.wav", None), 200),
    Case("filename with ../", lambda m: upload(m.clip(), b"../../../../etc/passwd"), 200),
    Case("filename with NUL", lambda m: upload(m.clip(), b"clip\x00.wav"), 200),
    Case(
        "filename in UTF-8 with a right-to-left mark",
        lambda m: upload(m.clip(), "\u202evaw.\U0001f3a4.wav".encode()),
        200,
    ),
    # Browser and phone containers (PyAV): valid ones answered, broken or lying ones refused.
    Case(
        "WebM/Opus from a browser",
        lambda m: upload(container(m, "webm", "libopus", 48000), b"clip.webm", b"audio/webm"),
        200,
    ),
    Case("M4A/AAC from a phone", lambda m: raw(container(m, "ipod", "aac", 44100, "stereo"), "audio/mp4"), 200),
    Case(
        "WebM header only",
        lambda m: raw(container(m, "webm", "libopus", 48000)[:40], "audio/webm"),
        400,
        "undecodable-audio",
    ),
    Case(
        "MP4 header then garbage",
        lambda m: raw(container(m, "mp4", "aac", 16000)[:40] + np.random.default_rng(1).bytes(5000), "audio/mp4"),
        400,
        "undecodable-audio",
    ),
    Case(
        "WebM magic then random bytes",
        lambda m: raw(b"\x1a\x45\xdf\xa3" + np.random.default_rng(2).bytes(5000), "audio/webm"),
        400,
        "undecodable-audio",
    ),
    Case(
        "WebM claiming two hours",
        lambda m: raw(webm_claiming_hours(container(m, "webm", "libopus", 48000)), "audio/webm"),
        422,
        "audio-too-long",
    ),
    Case(
        "WebM over the duration limit",
        lambda m: raw(
            encode_container(np.zeros((MAX_AUDIO_SECONDS + 2) * 16000, np.float32), "webm", "libopus", 48000),
            "audio/webm",
        ),
        422,
        "audio-too-long",
    ),
    Case(
        "filename of 10,000 characters", lambda m: upload(m.clip(), b"x" * 10_000), 400, "malformed-multipart"
    ),  # a part header over python-multipart's 4 KiB
]


# --- the server ----------------------------------------------------------------------------


@dataclass
class Served:
    server: Server
    baseline: dict  # the answer to speech_wav before any hostile request


@pytest.fixture(scope="module")
def served(checkpoint_path, speech_wav, tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("hostile") / "server.log",
        QUADS_MODEL=str(checkpoint_path),
        QUADS_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        QUADS_MAX_AUDIO_SECONDS=str(MAX_AUDIO_SECONDS),
        QUADS_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
        QUADS_MAX_BATCH_SIZE="4",
        QUADS_MAX_WAIT_MS="2",
    )
    try:
        server.wait_ready()
        baseline = post(server, raw(speech_wav))
        assert baseline.status_code == 200, baseline.text
        yield Served(server, baseline.json())
    finally:
        server.stop()


@pytest.fixture(scope="module")
def material(speech) -> Material:
    return Material(*speech[PHRASES[0]])


def post(server: Server, request: Request) -> httpx.Response:
    body: bytes | Iterable[bytes] = request.body() if callable(request.body) else request.body
    headers = {"Content-Type": request.content_type} if request.content_type is not None else {}
    return httpx.post(f"{server.url}/intent", content=body, headers=headers, params={"top_k": len(LABELS)}, timeout=30)


def assert_model_answer(answer: dict, checkpoint, clip: bytes) -> None:
    """``answer`` is what the model says about ``clip`` run alone, outside the service."""
    expected = reference_probabilities(checkpoint, clip)
    order = expected.argsort(descending=True).tolist()
    assert [s["intent"] for s in answer["top_k"]] == [LABELS[i] for i in order]
    assert [s["confidence"] for s in answer["top_k"]] == pytest.approx(expected[order].tolist(), abs=1e-5)
    assert answer["intent"] == LABELS[order[0]]


# --- the corpus ----------------------------------------------------------------------------


def test_the_corpus_is_large_and_mixed():
    assert len(CORPUS) >= 25
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    assert {case.status for case in CORPUS} == {200, 400, 413, 415, 422}


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_corpus_request_gets_its_documented_answer(served, material, checkpoint, case):
    request = case.request(material)
    response = post(served.server, request)
    assert response.status_code == case.status, response.text[:500]
    if case.status == 200:
        assert response.headers["content-type"] == "application/json"
        assert_model_answer(response.json(), checkpoint, request.clip)
    else:
        assert_problem(response, case.status, case.slug)


# --- what only a raw socket sends ----------------------------------------------------------


def test_lying_content_length_never_lets_more_than_it_declared_in(served, material, checkpoint):
    """A Content-Length smaller than the body: the declared bytes are the body, whatever follows is
    refused as a malformed next request, and the limit is never passed."""
    declared = 4000
    clip = material.clip()
    payload = (
        b"POST /intent?top_k=6 HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: %d\r\n\r\n" % declared
        + clip
        + bytes(MAX_BODY_BYTES + 100_000)
    )
    responses = read_responses(exchange(served.server.port, payload))

    assert [status for status, _, _ in responses] == [200, 400]
    answer = json.loads(responses[0][2])
    assert answer["audio_seconds"] == pytest.approx((declared - 44) / 2 / 16000)
    assert_model_answer(answer, checkpoint, clip[:declared])
    assert_problem_bytes(responses[1], 400, "malformed-request")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /intent HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 20_000,  # and no end of the head
        b"POST /intent HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: twelve\r\n\r\n",
        b"POST /intent HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /intent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /intent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ],
    ids=[
        "not HTTP",
        "unterminated 20 KiB head",
        "non-numeric Content-Length",
        "two Content-Lengths",
        "unsupported transfer coding",
        "bad chunk size",
    ],
)
def test_malformed_http_gets_a_problem_400(served, request_bytes):
    responses = read_responses(exchange(served.server.port, request_bytes))
    assert len(responses) == 1
    assert_problem_bytes(responses[0], 400, "malformed-request")


@dataclass(frozen=True)
class SlowClient:
    """A client that sends ``head`` at once, then ``trickle`` a byte a second."""

    name: str
    head: bytes
    trickle: bytes
    answer: int | None  # the status it gets before the server closes, or None for a silent close
    slug: str | None = None


_HEAD = b"POST /intent HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 100000\r\n\r\n"
SLOW_CLIENTS = [
    SlowClient("body a byte a second", _HEAD % b"audio/wav", b"RIFF" + bytes(100), 408, "body-timeout"),
    SlowClient("head a byte a second", b"", _HEAD % b"audio/wav", 408, "head-timeout"),
    SlowClient("the rest of a refused body", _HEAD % b"text/plain", bytes(100), 415, "unsupported-media-type"),
    SlowClient("connected, silent", b"", b"", None),
]


def run_slow_client(port: int, client: SlowClient) -> tuple[bytes, float]:
    """(what the server answered, seconds until it closed the connection)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        sock.sendall(client.head)
        sock.settimeout(1.0)
        answer, sent = b"", 0
        while time.monotonic() - start < BODY_TIMEOUT_SECONDS + 3 * CUT_OFF_SLACK_SECONDS:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if sent < len(client.trickle):
                    try:
                        sock.send(client.trickle[sent : sent + 1])
                    except OSError:  # closed by the server; the next recv says so
                        pass
                    sent += 1
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - start


def test_slow_clients_are_cut_off_and_hold_nothing(served, speech_wav):
    port = served.server.port
    with ThreadPoolExecutor(len(SLOW_CLIENTS)) as pool:
        outcomes = pool.map(lambda client: run_slow_client(port, client), SLOW_CLIENTS)
        time.sleep(1.0)  # every slow client is connected and trickling
        start = time.monotonic()
        meanwhile = post(served.server, raw(speech_wav))
        meanwhile_seconds = time.monotonic() - start
        outcomes = list(outcomes)

    assert meanwhile.status_code == 200 and meanwhile_seconds < BODY_TIMEOUT_SECONDS  # not queued behind them
    for client, (answer, seconds) in zip(SLOW_CLIENTS, outcomes):
        assert BODY_TIMEOUT_SECONDS - 0.2 <= seconds <= BODY_TIMEOUT_SECONDS + CUT_OFF_SLACK_SECONDS, (
            client.name,
            seconds,
        )
        if client.answer is None:
            assert answer == b"", client.name
        else:
            (response,) = read_responses(answer)
            assert_problem_bytes(response, client.answer, client.slug)


# --- afterwards ----------------------------------------------------------------------------


def test_after_everything_the_service_answers_as_before(served, speech_wav, checkpoint):
    response = post(served.server, raw(speech_wav))
    assert response.status_code == 200
    answer = response.json()
    assert {k: answer[k] for k in ("intent", "confidence", "top_k", "audio_seconds", "model")} == {
        k: served.baseline[k] for k in ("intent", "confidence", "top_k", "audio_seconds", "model")
    }
    assert_model_answer(answer, checkpoint, speech_wav)

    assert served.server.process.poll() is None  # the same process, never restarted
    statuses = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(httpx.get(f"{served.server.url}/metrics").text)
        for sample in family.samples
        if sample.name == "quads_http_requests_total" and sample.labels["route"] == "/intent"
    }
    assert not [status for status in statuses if status.startswith("5")], statuses
    log = served.server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
