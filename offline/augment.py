"""Audio augmentation for training pieces: detune, room, microphone colour, noise, gain.

The chain follows the physical order a recording goes through (``augment_audio``): the piano slightly out of tune
(resampling, which also changes the tempo: the caller rescales the note times by the returned factor) -> a room
(convolution with a synthetic impulse response) -> the microphone's colour (random peaking + shelving EQ) -> noise
at a signal-to-noise ratio -> overall gain. Every random draw comes from the ``numpy.random.Generator`` passed in,
so a piece seeded by its id is augmented identically on every run (resumable preparation depends on it), and every
parameter drawn is returned so the manifest records what was done.

Ranges come from ``[augment]`` in config.toml. All functions take and return mono float32 ``(n,)`` arrays at
``sample_rate`` [Hz].
"""
from __future__ import annotations

import math

import numpy as np

from kkoma.models.errors import KkomaError

LN_1000 = math.log(1000.0)  # RT60: the time the energy falls by 60 dB = amplitude by 1000


# ----------------------------------------------------------------------------------------------------------------
# Room
# ----------------------------------------------------------------------------------------------------------------
def synthetic_ir(rt60: float, sample_rate: int, rng: np.random.Generator, n_early: int = 8) -> np.ndarray:
    """A synthetic room impulse response ``(n,)`` float32, ``n = 1.2 * rt60`` seconds (the tail below -60 dB is cut).

    Direct sound (1.0 at sample 0, so nothing is delayed and labels stay valid), ``n_early`` early reflections at
    random delays 3-50 ms with random signs and amplitudes falling with delay, and a diffuse tail of Gaussian noise
    under an exponential envelope whose amplitude falls by 60 dB in ``rt60`` seconds, faded in from 5 ms so the
    reflections come first. Early reflections + tail are scaled to the energy of the direct sound.
    """
    if rt60 <= 0:
        return np.ones(1, np.float32)
    n = max(2, int(1.2 * rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-LN_1000 * t / rt60)
    onset = 0.005
    tail *= np.clip(t / onset, 0.0, 1.0)
    early = np.zeros(n)
    for _ in range(n_early):
        d = rng.uniform(0.003, 0.05)
        i = min(n - 1, int(d * sample_rate))
        early[i] += rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.8) * math.exp(-LN_1000 * d / rt60)
    wet = tail + early * math.sqrt(np.sum(tail ** 2) / max(np.sum(early ** 2), 1e-12)) * 0.5
    wet[0] = 0.0
    wet /= math.sqrt(max(np.sum(wet ** 2), 1e-30))
    wet[0] = 1.0
    return wet.astype(np.float32)


