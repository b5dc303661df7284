"""MelDataset against the service front-end on real espeak-ng audio: bad samples, collate,
augmentation determinism, the on-disk cache and the fingerprint."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

import training.features as features
from core.audio import (
    N_FRAMES,
    SAMPLE_RATE,
    decode_audio,
    log_mel_spectrogram,
    resample,
)
from training.datasets import Sample
from training.features import (
    BadSampleError,
    MelDataset,
    MelFeatures,
    collate,
)

LABELS = ["activate_lights_none", "deactivate_lights_none", "bring_juice_none"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The CPU is shared with other test runs; one thread is also the fastest for clips this short."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def speak(path: Path, text: str, voice: str = "en-us") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Sample]:
    """Three real clips of different lengths: 22.05 kHz WAV, 16 kHz FLAC, 16 kHz WAV."""
    folder = tmp_path_factory.mktemp("clips")
    wav = speak(folder / "on.wav", "turn on the lights")
    flac = folder / "off.flac"
    audio, rate = soundfile.read(speak(folder / "off-src.wav", "please switch off all the lights now", "en-gb"))
    soundfile.write(flac, resample(torch.from_numpy(audio).float(), rate).numpy(), SAMPLE_RATE)
    juice = folder / "juice.wav"
    audio, rate = soundfile.read(speak(folder / "juice-src.wav", "juice", "en-us+f3"))
    soundfile.write(juice, resample(torch.from_numpy(audio).float(), rate).numpy(), SAMPLE_RATE)
    return [
        Sample(wav, "activate_lights_none"),
        Sample(flac, "deactivate_lights_none"),
        Sample(juice, "bring_juice_none"),
    ]


def reference_mel(path: Path, **kw) -> torch.Tensor:
    """The service's front end on the file: what training must see (core.audio is itself tested
    against openai-whisper, and below a 16-kHz clip is compared with it directly)."""
    return log_mel_spectrogram(decode_audio(path.read_bytes()), **kw)


def test_items_are_the_service_log_mel_of_the_decoded_file(clips):
    ds = MelDataset(clips, LABELS, progress=False)
    assert len(ds) == 3 and ds.samples == clips and ds.skipped == []
    for i, sample in enumerate(clips):
        mel, label, index = ds[i]
        assert torch.equal(mel, reference_mel(sample.path))
        assert mel.dtype == torch.float32 and mel.shape[0] == 80
        assert (label, index) == (LABELS.index(sample.label), i)
    assert len({ds[i][0].shape[1] for i in range(3)}) == 3  # no padding to a common length


def test_n_mels_and_paper_faithful_30s_padding(clips):
    ds = MelDataset(clips[:1], LABELS, MelFeatures(n_mels=128, pad_to_30s=True), progress=False)
    mel = ds[0][0]
    assert mel.shape == (128, N_FRAMES)
    assert torch.equal(mel, reference_mel(clips[0].path, n_mels=128, pad_to_30s=True))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_a_16_khz_clip_s_items_equal_openai_whisper_s_log_mel(clips, n_mels):
    import whisper.audio

    juice = clips[2]  # written at 16 kHz: soundfile alone decodes it, no resampler in between
    audio, rate = soundfile.read(juice.path, dtype="float32")
    assert rate == SAMPLE_RATE
    theirs = whisper.audio.log_mel_spectrogram(whisper.audio.pad_or_trim(torch.from_numpy(audio)), n_mels)
    padded = MelDataset([juice], LABELS, MelFeatures(n_mels=n_mels, pad_to_30s=True), progress=False)[0][0]
    assert (padded - theirs).abs().max() < 1e-4
    # At its real length: the same frames but the last (ours reflect-pads the end, Whisper's sees zeros).
    real = MelDataset([juice], LABELS, MelFeatures(n_mels=n_mels), progress=False)[0][0]
    frames = audio.size // 160
    assert real.shape == (n_mels, frames) and (real[:, :-1] - theirs[:, : frames - 1]).abs().max() < 1e-4


@pytest.fixture
def bad_samples(tmp_path) -> list[Sample]:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    text = tmp_path / "notes.flac"
    text.write_text("this is not audio")
    return [
        Sample(tmp_path / "missing.wav", "activate_lights_none"),
        Sample(garbage, "activate_lights_none"),
        Sample(text, "bring_juice_none"),
    ]


def test_bad_samples_are_skipped_and_reported_with_path_and_reason(clips, bad_samples, caplog):
    unknown = Sample(clips[0].path, "make_coffee_none")
    mixed = [clips[0], bad_samples[0], clips[1], bad_samples[1], unknown, bad_samples[2], clips[2]]
    with caplog.at_level(logging.WARNING, logger="training.features"):
        ds = MelDataset(mixed, LABELS, progress=False)
    assert ds.samples == clips
    reasons = dict(ds.skipped)
    assert set(reasons) == {bad_samples[0].path, bad_samples[1].path, clips[0].path, bad_samples[2].path}
    assert reasons[bad_samples[0].path] == "file not found"
    assert "could not decode the audio" in reasons[bad_samples[1].path]
    assert "could not decode the audio" in reasons[bad_samples[2].path]
    assert "'make_coffee_none' is not one of the 3 labels" in reasons[clips[0].path]
    for path in reasons:
        assert str(path) in caplog.text
    assert "skipped 4 of 7 samples" in caplog.text
    # The kept items still line up with their labels.
    assert [ds[i][1] for i in range(len(ds))] == [0, 1, 2]
    assert torch.equal(ds[1][0], reference_mel(clips[1].path))


@pytest.mark.parametrize("which, reason", [(0, "file not found"), (1, "could not decode"), (2, "could not decode")])
def test_on_error_raise_fails_fast_naming_the_path(clips, bad_samples, which, reason):
    bad = bad_samples[which]
    with pytest.raises(BadSampleError, match=reason) as err:
        MelDataset([clips[0], bad], LABELS, on_error="raise", progress=False)
    assert err.value.path == bad.path and str(bad.path) in str(err.value)


def test_unknown_label_raises_with_on_error_raise(clips):
    with pytest.raises(BadSampleError, match=r"juice\.wav: label 'coffee' is not one of the 2 labels"):
        MelDataset([clips[0], Sample(clips[2].path, "coffee")], LABELS[:2], on_error="raise", progress=False)


def test_too_long_audio_is_a_bad_sample(clips):
    ds = MelDataset(clips, LABELS, MelFeatures(max_seconds=1.0), progress=False)
    assert ds.samples == [clips[2]]  # only "juice" is under a second
    assert all("the limit is 1 s" in reason for _, reason in ds.skipped)


def test_no_usable_sample_at_all_is_an_error(bad_samples):
    with pytest.raises(BadSampleError, match="none of the 3 samples is usable"):
        MelDataset(bad_samples, LABELS, progress=False)
    with pytest.raises(ValueError, match="on_error must be one of"):
        MelDataset(bad_samples, LABELS, on_error="ignore", progress=False)


def test_collate_pads_with_zeros_and_returns_lengths(clips):
    ds = MelDataset(clips, LABELS, progress=False)
    lengths = [ds[i][0].shape[1] for i in range(3)]
    mels, lens, labels, indices = collate([ds[2], ds[0], ds[1]])
    assert mels.shape == (3, 80, max(lengths))
    assert lens.tolist() == [lengths[2], lengths[0], lengths[1]]
    assert labels.tolist() == [2, 0, 1] and indices.tolist() == [2, 0, 1]
    for row, i in enumerate([2, 0, 1]):
        assert torch.equal(mels[row, :, : lengths[i]], ds[i][0])
        assert torch.count_nonzero(mels[row, :, lengths[i] :]) == 0

    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert batches[1][3].tolist() == [2]


def test_augmentation_is_deterministic_per_seed_and_epoch(clips):
    ds = MelDataset(clips, LABELS, augment_seed=7, progress=False)
    twin = MelDataset(clips, LABELS, augment_seed=7, progress=False)
    other_seed = MelDataset(clips, LABELS, augment_seed=8, progress=False)

    def epoch_items(dataset, epoch):
        dataset.set_epoch(epoch)
        return [dataset[i][0] for i in range(len(dataset))]

    first = epoch_items(ds, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_items(twin, 0)))
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_items(ds, 0)))  # re-reading the epoch
    second = epoch_items(ds, 1)
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, epoch_items(other_seed, 0)))

    # Augmented items differ from the clean log-mel but stay the same kind of tensor, and the
    # labels and indices are untouched.
    for i, mel in enumerate(first):
        clean = reference_mel(clips[i].path)
        assert mel.shape[0] == 80 and abs(mel.shape[1] - clean.shape[1]) <= 0.12 * clean.shape[1]
        assert mel.shape != clean.shape or not torch.equal(mel, clean)
        assert torch.isfinite(mel).all()
        assert ds[i][1:] == (i, i)


def test_cache_hit_skips_decoding(clips, bad_samples, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    samples = clips + [bad_samples[1]]
    first = MelDataset(samples, LABELS, cache_dir=cache, progress=False)
    assert len(list(cache.glob("mel-*.safetensors"))) == 1

    calls = []
    monkeypatch.setattr(features, "decode_audio", lambda *a, **k: calls.append(a) or decode_audio(*a, **k))
    second = MelDataset(samples, LABELS, cache_dir=cache, progress=False)
    assert calls == []
    assert second.samples == first.samples and second.skipped == first.skipped
    assert all(torch.equal(second[i][0], first[i][0]) for i in range(len(first)))
    assert second.fingerprint() == first.fingerprint()

    # The waveform cache used for augmentation is separate, and also reused.
    MelDataset(clips, LABELS, augment_seed=0, cache_dir=cache, progress=False)
    assert len(calls) == 3
    MelDataset(clips, LABELS, augment_seed=0, cache_dir=cache, progress=False)
    assert len(calls) == 3

    # A different front-end setting is a different cache entry.
    MelDataset(clips, LABELS, MelFeatures(n_mels=128), cache_dir=cache, progress=False)
    assert len(calls) == 6


def test_cache_is_invalidated_by_a_changed_file_and_survives_corruption(clips, tmp_path, monkeypatch):
    folder = tmp_path / "audio"
    folder.mkdir()
    samples = [Sample(folder / s.path.name, s.label) for s in clips]
    for src, dst in zip(clips, samples):
        dst.path.write_bytes(src.path.read_bytes())
    cache = tmp_path / "cache"
    MelDataset(samples, LABELS, cache_dir=cache, progress=False)

    calls = []
    monkeypatch.setattr(features, "decode_audio", lambda *a, **k: calls.append(a) or decode_audio(*a, **k))
    speak(samples[0].path, "turn on every light in the house")  # new content, size and mtime
    ds = MelDataset(samples, LABELS, cache_dir=cache, progress=False)
    assert len(calls) == 3
    assert torch.equal(ds[0][0], reference_mel(samples[0].path))

    for entry in cache.glob("*.safetensors"):
        entry.write_bytes(b"\x00" * 64)  # a torn or foreign file is ignored and rebuilt
    ds = MelDataset(samples, LABELS, cache_dir=cache, progress=False)
    assert len(calls) == 6 and torch.equal(ds[0][0], reference_mel(samples[0].path))


def test_on_error_raise_applies_to_failures_remembered_by_the_cache(clips, bad_samples, tmp_path):
    cache = tmp_path / "cache"
    MelDataset([clips[0], bad_samples[1]], LABELS, cache_dir=cache, progress=False)
    with pytest.raises(BadSampleError, match="garbage.wav: could not decode"):
        MelDataset([clips[0], bad_samples[1]], LABELS, cache_dir=cache, on_error="raise", progress=False)


def test_fingerprint_tracks_files_labels_and_settings(clips, tmp_path):
    base = MelDataset(clips, LABELS, progress=False).fingerprint()
    assert len(base) == 64
    assert MelDataset(clips, LABELS, progress=False).fingerprint() == base
    assert MelDataset(clips[:2], LABELS, progress=False).fingerprint() != base
    relabelled = [clips[0], clips[1], Sample(clips[2].path, "activate_lights_none")]
    assert MelDataset(relabelled, LABELS, progress=False).fingerprint() != base
    assert MelDataset(clips, LABELS, MelFeatures(n_mels=128), progress=False).fingerprint() != base
    assert MelDataset(clips, LABELS, MelFeatures(pad_to_30s=True), progress=False).fingerprint() != base

    copy = tmp_path / clips[0].path.name
    copy.write_bytes(clips[0].path.read_bytes())
    moved = [Sample(copy, clips[0].label), *clips[1:]]
    fingerprint = MelDataset(moved, LABELS, progress=False).fingerprint()
    assert fingerprint != base
    os.utime(copy, ns=(0, 0))  # same bytes, different mtime: the teacher cache must not trust it
    assert MelDataset(moved, LABELS, progress=False).fingerprint() != fingerprint


def test_the_teacher_s_clean_view_reuses_the_decoded_audio(clips, monkeypatch):
    augmenting = MelDataset(clips, LABELS, augment_seed=3, progress=False)
    plain = MelDataset(clips, LABELS, MelFeatures(n_mels=128), progress=False)
    calls = []
    monkeypatch.setattr(features, "decode_audio", lambda *a, **k: calls.append(a) or decode_audio(*a, **k))
    view = augmenting.clean_view(128, progress=False)
    assert calls == [] and not view.augment and augmenting.augment  # the original is untouched
    for i in range(len(clips)):
        assert torch.equal(view[i][0], plain[i][0]) and view[i][1:] == plain[i][1:]
    assert plain.clean_view(128) is plain
    assert plain.clean_view(80, progress=False)[0][0].shape[0] == 80 and len(calls) == len(
        clips
    )  # mels held: decoded again
