"""Augmentation physics (offline/augment.py): SNR achieved, reverb decay follows RT60, exact gain, EQ and detune."""
from __future__ import annotations

import numpy as np
import pytest

from kkoma.models.settings import load_settings
from kkoma.offline import augment as aug

SR = 16000


def _tone(seconds=1.0, f=440.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("color", aug.NOISE_COLORS)
@pytest.mark.parametrize("snr", [0.0, 15.0, 40.0])
def test_noise_snr_within_1db(color, snr):
    x = _tone()
    y = aug.add_noise(x, snr, np.random.default_rng(1), color)
    noise = y.astype(np.float64) - x
    got = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert abs(got - snr) < 1.0
    assert np.array_equal(aug.add_noise(np.zeros(100, np.float32), snr, np.random.default_rng(0)), np.zeros(100))


def test_gain_is_exact():
    x = _tone(0.1)
    for db in (-18.0, -6.0, 0.0, 3.5):
        np.testing.assert_allclose(aug.apply_gain(x, db), x * 10 ** (db / 20), rtol=1e-6)
    np.testing.assert_array_equal(aug.apply_gain(x, 0.0), x)


def _rt60(ir: np.ndarray, sr: int) -> float:
    """Schroeder backward integration, line fit from -5 to -25 dB, extrapolated to -60 dB (T20)."""
    edc = np.cumsum((ir.astype(np.float64) ** 2)[::-1])[::-1]
    db = 10 * np.log10(edc / edc[0])
    i5, i25 = np.argmax(db <= -5), np.argmax(db <= -25)
    slope = (db[i25] - db[i5]) / ((i25 - i5) / sr)
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.2, 0.5, 1.2])
def test_reverb_tail_length_follows_rt60(rt60):
    impulse = np.zeros(int(2 * rt60 * SR) + SR // 10, np.float32)
    impulse[0] = 1.0
    ir = aug.synthetic_ir(rt60, SR, np.random.default_rng(3))
    y = aug.reverb(impulse, ir, wet=1.0)  # wet=1: the reverberant part alone
    assert y[0] == 0.0
    assert _rt60(y, SR) == pytest.approx(rt60, rel=0.2)
    # the tail stops where the IR ends (1.2 RT60; FFT convolution leaves ~1e-18 there)
    assert np.max(np.abs(y[int(1.2 * rt60 * SR) + 1:])) < 1e-9


def test_reverb_keeps_the_direct_sound_in_place():
    x = np.zeros(SR, np.float32)
    x[1000] = 1.0
    ir = aug.synthetic_ir(0.5, SR, np.random.default_rng(0))
    y = aug.reverb(x, ir, wet=0.3)
    assert len(y) == len(x) and np.max(np.abs(y[:1000])) < 1e-9 and y[1000] == pytest.approx(0.7)
    assert np.sum(y[1001:] ** 2) == pytest.approx(0.3 ** 2, rel=0.05)  # unit-energy reverberant part, scaled by wet
    np.testing.assert_array_equal(aug.reverb(x, ir, wet=0.0), x)


def test_peaking_eq_gain_at_its_centre_frequency():
    f0 = 1000.0
    x = _tone(1.0, f0)
    for g in (-6.0, 6.0):
        y = aug.equalize(x, [{"kind": "peak", "f0": f0, "gain_db": g, "q": 1.0}], SR)
        got = 20 * np.log10(np.std(y[SR // 2:]) / np.std(x[SR // 2:]))
        assert got == pytest.approx(g, abs=0.3)
    flat = [{"kind": k, "f0": 500.0, "gain_db": 0.0, "q": 0.707} for k in ("lowshelf", "peak", "highshelf")]
    np.testing.assert_allclose(aug.equalize(x, flat, SR), x, atol=1e-5)


def test_detune_changes_pitch_and_reports_the_time_factor():
    x = _tone(1.0, 440.0)
    y, factor = aug.detune(x, 100.0, SR)
    r = 2 ** (100 / 1200)
    assert factor == pytest.approx(1 / r)
    assert len(y) == pytest.approx(len(x) / r, abs=2)
    spec = np.abs(np.fft.rfft(y[2000:14000] * np.hanning(12000), 1 << 18))
    f = np.argmax(spec) * SR / (1 << 18)
    assert f == pytest.approx(440 * r, abs=1.0)


def test_chain_is_deterministic_and_within_the_configured_ranges():
    s = load_settings()
    p1 = aug.draw_params(s, np.random.default_rng(7))
    p2 = aug.draw_params(s, np.random.default_rng(7))
    assert p1 == p2
    a = s.augment
    assert abs(p1["detune_cents"]) <= a.detune_cents
    assert a.reverb_rt60_s[0] <= p1["rt60_s"] <= a.reverb_rt60_s[1]
    assert a.snr_db[0] <= p1["snr_db"] <= a.snr_db[1] and a.gain_db[0] <= p1["gain_db"] <= a.gain_db[1]
    assert all(abs(b["gain_db"]) <= a.eq_gain_db for b in p1["eq"])
    x = _tone(0.5)
    y1, f1 = aug.augment_audio(x, p1, SR)
    y2, f2 = aug.augment_audio(x, p2, SR)
    np.testing.assert_array_equal(y1, y2)
    assert f1 == f2 and np.isfinite(y1).all()
    room = aug.draw_params(s, np.random.default_rng(7), stages=("reverb", "noise"))
    assert set(room) == {"rt60_s", "wet", "ir_seed", "snr_db", "noise", "noise_seed"}
    assert len(aug.augment_audio(x, room, SR)[0]) == len(x)