def reverb(audio: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """Wet/dry mix ``(1 - wet) * audio + wet * (audio * ir_reverberant)``, same length as ``audio`` (the tail past
    the end is dropped). ``ir[0]`` is the direct sound and ``ir[1:]`` the reverberant part, of unit energy (see
    :func:`synthetic_ir`), so ``wet = 0.5`` puts as much energy in the reverberation as in the direct sound."""
    from scipy.signal import oaconvolve

    x = np.asarray(audio, np.float32)
    if not x.size or ir.size < 2:
        return x.copy()
    y = (1.0 - wet) * x.astype(np.float64)
    y[1:] += wet * oaconvolve(x.astype(np.float64), ir[1:].astype(np.float64))[: x.size - 1]
    return y.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Microphone colour
# ----------------------------------------------------------------------------------------------------------------
def _biquad(kind: str, f0: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """RBJ audio-EQ-cookbook biquad as one scipy ``sos`` row: kind = peak | lowshelf | highshelf."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * f0 / sample_rate
    cw, sw = math.cos(w0), math.sin(w0)
    alpha = sw / (2.0 * q)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cw, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cw, 1 - alpha / a]
    else:
        sa = 2.0 * math.sqrt(a) * alpha
        if kind == "lowshelf":
            b = [a * ((a + 1) - (a - 1) * cw + sa), 2 * a * ((a - 1) - (a + 1) * cw), a * ((a + 1) - (a - 1) * cw - sa)]
            den = [(a + 1) + (a - 1) * cw + sa, -2 * ((a - 1) + (a + 1) * cw), (a + 1) + (a - 1) * cw - sa]
        elif kind == "highshelf":
            b = [a * ((a + 1) + (a - 1) * cw + sa), -2 * a * ((a - 1) + (a + 1) * cw), a * ((a + 1) + (a - 1) * cw - sa)]
            den = [(a + 1) - (a - 1) * cw + sa, 2 * ((a - 1) - (a + 1) * cw), (a + 1) - (a - 1) * cw - sa]
        else:
            raise ValueError(f"unknown filter kind {kind!r}")
    return np.array([b[0] / den[0], b[1] / den[0], b[2] / den[0], 1.0, den[1] / den[0], den[2] / den[0]])


def random_eq_params(max_db: float, sample_rate: int, rng: np.random.Generator) -> list[dict]:
    """A random microphone colour: a low shelf (80-400 Hz), a peak (200 Hz - 0.35 sr, Q 0.5-2) and a high shelf
    (2 kHz - 0.4 sr), each with a gain uniform in ``[-max_db, max_db]`` [dB]."""
    nyq = sample_rate / 2.0
    return [
        {"kind": "lowshelf", "f0": float(rng.uniform(80.0, 400.0)), "gain_db": float(rng.uniform(-max_db, max_db)),
         "q": 0.707},
        {"kind": "peak", "f0": float(math.exp(rng.uniform(math.log(200.0), math.log(0.7 * nyq)))),
         "gain_db": float(rng.uniform(-max_db, max_db)), "q": float(rng.uniform(0.5, 2.0))},
        {"kind": "highshelf", "f0": float(rng.uniform(min(2000.0, 0.5 * nyq), 0.8 * nyq)),
         "gain_db": float(rng.uniform(-max_db, max_db)), "q": 0.707},
    ]


def equalize(audio: np.ndarray, bands: list[dict], sample_rate: int) -> np.ndarray:
    """Apply the biquads of ``bands`` (as :func:`random_eq_params` returns) in series."""
    from scipy.signal import sosfilt

    if not bands or not np.asarray(audio).size:
        return np.asarray(audio, np.float32).copy()
    sos = np.stack([_biquad(b["kind"], b["f0"], b["gain_db"], b["q"], sample_rate) for b in bands])
    return sosfilt(sos, np.asarray(audio, np.float64)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Noise, gain, detune
# ----------------------------------------------------------------------------------------------------------------
def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` float64 noise with a power spectrum ~ 1/f^k: white (k=0), pink (k=1), brown (k=2)."""
    k = {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    w = rng.standard_normal(n)
    if k == 0.0 or n < 4:
        return w
    spec = np.fft.rfft(w)
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = f[1]
    spec *= f ** (-k / 2.0)
    return np.fft.irfft(spec, n)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """``audio`` plus noise scaled so that mean signal power / mean noise power over the whole piece is exactly
    ``snr_db`` [dB]. Silent audio is returned unchanged (no SNR is defined)."""
    x = np.asarray(audio, np.float32)
    p_signal = float(np.mean(x.astype(np.float64) ** 2)) if x.size else 0.0
    if p_signal <= 0.0:
        return x.copy()
    noise = colored_noise(x.size, color, rng)
    noise *= math.sqrt(p_signal / (10.0 ** (snr_db / 10.0)) / float(np.mean(noise ** 2)))
    return (x + noise).astype(np.float32)


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """``audio * 10 ** (gain_db / 20)``."""
    return (np.asarray(audio, np.float32) * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


def detune(audio: np.ndarray, cents: float, sample_rate: int) -> tuple[np.ndarray, float]:
    """Raise the pitch by ``cents`` (negative lowers it) by resampling, as a tape played faster.

    Returns
    -------
    audio : ``(round(n / r),)`` float32 with ``r = 2 ** (cents / 1200)``.
    time_factor : ``1 / r``; an event at ``t`` seconds in the input is at ``t * time_factor`` in the output.
    """
    r = 2.0 ** (cents / 1200.0)
    if cents == 0.0:
        return np.asarray(audio, np.float32).copy(), 1.0
    import soxr

    y = soxr.resample(np.asarray(audio, np.float32), sample_rate * r, sample_rate, quality="HQ")
    return np.asarray(y, np.float32), 1.0 / r


# ----------------------------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------------------------
NOISE_COLORS = ("white", "pink", "brown")


def _uniform(rng: np.random.Generator, pair) -> float:
    lo, hi = float(pair[0]), float(pair[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def draw_params(settings, rng: np.random.Generator, stages=("detune", "reverb", "eq", "noise", "gain")) -> dict:
    """Random parameters for the chosen stages from ``settings.augment`` ranges (the dict stored in the manifest)."""
    a = settings.augment
    sr = settings.audio.sample_rate
    p: dict = {}
    if "detune" in stages:
        p["detune_cents"] = float(rng.uniform(-a.detune_cents, a.detune_cents))
    if "reverb" in stages:
        p["rt60_s"] = _uniform(rng, a.reverb_rt60_s)
        p["wet"] = _uniform(rng, a.reverb_wet)
        p["ir_seed"] = int(rng.integers(0, 2 ** 31))
    if "eq" in stages:
        p["eq"] = random_eq_params(a.eq_gain_db, sr, rng)
    if "noise" in stages:
        p["snr_db"] = _uniform(rng, a.snr_db)
        p["noise"] = NOISE_COLORS[int(rng.integers(0, len(NOISE_COLORS)))]
        p["noise_seed"] = int(rng.integers(0, 2 ** 31))
    if "gain" in stages:
        p["gain_db"] = _uniform(rng, a.gain_db)
    return p


def augment_audio(audio: np.ndarray, params: dict, sample_rate: int) -> tuple[np.ndarray, float]:
    """Apply the stages present in ``params`` (from :func:`draw_params`) in the physical order.

    Returns the augmented ``(n',)`` float32 audio and the time factor of the detune stage (1.0 without it): note
    times must be multiplied by it to match the output.
    """
    x = np.asarray(audio, np.float32)
    factor = 1.0
    if "detune_cents" in params:
        x, factor = detune(x, params["detune_cents"], sample_rate)
    if "rt60_s" in params:
        ir = synthetic_ir(params["rt60_s"], sample_rate, np.random.default_rng(params["ir_seed"]))
        x = reverb(x, ir, params["wet"])
    if "eq" in params:
        x = equalize(x, params["eq"], sample_rate)
    if "snr_db" in params:
        x = add_noise(x, params["snr_db"], np.random.default_rng(params["noise_seed"]), params["noise"])
    if "gain_db" in params:
        x = apply_gain(x, params["gain_db"])
    if x.size and not np.isfinite(x).all():
        raise KkomaError("augmentation produced non-finite samples (check the [augment] settings).")
    return x, factor
