"""The low-delay resampler (models/resample.py): signal physics on tones, zero phase, alias rejection, streaming ==
batch bit for bit, exact lengths and the bounded look-ahead the live budget reports."""
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kkoma.models.resample import Resampler, resample
from kkoma.models.settings import load_settings

S = load_settings()
OUT = S.audio.sample_rate
RATES = [8000, 11025, 22050, 32000, 44100, 48000, 96000]


def sine(f, sr, seconds=1.0, phase=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return np.sin(2 * np.pi * f * t + phase).astype(np.float32)


@pytest.mark.parametrize("sr", [r for r in RATES if r != 8000])
@pytest.mark.parametrize("f", [55.0, 440.0, 1000.0, 4186.0])
def test_passband_tone_keeps_amplitude_and_phase(sr, f):
    """Zero phase and unit gain on the CQT's range (A0..C8): output sample n is the tone at time n / OUT."""
    if sr == 11025 and f > 3000:
        pytest.skip("an 11.025 kHz input is cut at 0.8 x its own Nyquist (4.4 kHz): C8 lies in the transition")
    y = resample(sine(f, sr), sr, OUT, S)
    n = np.arange(len(y))
    want = np.sin(2 * np.pi * f * n / OUT + 0.3)
    core = slice(100, len(y) - 100)  # away from the zero-padded ends
    assert np.abs(y[core] - want[core]).max() < 2e-3


def test_upsampling_from_8k_keeps_the_tone():
    y = resample(sine(1000.0, 8000), 8000, OUT, S)
    n = np.arange(len(y))
    assert np.abs(y[100:-100] - np.sin(2 * np.pi * 1000.0 * n / OUT + 0.3)[100:-100]).max() < 2e-3


@pytest.mark.parametrize("sr", [44100, 48000, 96000])
@pytest.mark.parametrize("f", [8200.0, 9000.0, 11700.0, 15000.0])
def test_tones_that_would_alias_are_rejected(sr, f):
    """Above the output Nyquist a tone folds down (15 kHz -> 1 kHz at 16 kHz): it must be at least 70 dB down."""
    y = resample(sine(f, sr), sr, OUT, S)[100:-100]
    rms_db = 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) / np.sqrt(0.5))
    assert rms_db < -70.0


@pytest.mark.parametrize("sr", RATES)
def test_length_and_impulse_position(sr):
    for n in (1, 2, 3, 159, 160, 441, 12345):
        assert len(resample(np.zeros(n, np.float32), sr, OUT, S)) == -(-n * OUT // sr)
    # An impulse at input sample i peaks at the output sample nearest its time.
    x = np.zeros(sr, np.float32)
    for i in (sr // 3, sr // 2 + 7):
        x[:] = 0
        x[i] = 1
        y = resample(x, sr, OUT, S)
        assert abs(int(np.argmax(y)) - i * OUT / sr) <= 0.5 + 1e-9


def test_passthrough_and_empty():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    r = Resampler(OUT, OUT, S)
    assert r.passthrough and r.lookahead_samples == 0
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().size == 0
    r = Resampler(48000, OUT, S)
    assert r.process(np.zeros(0, np.float32)).size == 0 and r.flush().size == 0


@hsettings(max_examples=25, deadline=None)
@given(sr=st.sampled_from(RATES), seed=st.integers(0, 2 ** 16), max_block=st.integers(1, 5000))
def test_streaming_equals_batch_bit_for_bit(sr, seed, max_block):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(rng.integers(1, 3 * sr // 2))).astype(np.float32)
    want = resample(x, sr, OUT, S)
    r = Resampler(sr, OUT, S)
    out, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, max_block + 1))
        out.append(r.process(x[i:i + k]))
        i += k
    out.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(out), want)
    r.reset()  # a reset resampler starts a new stream
    np.testing.assert_array_equal(np.concatenate([r.process(x), r.flush()]), want)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_lookahead_is_about_a_millisecond_and_exact(sr):
    """Every output sample is released as soon as the input it reads has arrived, and not before: after each block
    the outputs are exactly those whose time is at least ``lookahead_samples`` input samples in the past."""
    r = Resampler(sr, OUT, S)
    assert 0.5 < r.lookahead_ms < 1.5
    fed = out = 0
    for k in [1, 37, 441, 480, 3, 1000, 160] * 5:
        out += len(r.process(np.zeros(k, np.float32)))
        fed += k
        # output m is at input time m * sr / OUT; it needs input up to floor(that) + lookahead
        ready = [m for m in range(out + 3) if (m * sr) // OUT + r.lookahead_samples < fed]
        assert out == len(ready)
