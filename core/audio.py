"""Audio decoding and Whisper's log-mel front-end.

The log-mel recipe is openai-whisper's (``whisper/audio.py``), with two differences that
batching and short clips need: the ``max - 8`` dynamic-range floor is taken per example, not
over the whole batch, and clips are *not* padded to 30 s unless ``pad_to_30s=True``.
"""

from __future__ import annotations

import io
import math
import re
from functools import lru_cache

import numpy as np
import soundfile
import torch
import torchaudio
import torchaudio.functional as AF

from core.audio_containers import ContainerAudioError, container_kind, decode_container

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop
CHUNK_LENGTH = 30  # seconds: Whisper's fixed context
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30-second chunk
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


class AudioDecodeError(ValueError):
    """The bytes are not usable audio. ``str(err)`` is a reason a person can act on.

    Subclasses tell apart what a client can fix by sending other audio of the same kind:
    ``EmptyAudioError`` (no bytes or no samples) and ``AudioTooLongError`` (over the limit).
    """


class EmptyAudioError(AudioDecodeError):
    """No bytes, or well-formed audio with no samples."""


class AudioTooLongError(AudioDecodeError):
    """Longer than the ``max_seconds`` limit."""


ACCEPTED_FORMATS = "WAV, FLAC, OGG (Vorbis, Opus), MP3, WebM (Opus, Vorbis) or MP4/M4A (AAC)"


def decode_audio(data: bytes, max_seconds: float | None = CHUNK_LENGTH) -> torch.Tensor:
    """Decode audio bytes (``ACCEPTED_FORMATS``, any rate, any channel count) to mono float32 at 16 kHz.

    WebM and MP4 go through PyAV (``core.audio_containers``), the rest through libsndfile.
    Returns a 1-D tensor of samples. Raises ``AudioDecodeError`` for undecodable, empty,
    non-finite, absurdly loud (``> MAX_SAMPLE_MAGNITUDE``) or over-long (``> max_seconds``;
    ``None`` disables the check) input.
    """
    if not data:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    kind = container_kind(data)
    if kind is not None:
        try:
            wave, sample_rate = decode_container(data, kind, max_seconds)
        except ContainerAudioError as e:
            raise (AudioTooLongError if e.too_long else AudioDecodeError)(
                str(e) if e.too_long else f"{e}; send {ACCEPTED_FORMATS}"
            ) from None
        _check_rate(sample_rate)
    else:
        wave, sample_rate = _decode_with_soundfile(data, max_seconds)
    if wave.shape[0] == 0:
        raise EmptyAudioError("the audio holds no samples")
    if not np.isfinite(wave).all():
        raise AudioDecodeError("the audio holds NaN or infinite samples")
    if np.abs(wave).max() > MAX_SAMPLE_MAGNITUDE:
        # Float WAV/FLAC may hold any finite value, but the power spectrum of samples near 1e16
        # overflows float32 and the model would answer NaN.
        raise AudioDecodeError(
            f"the audio holds samples beyond ±{MAX_SAMPLE_MAGNITUDE:.0e}; float samples should lie within ±1"
        )
    mono = torch.from_numpy(wave.mean(axis=1, dtype=np.float32))
    if max_seconds is not None and mono.numel() / sample_rate > max_seconds:
        raise AudioTooLongError(f"audio is {mono.numel() / sample_rate:.1f} s long; the limit is {max_seconds:g} s")
    return resample(mono, sample_rate)


