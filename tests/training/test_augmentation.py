"""training.augmentation: noise colours and levels, the SNR of a mix, SpecAugment's masks, background talkers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augmentation import (
    MAX_TIME_MASK_FRAMES,
    active_rms,
    add_background_talkers,
    colored_noise,
    mix_at_snr,
    overlay_talkers,
    spec_augment,
)


def test_noise_is_mixed_at_the_requested_snr():
    rng = np.random.default_rng(0)
    signal = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    for color in ("white", "pink", "brown"):
        noise = colored_noise(rng, 16000, color)
        assert noise.dtype == np.float32 and abs(np.sqrt(np.mean(noise**2)) - 1) < 1e-4
        mixed = mix_at_snr(signal, noise, snr_db=10.0)
        residual = mixed - signal
        snr = 10 * np.log10(np.mean(signal**2) / np.mean(residual**2))
        assert snr == pytest.approx(10.0, abs=0.01)
    # Pink and brown noise put more of their power at low frequencies than white noise.
    low_share = {}
    for color in ("white", "pink", "brown"):
        spectrum = np.abs(np.fft.rfft(colored_noise(np.random.default_rng(1), 16000, color))) ** 2
        low_share[color] = spectrum[:400].sum() / spectrum.sum()
    assert low_share["white"] < low_share["pink"] < low_share["brown"]


def test_noise_level_is_set_against_the_speech_not_the_silence_around_it():
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(np.arange(16000) * 0.07)).astype(np.float32)  # 1 s of "speech" in 3 s
    clip = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(16000, np.float32)])
    assert active_rms(clip) == pytest.approx(float(np.sqrt(np.mean(speech**2))), rel=0.02)
    noise = colored_noise(rng, clip.size, "white")
    mixed = mix_at_snr(clip, noise, snr_db=10.0, signal_rms=active_rms(clip))
    added = mixed - clip
    snr = 20 * np.log10(np.sqrt(np.mean(speech**2)) / np.sqrt(np.mean(added[16000:32000] ** 2)))
    assert snr == pytest.approx(10.0, abs=0.3)


def test_spec_augment_never_masks_a_whole_word():
    mel = torch.arange(80 * 300, dtype=torch.float32).reshape(80, 300) / 1000  # no column equals the fill
    longest = 0
    for seed in range(200):
        masked = (spec_augment(mel, np.random.default_rng(seed)) != mel).all(dim=0)  # whole columns masked
        run = 0
        for m in masked.tolist():
            run = run + 1 if m else 0
            longest = max(longest, run)
    assert 0 < longest <= 2 * MAX_TIME_MASK_FRAMES  # two masks may touch; a word lasts >= 150 ms
    assert MAX_TIME_MASK_FRAMES * 10 <= 80  # ms


def test_overlay_talkers_places_each_voice_at_unit_rms_within_6_db():
    # Two constant voices: RMS 2 and 0.5, so at unit RMS each sample is exactly 1; a 4-sample window.
    voices = [np.full(4, 2.0), np.full(2, -0.5)]
    rng = np.random.default_rng(3)
    mix = overlay_talkers(voices, rng, 4)
    draws = np.random.default_rng(3)  # the same draws, replayed by hand: offset, then level, per voice
    expected = np.zeros(4)
    for sign, size in ((1.0, 4), (-1.0, 2)):
        start = int(draws.integers(-size // 2, 4))
        gain = 10 ** (draws.uniform(-6, 0) / 20)
        for t in range(max(start, 0), min(start + size, 4)):
            expected[t] += sign * gain
    np.testing.assert_allclose(mix, expected)
    assert np.any(mix != 0)


def test_background_babble_is_never_louder_than_the_clip_s_speech():
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((0.2 * np.sin(np.arange(16000) * 0.05)).astype(np.float32))
    clips = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in (8000, 16000, 24000)]
    mixed = 0
    for seed in range(40):
        out = add_background_talkers(wave, [*clips, None], np.random.default_rng(seed))
        assert out.shape == wave.shape
        if not torch.equal(out, wave):
            mixed += 1
            # What was added is at least 0 dB below the clip's speech level (the SNR range starts at 0).
            added = (out - wave).numpy().astype(np.float64)
            assert np.sqrt(np.mean(added**2)) <= active_rms(wave.numpy()) * 1.001
    assert 0.2 * 40 <= mixed <= 0.6 * 40  # BACKGROUND_TALKER_SHARE of the items, 0.4
