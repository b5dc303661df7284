"""What browsers and phones record: WebM/Opus and MP4/M4A (AAC), decoded through PyAV with the same limits as every format."""

import struct

import numpy as np
import pytest

from core.audio import (
    ACCEPTED_FORMATS,
    SAMPLE_RATE,
    AudioDecodeError,
    AudioTooLongError,
    decode_audio,
)
from tests.speech import encode_container, espeak_16k, requires_espeak

RECORDINGS = {  # name -> (container, codec, rate, layout)
    "browser WebM/Opus": ("webm", "libopus", 48000, "mono"),
    "phone M4A/AAC stereo": ("ipod", "aac", 44100, "stereo"),
    "MP4/AAC": ("mp4", "aac", 16000, "mono"),
}


def envelope(wave: np.ndarray, hop: int = 320) -> np.ndarray:
    n = wave.size // hop
    return np.sqrt(np.mean(wave[: n * hop].reshape(n, hop) ** 2, axis=1))


@pytest.fixture(scope="module")
def speech():
    return espeak_16k("turn on the lights")


@requires_espeak
@pytest.mark.parametrize("name", RECORDINGS)
def test_recordings_decode_to_the_speech_they_hold(speech, name):
    decoded = decode_audio(encode_container(speech, *RECORDINGS[name])).numpy()
    # Lossy codecs add a few ms of priming and padding, never seconds.
    assert abs(decoded.size - speech.size) / SAMPLE_RATE < 0.15
    a, b = envelope(speech), envelope(decoded)
    best = max(np.corrcoef(a[: a.size - 5], b[lag : lag + a.size - 5])[0, 1] for lag in range(0, 5))
    assert best > 0.95, best


@requires_espeak
@pytest.mark.parametrize("name", RECORDINGS)
def test_truncated_and_corrupted_containers_are_refused_with_the_formats(speech, name):
    data = encode_container(speech, *RECORDINGS[name])
    rng = np.random.default_rng(0)
    for cut in (8, 40, 200, len(data) // 3):
        try:
            decode_audio(data[:cut])  # a cut after the headers may still hold some audio
        except AudioDecodeError as e:
            assert str(e)
    garbage = data[:12] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    with pytest.raises(AudioDecodeError, match="could not decode the (WebM|MP4) audio"):
        decode_audio(garbage)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data[:12])
    assert ACCEPTED_FORMATS in str(info.value)


@requires_espeak
def test_a_webm_that_claims_hours_is_refused_before_decoding(speech):
    data = bytearray(encode_container(speech, "webm", "libopus", 48000))
    duration = data.index(b"\x44\x89\x88")  # Segment Info Duration: an 8-byte float, in ms
    struct.pack_into(">d", data, duration + 3, 2 * 3600 * 1000.0)
    with pytest.raises(AudioTooLongError, match=r"audio is 7200\.0 s long; the limit is 30 s"):
        decode_audio(bytes(data))


def test_a_long_recording_stops_at_the_limit():
    silence = np.zeros(40 * SAMPLE_RATE, np.float32)
    with pytest.raises(AudioTooLongError, match="the limit is 30 s"):
        decode_audio(encode_container(silence, "webm", "libopus", 48000))
    assert (
        decode_audio(encode_container(silence[: 5 * SAMPLE_RATE], "webm", "libopus", 48000), max_seconds=None).numel()
        > 0
    )
