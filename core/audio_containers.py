"""Audio in WebM/Matroska and MP4/M4A containers: what browsers (MediaRecorder: WebM/Opus) and
phones (M4A/AAC) record, decoded with PyAV, whose wheel carries its own FFmpeg libraries.

libsndfile (``soundfile``) keeps decoding what it reads (WAV, FLAC, OGG, MP3); this module takes
only the two container families it cannot, recognised by their first bytes. The limits are the
same: a duration the container claims beyond the limit is refused before decoding, and decoding
stops as soon as the samples pass it, so neither a lying header nor real hours of audio cost
more than the limit's worth of work.
"""

from __future__ import annotations

import io

import av
import numpy as np

WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # EBML header: Matroska and WebM
MP4_BRAND_OFFSET = slice(4, 8)  # an ISO base media file starts with a box of type "ftyp"


def container_kind(data: bytes) -> str | None:
    """ "WebM" or "MP4" when ``data`` starts like one of those containers, else None."""
    if data[:4] == WEBM_MAGIC:
        return "WebM"
    if data[MP4_BRAND_OFFSET] == b"ftyp":
        return "MP4"
    return None


class ContainerAudioError(ValueError):
    """The container could not be decoded; ``too_long`` when it holds more than the limit."""

    def __init__(self, message: str, too_long: bool = False):
        super().__init__(message)
        self.too_long = too_long


def decode_container(data: bytes, kind: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, sample rate) of the first audio stream in ``data``."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ContainerAudioError(f"the {kind} file holds no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            claimed = container.duration / av.time_base if container.duration else 0.0
            if max_seconds is not None and claimed > max_seconds + 1:
                raise ContainerAudioError(
                    f"audio is {claimed:.1f} s long; the limit is {max_seconds:g} s", too_long=True
                )
            return _decode_stream(container, stream, rate, max_seconds), rate
    except ContainerAudioError:
        raise
    except av.FFmpegError as e:
        raise ContainerAudioError(f"could not decode the {kind} audio ({e.strerror or e})") from None
    except (ValueError, TypeError, IndexError, OverflowError) as e:
        raise ContainerAudioError(f"could not decode the {kind} audio ({e})") from None


def _decode_stream(container, stream, rate: int, max_seconds: float | None) -> np.ndarray:
    # Planar float32 at the stream's own rate and channels: downmixing and resampling stay ours,
    # the same as for every other format.
    resampler = av.AudioResampler(format="fltp", rate=rate)
    limit = None if max_seconds is None else int((max_seconds + 1) * rate)
    chunks, total = [], 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunk = out.to_ndarray()  # (channels, samples)
            chunks.append(chunk)
            total += chunk.shape[1]
        if limit is not None and total > limit:
            raise ContainerAudioError(
                f"audio is over {max_seconds:g} s long; the limit is {max_seconds:g} s", too_long=True
            )
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((0, 1), np.float32)
    channels = max(c.shape[0] for c in chunks)
    return np.concatenate([c for c in chunks if c.shape[0] == channels], axis=1).T.astype(np.float32, copy=False)