def _check_rate(sample_rate: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"unsupported sample rate {sample_rate} Hz; expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )


def _decode_with_soundfile(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, sample rate) of what libsndfile reads."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            sample_rate, channels, frames = f.samplerate, f.channels, f.frames
            if channels <= 0:
                raise AudioDecodeError(f"invalid header: {channels} channels")
            _check_rate(sample_rate)
            # Check the duration the header claims before reading, so that a header claiming
            # hours of audio is refused without allocating for it.
            if max_seconds is not None and 0 < frames < 2**62 and frames / sample_rate > max_seconds + 1:
                raise AudioTooLongError(f"audio is {frames / sample_rate:.1f} s long; the limit is {max_seconds:g} s")
            return f.read(dtype="float32", always_2d=True), sample_rate  # (frames, channels)
    except AudioDecodeError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        # libsndfile names the in-memory file object ("Error opening <_io.BytesIO ...>: "): drop that.
        reason = re.sub(r"Error opening <[^>]*>: ", "", str(e))
        raise AudioDecodeError(f"could not decode the audio ({reason}); send {ACCEPTED_FORMATS}") from None


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
MAX_SAMPLE_MAGNITUDE = 2.0**32  # above any integer PCM scale a float file might mistakenly use


def resample(audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Resample ``(..., samples)`` from ``sample_rate`` to 16 kHz (band-limited sinc, torchaudio)."""
    if sample_rate == SAMPLE_RATE:
        return audio
    return _resampler(_tractable_rate(sample_rate))(audio)


def _tractable_rate(sample_rate: int, max_ratio: int = 1000) -> int:
    """The rate to resample from. The sinc kernel grows with ``sample_rate / gcd(sample_rate, 16000)``:
    at an odd rate such as 44101 Hz it would take a minute, so such a rate is replaced by the
    nearest one with a small ratio (44100 Hz; the pitch error is a few hundredths of a percent)."""
    for delta in range(0, sample_rate // 50):
        for rate in (sample_rate - delta, sample_rate + delta):
            if rate // math.gcd(rate, SAMPLE_RATE) <= max_ratio:
                return rate
    return round(sample_rate / 100) * 100


@lru_cache(maxsize=16)
def _resampler(sample_rate: int) -> torchaudio.transforms.Resample:
    # The transform builds its kernel once; the functional form rebuilds it on every call.
    return torchaudio.transforms.Resample(sample_rate, SAMPLE_RATE)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int, device: str = "cpu") -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank of shape (n_mels, N_FFT // 2 + 1), as librosa's."""
    fb = AF.melscale_fbanks(
        n_freqs=N_FFT // 2 + 1,
        f_min=0.0,
        f_max=SAMPLE_RATE / 2,
        n_mels=n_mels,
        sample_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return fb.T.contiguous().to(device)


@lru_cache(maxsize=4)
def _hann_window(device: str) -> torch.Tensor:
    return torch.hann_window(N_FFT, device=device)


def pad_or_trim(audio: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pad or trim the last axis to ``length`` samples (Whisper's fixed 30-s input)."""
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - n))


def num_frames(num_samples: int) -> int:
    """Mel frames produced for a clip of ``num_samples`` (Whisper drops the STFT's last frame)."""
    return num_samples // HOP_LENGTH


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
    """Whisper's log-mel spectrogram.

    audio: (samples,) or (batch, samples) float waveform at 16 kHz.
    Returns (n_mels, frames) or (batch, n_mels, frames), frames = samples // 160
    (3000 with ``pad_to_30s``). The ``max - 8`` floor is per example.
    """
    if pad_to_30s:
        audio = pad_or_trim(audio)
    if audio.shape[-1] < N_FFT // 2 + 1:
        # Reflect padding needs more samples than half a window; zero-extend tiny clips.
        audio = torch.nn.functional.pad(audio, (0, N_FFT // 2 + 1 - audio.shape[-1]))
    device = str(audio.device)
    stft = torch.stft(audio.float(), N_FFT, HOP_LENGTH, window=_hann_window(device), return_complex=True)
    # |z|^2 as re^2 + im^2: Whisper's abs() ** 2 takes a square root only to square it again
    # (a quarter of the log-mel's time on a 3-s clip; the same values to float rounding).
    parts = torch.view_as_real(stft[..., :-1])
    power = parts[..., 0].square() + parts[..., 1].square()
    log_spec = (mel_filters(n_mels, device) @ power).clamp_(min=1e-10).log10_()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    return log_spec.maximum(peak - 8.0).add_(4.0).div_(4.0)


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (n_mels, T_i) log-mels into a zero-padded (B, n_mels, max T_i) batch plus (B,) lengths."""
    lengths = torch.tensor([m.shape[-1] for m in mels], dtype=torch.long)
    batch = mels[0].new_zeros(len(mels), mels[0].shape[0], int(lengths.max()))
    for i, m in enumerate(mels):
        batch[i, :, : m.shape[-1]] = m
    return batch, lengths
