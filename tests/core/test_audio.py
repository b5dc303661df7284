"""The front-end against openai-whisper's, and decoding of every format we accept."""

import math

import numpy as np
import pytest
import torch
import whisper.audio as ref

from core.audio import (
    N_FRAMES,
    AudioDecodeError,
    decode_audio,
    log_mel_spectrogram,
    pad_mels,
)
from tests.speech import encode, espeak_16k, requires_espeak


def reference_mel(audio: np.ndarray, n_mels: int) -> torch.Tensor:
    return ref.log_mel_spectrogram(ref.pad_or_trim(torch.from_numpy(audio)), n_mels=n_mels)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak_16k("turn on the lights in the kitchen")


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)


@requires_espeak
@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("signal", ["speech", "noise"])
def test_padded_log_mel_equals_openai_whisper(signal, n_mels, request):
    audio = request.getfixturevalue(signal)
    ours = log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels, pad_to_30s=True)
    theirs = reference_mel(audio, n_mels)
    assert ours.shape == theirs.shape == (n_mels, N_FRAMES)
    assert (ours - theirs).abs().max().item() < 1e-4


@requires_espeak
@pytest.mark.parametrize("signal", ["speech", "noise"])
def test_unpadded_log_mel_is_a_prefix_of_the_padded_one(signal, request):
    audio = request.getfixturevalue(signal)
    ours = log_mel_spectrogram(torch.from_numpy(audio))
    theirs = reference_mel(audio, 80)
    frames = len(audio) // 160
    assert ours.shape == (80, frames)
    # The last frame differs: ours reflect-pads the clip's end, Whisper's sees the zero padding.
    assert (ours[:, :-1] - theirs[:, : frames - 1]).abs().max().item() < 1e-4


def test_dynamic_range_floor_is_per_example(noise):
    loud, quiet = torch.from_numpy(noise), torch.from_numpy(noise) * 1e-3
    batch = log_mel_spectrogram(torch.stack([loud, quiet]))
    assert torch.allclose(batch[0], log_mel_spectrogram(loud), atol=1e-5)
    assert torch.allclose(batch[1], log_mel_spectrogram(quiet), atol=1e-5)


def test_pad_mels_zero_pads_and_reports_lengths():
    a, b = torch.ones(80, 7), torch.full((80, 3), 2.0)
    batch, lengths = pad_mels([a, b])
    assert batch.shape == (2, 80, 7) and lengths.tolist() == [7, 3]
    assert torch.equal(batch[1, :, :3], b) and batch[1, :, 3:].abs().sum() == 0


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        ("WAV", "PCM_U8"),
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "PCM_32"),
        ("WAV", "FLOAT"),
        ("WAV", "DOUBLE"),
        ("FLAC", None),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ],
)
def test_decodes_every_supported_format_to_16k_mono(fmt, subtype):
    sr = 22050
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = decode_audio(encode(tone, sr, fmt, subtype))
    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert abs(audio.numel() - 16000) <= 1200  # lossy codecs add encoder delay/padding
    # The tone survives: its spectrum peaks at 440 Hz.
    spectrum = torch.fft.rfft(audio[:16000] if audio.numel() >= 16000 else audio, n=16000).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 2


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_resamples_and_downmixes(sr, channels):
    wave = np.random.default_rng(1).uniform(-0.5, 0.5, (sr // 2, channels)).astype(np.float32)
    audio = decode_audio(encode(wave, sr, "WAV", "FLOAT"))
    assert audio.numel() == 8000
    if sr == 16000:
        assert torch.allclose(audio, torch.from_numpy(wave.mean(axis=1)), atol=1e-6)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"this is not audio at all" * 10, "could not decode"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "could not decode"),
    ],
)
def test_undecodable_input_raises_the_documented_error(data, reason):
    with pytest.raises(AudioDecodeError, match=reason):
        decode_audio(data)


def test_non_finite_and_over_long_and_empty_audio_are_refused():
    nan = np.zeros(1600, np.float32)
    nan[10] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN or infinite"):
        decode_audio(encode(nan, 16000, "WAV", "FLOAT"))
    with pytest.raises(AudioDecodeError, match="limit is 30 s"):
        decode_audio(encode(np.zeros(16000 * 31, np.float32), 16000, "WAV", "PCM_16"))
    assert decode_audio(encode(np.zeros(16000 * 31, np.float32), 16000, "WAV"), max_seconds=None).numel() == 16000 * 31
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))


@pytest.mark.parametrize("sr", [44101, 7919, 100_003])
def test_odd_sample_rates_resample_through_a_nearby_tractable_rate(sr):
    from core.audio import _tractable_rate

    rate = _tractable_rate(sr)  # an exact kernel for these rates would take minutes to build
    assert rate // math.gcd(rate, 16000) <= 1000 and abs(rate - sr) / sr < 0.001
    audio = decode_audio(encode(np.zeros((sr, 1), np.float32), sr, "WAV", "FLOAT"))
    assert abs(audio.numel() - 16000) <= 16


@pytest.mark.parametrize("sr", [1, 999, 400_000])
def test_absurd_sample_rates_are_refused(sr):
    with pytest.raises(AudioDecodeError, match="unsupported sample rate"):
        decode_audio(encode(np.zeros(64, np.float32), sr, "WAV", "FLOAT"))
