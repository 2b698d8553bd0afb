"""Low-delay streaming resampler from any input rate to the model rate, shared by live input and file decoding.

Why our own: python-soxr's ``ResampleStream`` buffers its input in blocks, so a 48 kHz microphone fed in 10 ms
blocks waited up to 20 ms (LQ) or 37 ms (HQ) for its output, most of the live latency target. The features need
little of a general-purpose resampler: the CQT's top bin is ~4.3 kHz, so a windowed-sinc low-pass with a wide
transition band (passband to ~5 kHz, stopband from ~7.7 kHz at a 16 kHz output) is exact where it matters and short:
it looks ``lookahead_samples`` (~1 ms) into the future and no further.

Definition
----------
Output sample ``n`` is the band-limited input evaluated at input time ``tau_n = n * sr_in / sr_out`` [input
samples]: zero phase, so output sample ``n`` is at time ``n / sr_out`` exactly like the input's sample clock, and
timestamps never need a delay correction::

    y[n] = sum_k x[floor(tau_n) + k] * g(frac(tau_n) - k),    k = -K .. K
    g(u) = sinc(2 fc u / sr_in) * kaiser(u / (K + 1), beta),  normalised per phase to a DC gain of exactly 1

with ``fc = audio.resample_cutoff * min(sr_in, sr_out) / 2`` [Hz] and ``K`` the input samples spanned by
``audio.resample_zero_crossings`` zero crossings of the sinc. Samples before the start and after the end are
zeros. ``tau_n`` is a rational ``n * M / L`` (``L/M`` the reduced rate ratio), so the taps are a table of ``L``
phases and the computation is exact integer bookkeeping, the same in any block size (streaming == batch, bit for
bit).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numba as nb
import numpy as np

from kkoma.models.errors import KkomaError


@nb.njit(cache=True, nogil=True, fastmath=True)
def _polyphase(buffer, buffer_start, n0, count, L, M, K, taps, out):
    """out[i] = y[n0 + i] (module notes) for i < count; ``buffer[j - buffer_start]`` is input sample ``j``.

    The inner sum has the same trip count (2K + 1) for every output, so its vectorised order is the same in any
    block size: streaming == batch bit for bit (tested).
    """
    T = 2 * K + 1
    for i in range(count):
        pos = (n0 + i) * M
        row = taps[pos % L]
        s0 = pos // L - K - buffer_start
        acc = np.float32(0.0)
        for j in range(T):
            acc += buffer[s0 + j] * row[j]
        out[i] = acc


@lru_cache(maxsize=16)
def _table(sr_in: int, sr_out: int, cutoff: float, zero_crossings: int, beta: float):
    """(L, M, K, taps (L, 2K+1) float32): the polyphase table for one pair of rates (see the module notes)."""
    g = math.gcd(sr_in, sr_out)
    L, M = sr_out // g, sr_in // g
    fc = cutoff * 0.5 * min(sr_in, sr_out)          # [Hz]
    half = zero_crossings * sr_in / (2.0 * fc)      # window half-width [input samples]
    K = int(math.ceil(half))
    k = np.arange(-K, K + 1, dtype=np.float64)
    u = (np.arange(L, dtype=np.float64)[:, None] / L) - k[None, :]   # (L, 2K+1) [input samples]
    w = np.i0(beta * np.sqrt(np.clip(1.0 - (u / (K + 1)) ** 2, 0.0, None))) / np.i0(beta)
    taps = np.sinc(2.0 * fc * u / sr_in) * w
    taps /= taps.sum(axis=1, keepdims=True)
    return L, M, K, np.ascontiguousarray(taps, np.float32)


class Resampler:
    """Streaming resampler ``sr_in`` -> ``sr_out`` [Hz], mono float32, state carried across blocks.

    ``process(block (n,))`` returns every output sample whose input window has arrived (zero or more samples);
    ``flush()`` returns the rest (the input's end padded with zeros); ``reset()`` starts a new stream. A pass-through
    when the rates are equal.

    State: ``n_in`` input samples received, ``n_out`` output samples produced, ``buffer`` the input samples from
    index ``buffer_start`` on (the ones a future output can still read; zeros before the stream's start).

    Parameters
    ----------
    settings : ``audio.resample_cutoff``, ``audio.resample_zero_crossings``, ``audio.resample_kaiser_beta``.
    """

    def __init__(self, sr_in: int, sr_out: int, settings):
        self.sr_in, self.sr_out = int(sr_in), int(sr_out)
        if self.sr_in <= 0 or self.sr_out <= 0:
            raise KkomaError(f"the sample rate must be positive, not {min(self.sr_in, self.sr_out)} Hz.")
        a = settings.audio
        self.L, self.M, self.K, self.taps = _table(self.sr_in, self.sr_out, float(a.resample_cutoff),
                                                   int(a.resample_zero_crossings), float(a.resample_kaiser_beta))
        self.reset()

    @property
    def passthrough(self) -> bool:
        return self.sr_in == self.sr_out

    @property
    def lookahead_samples(self) -> int:
        """Input samples past an output sample's time that it reads [input samples] (0 for a pass-through)."""
        return 0 if self.passthrough else self.K

    @property
    def lookahead_ms(self) -> float:
        """The delay this resampler adds to a live stream [ms]: its look-ahead (no block buffering)."""
        return 1000.0 * self.lookahead_samples / self.sr_in

    def reset(self) -> None:
        self.n_in = 0
        self.n_out = 0
        self.buffer_start = -self.K
        self.buffer = np.zeros(self.K, np.float32)

    def _ready(self, available: int) -> int:
        """Output count once input samples ``< available`` exist: every n with floor(n M / L) + K < available."""
        # floor(n M / L) <= available - K - 1  <=>  n M < (available - K) L
        lim = (available - self.K) * self.L
        return max(0, -(-lim // self.M)) if lim > 0 else 0

    def _produce(self, n_end: int) -> np.ndarray:
        """Output samples ``n_out .. n_end - 1`` from the buffer (which holds every input they read)."""
        L, M, K = self.L, self.M, self.K
        count = n_end - self.n_out
        out = np.empty(max(0, count), np.float32)
        if count <= 0:
            return out
        _polyphase(self.buffer, self.buffer_start, self.n_out, count, L, M, K, self.taps, out)
        self.n_out = n_end
        # Keep only what the next output can read.
        keep_from = (self.n_out * M) // L - K
        drop = keep_from - self.buffer_start
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.buffer_start = keep_from
        return out

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next input samples ``(n,)`` -> the output samples now complete ``(m,)`` float32."""
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)
        if self.passthrough:
            return block
        self.buffer = np.concatenate([self.buffer, block])
        self.n_in += block.size
        return self._produce(self._ready(self.n_in))

    def flush(self) -> np.ndarray:
        """The remaining output samples (input end padded with zeros): ``ceil(n_in * sr_out / sr_in)`` in all."""
        if self.passthrough:
            return np.zeros(0, np.float32)
        total = -(-self.n_in * self.L // self.M)
        need = (((max(total, 1) - 1) * self.M) // self.L) + self.K + 1 - (self.buffer_start + self.buffer.size)
        if need > 0:
            self.buffer = np.concatenate([self.buffer, np.zeros(need, np.float32)])
        return self._produce(total) if total > self.n_out else np.zeros(0, np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int, settings) -> np.ndarray:
    """Resample a whole mono signal ``(n,)`` -> ``(ceil(n * sr_out / sr_in),)`` float32; the same samples as
    :class:`Resampler` in any block size."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    r = Resampler(sr_in, sr_out, settings)
    return np.concatenate([r.process(x), r.flush()])
