"""One constant-Q transform, two drivers: :meth:`CQT.transform` for whole signals and :class:`IncrementalCQT` for
audio arriving in blocks of any size. Both call the same Numba kernels on the same kernel bank, so they give the
same frames.

How it works (multirate, time domain)
-------------------------------------
The signal is low-passed and decimated by 2 once per level (a linear-phase FIR of ``cqt.decimation_taps`` taps), and
each bin is computed at the lowest rate whose usable band still holds it (centre frequency ≤ 0.3 × that rate), so
every filter is between ~170 and ~350 samples long at its own rate instead of up to 30,000 at 16 kHz. Kernels are
librosa's (Hann window, length ``filter_scale · Q · sr / f`` with ``Q = 1 / (2^(2/bpo) - 1) · (2^(2/bpo) + 1)``,
L1-normalised) and magnitudes carry librosa's ``scale=True`` normalisation, so a centred configuration agrees with
``librosa.cqt`` (see ``tests/test_cqt.py`` for the measured tolerance).

Window alignment and look-ahead
-------------------------------
Frame ``i`` belongs to time ``t_i = i · hop`` [samples]. Each window is centred on ``t_i`` but never reads audio at or
after ``t_i + L``, where ``L`` is ``cqt.lookahead_ms`` (windows that would are shifted back so they end there).
``L = 0`` is causal: every frame uses only past samples, which is what live needs, since a centred A0 window needs
~0.95 s of future audio. ``L = inf`` is fully centred (offline / librosa-compatible). The decimation filters delay
each level by ``(taps - 1) / 2 · (2^g - 1)`` samples; centred windows compensate it, capped windows cannot and sit
that much earlier (≤ 60 ms for the lowest bins, whose windows last up to 1.9 s). :attr:`CQT.lookahead_samples` is
the exact amount of future audio any frame reads; the incremental driver emits frame ``i`` as soon as
``t_i + lookahead_samples`` samples have arrived.

Window length cap
-----------------
A constant-Q window lasts ``Q / f``: 1.9 s at A0, 0.47 s at A2, 0.2 s at C4. A causal window ends at its frame, and
its Hann taper gives the newest audio almost no weight, so a new note reaches half its level only about half a window
later: far too late for the model's few frames of look-ahead in the bass. ``cqt.max_window_ms`` shortens every window
longer than it to that length (same centre frequency, wider band), so the bass answers as fast as the middle of the
keyboard, at the cost of frequency resolution there (the harmonics, resolved in higher bins, still carry the pitch).
``inf`` keeps the plain constant-Q transform (and librosa compatibility).

Frames: a signal of ``n`` samples gives ``n // hop + 1`` frames (none for an empty signal), audio outside the signal
being zeros. Features (the model input) are ``log1p(|C| / cqt.log_offset)``.

Bad input: non-finite samples raise :class:`~models.errors.KkomaError` in :meth:`CQT.transform`; the incremental
driver, which must never stop a live stream, replaces them with zeros and counts them in ``nonfinite_samples``.
Input must be mono at ``audio.sample_rate`` (use :mod:`models.audio` to mix and resample; :meth:`CQT.transform` does
it for you when given ``sample_rate=``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

from kkoma.models.errors import KkomaError
from kkoma.models.settings import AudioSettings, CQTSettings, Settings

# A bin is computed at rate R only when its centre frequency is at most this fraction of R: the decimation FIR's
# passband edge. 0.3 leaves the FIR (cutoff 0.25 of the input rate, i.e. the new Nyquist / 2 ... new Nyquist) a
# transition band from 0.15 to 0.35 of the input rate, which 31 Kaiser taps stop by > 80 dB.
_MAX_REL_FREQ = 0.3
_FIR_CUTOFF = 0.25  # of the input rate
_FIR_BETA = 8.0     # Kaiser window beta
_NO_CAP = 1 << 50   # "infinite" look-ahead in samples, safe in int64 arithmetic


# ----------------------------------------------------------------------------------------------------------------
# Numba kernels (private). All index arithmetic is in int64; audio and kernels are float32, sums in float32.
# ----------------------------------------------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True)
def _fir_decimate(src, src_base, n_src, fir, dst, dst_base, j_from, j_to):
    """dst[j - dst_base] = sum_m fir[m] * src[2j - m - src_base] for j in [j_from, j_to); src beyond its range = 0."""
    taps = fir.shape[0]
    for j in range(j_from, j_to):
        acc = np.float32(0.0)
        n = 2 * j
        for m in range(taps):
            k = n - m - src_base
            if 0 <= k < n_src:
                acc += fir[m] * src[k]
        dst[j - dst_base] = acc


@nb.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _dot2(kr, ki, w, n):
    """(sum kr*w, sum ki*w) over n samples: contiguous 1-D slices so LLVM vectorises it."""
    re = np.float32(0.0)
    im = np.float32(0.0)
    for m in range(n):
        v = w[m]
        re += kr[m] * v
        im += ki[m] * v
    return re, im


@nb.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _bin(buf, nb_, base, k, q, n, d, end_add, end_num, cap_off, t, kre, kim, scale, log_offset, do_log):
    """|C| (or its log feature) of bin k at frame time t [samples], from its level's buffer.

    The window ends at j_end = min((t + end_add) // d + end_num, (t + cap_off) // d); samples outside the buffer
    (before the signal) are zeros.
    """
    j_end = (t + end_add) // d + end_num
    j_cap = (t + cap_off) // d
    if j_cap < j_end:
        j_end = j_cap
    start = j_end - n + 1 - base
    if start >= 0 and start + n <= nb_:
        re, im = _dot2(kre[q], kim[q], buf[start:start + n], n)
    else:
        re = np.float32(0.0)
        im = np.float32(0.0)
        for m in range(n):
            idx = start + m
            if 0 <= idx < nb_:
                v = buf[idx]
                re += kre[q, m] * v
                im += kim[q, m] * v
    mag = math.sqrt(re * re + im * im) * scale[k]
    if do_log:
        mag = math.log1p(mag / log_offset)
    return mag


@nb.njit(cache=True, nogil=True, fastmath=True)
def _frame(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale, end_num,
           end_den, end_add, cap_off, t, out, log_offset, do_log):
    """One frame at time t [samples]: every bin's kernel dotted with the window of its level's samples.

    flat[lev_off[g]:lev_off[g + 1]] holds level g's samples from absolute index levels_base[g]; bins
    level_lo[g]..level_hi[g]-1 live there.
    """
    for g in range(level_lo.shape[0]):
        buf = flat[lev_off[g]:lev_off[g + 1]]
        nb_ = levels_len[g]
        base = levels_base[g]
        for k in range(level_lo[g], level_hi[g]):
            out[k] = _bin(buf, nb_, base, k, bin_kernel[k], bin_len[k], end_den[k], end_add[k], end_num[k], cap_off,
                          t, kre, kim, scale, log_offset, do_log)


@nb.njit(cache=True, nogil=True, fastmath=True)
def _frames_range(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale,
                  end_num, end_den, end_add, cap_off, hop, i_from, i_to, out, out_row0, log_offset, do_log):
    """Frames i_from..i_to-1 into out[i - out_row0], bins outside frames so each kernel stays in L1 cache; same
    arithmetic as _frame."""
    for g in range(level_lo.shape[0]):
        buf = flat[lev_off[g]:lev_off[g + 1]]
        nb_ = levels_len[g]
        base = levels_base[g]
        for k in range(level_lo[g], level_hi[g]):
            for i in range(i_from, i_to):
                out[i - out_row0, k] = _bin(buf, nb_, base, k, bin_kernel[k], bin_len[k], end_den[k], end_add[k], end_num[k],
                                 cap_off, i * hop, kre, kim, scale, log_offset, do_log)


@nb.njit(cache=True, parallel=True)
def _frames_batch(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale,
                  end_num, end_den, end_add, cap_off, hop, n_frames, out, log_offset, do_log):
    block = 64
    n_blocks = (n_frames + block - 1) // block
    for b in nb.prange(n_blocks):
        i_to = min((b + 1) * block, n_frames)
        _frames_range(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale,
                      end_num, end_den, end_add, cap_off, hop, b * block, i_to, out, 0, log_offset, do_log)


# ----------------------------------------------------------------------------------------------------------------
# Kernel bank
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelBank:
    """Everything the kernels need, built once per settings. Per-bin arrays have shape ``(n_bins,)``."""
    sample_rate: int
    hop: int
    n_levels: int
    fir: np.ndarray          # (taps,) float32 decimation low-pass
    freqs: np.ndarray        # (n_bins,) centre frequencies [Hz]
    bin_level: np.ndarray    # (n_bins,) int64 decimation level g (rate sample_rate / 2**g)
    level_lo: np.ndarray     # (n_levels,) int64 first bin of each level (bins of a level are contiguous)
    level_hi: np.ndarray     # (n_levels,) int64 one past its last bin
    bin_len: np.ndarray      # (n_bins,) int64 kernel length [samples at its level]
    bin_kernel: np.ndarray   # (n_bins,) int64 row of the bin's kernel in kre/kim
    kre: np.ndarray          # (n_kernels, max_len) float32 real part (zero-padded)
    kim: np.ndarray          # (n_kernels, max_len) float32 imaginary part
    scale: np.ndarray        # (n_bins,) float32 output scale (librosa scale=True)
    end_num: np.ndarray      # (n_bins,) int64 } window end index at level g for frame time t:
    end_den: np.ndarray      # (n_bins,) int64 }   (t + end_add) // end_den + end_num, capped at (t + cap_off) // den
    end_add: np.ndarray      # (n_bins,) int64 }
    cap_off: int             # L - 1 [samples]: last sample a frame may read, relative to its time
    lookahead_samples: int   # exact future audio any frame reads [samples]
    history: np.ndarray      # (n_levels,) int64 samples of each level a streaming driver must keep

    @property
    def max_delay_samples(self) -> int:
        """Decimation delay of the lowest level [samples at the input rate]."""
        return (len(self.fir) - 1) // 2 * (2 ** (self.n_levels - 1) - 1)


def _lengths(freqs: np.ndarray, sr: float, filter_scale: float, bins_per_octave: int,
             max_window_ms: float = math.inf) -> np.ndarray:
    """``(n_bins,)`` kernel lengths [samples at rate sr]: librosa.filters.wavelet_lengths for a constant-Q (gamma=0)
    bank, none longer than ``max_window_ms`` [ms]."""
    r = 2.0 ** (2.0 / bins_per_octave)
    alpha = (r - 1.0) / (r + 1.0)
    return np.minimum(filter_scale / alpha * sr / freqs, max_window_ms * 1e-3 * sr)


def _lowpass(taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Linear-phase Kaiser-window low-pass FIR, unity DC gain; ``cutoff`` as a fraction of the sample rate.

    Equal to ``scipy.signal.firwin(taps, 2 * cutoff, window=("kaiser", beta))`` (tested), without importing SciPy,
    which would add about a second to every cold start.
    """
    n = np.arange(taps) - (taps - 1) / 2.0
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return h / h.sum()


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n, fftbins=True)``, librosa's kernel window)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


@lru_cache(maxsize=8)
def _build(audio: AudioSettings, c: CQTSettings) -> KernelBank:
    """The kernel bank for these (frozen, hashable) settings; cached, so every CQT of the same settings shares it."""
    sr, hop = audio.sample_rate, audio.hop_length
    freqs = c.frequencies
    # Level of each bin: the lowest rate that still holds it. Decimated levels need not divide the hop: their
    # window positions are rounded to their own grid (at most half a sample of their rate, negligible against
    # windows of ~170+ samples), identically in both drivers.
    # A window cut by max_window_ms is computed at a higher rate, as many times higher as it was cut shorter: it is
    # then as many samples long as an uncut window at its own level, which keeps the kernels ~170+ samples and, as
    # important in the causal case, the decimation delay small (it would otherwise add up to 60 ms to the bass).
    full_len = _lengths(freqs, sr, c.filter_scale, c.bins_per_octave, c.max_window_ms)  # at the input rate
    cut = full_len / _lengths(freqs, sr, c.filter_scale, c.bins_per_octave)  # 1.0 exactly for uncut bins
    level = np.floor(np.log2(_MAX_REL_FREQ * sr / freqs * cut)).astype(np.int64)
    level = np.maximum(level, 0)
    n_levels = int(level.max()) + 1
    fir = _lowpass(c.decimation_taps, _FIR_CUTOFF, _FIR_BETA).astype(np.float32)
    h = (c.decimation_taps - 1) // 2

    # A kernel depends only on f / rate and its length, so uncut bins an octave apart on neighbouring levels share
    # one: 36 distinct kernels instead of 264 (180 with the bass windows cut at 120 ms), which keeps the bank in L2
    # cache (the per-hop cost is memory-bound).
    kernels, index, bin_kernel, bin_len = [], {}, [], []
    for f, g, ilen_full in zip(freqs, level, full_len):
        rate = sr / 2.0 ** g
        ilen = ilen_full / 2.0 ** g
        key = (round(f / rate, 9), round(ilen, 6))
        if key not in index:
            n_idx = np.arange(-ilen // 2, ilen // 2, dtype=np.float64)  # librosa's index range
            sig = np.exp(2j * np.pi * f / rate * n_idx) * _hann(len(n_idx))
            sig /= np.abs(sig).sum()  # L1 norm (librosa norm=1)
            # Correlate, not convolve: the frame kernel multiplies sample m of the window with kernel[m].
            index[key] = len(kernels)
            kernels.append(np.conj(sig))
        bin_kernel.append(index[key])
        bin_len.append(len(kernels[index[key]]))
    bin_kernel = np.array(bin_kernel, dtype=np.int64)
    bin_len = np.array(bin_len, dtype=np.int64)
    max_len = int(bin_len.max())
    kre = np.zeros((len(kernels), max_len), np.float32)
    kim = np.zeros((len(kernels), max_len), np.float32)
    for k, sig in enumerate(kernels):
        kre[k, : len(sig)] = sig.real
        kim[k, : len(sig)] = sig.imag
    # librosa scale=True: |C| of an L1-normalised kernel times sqrt(length at the input rate) (measured equal to
    # librosa.cqt within tolerance; see tests).
    scale = np.sqrt(full_len).astype(np.float32)

    # Window end for a centred window: the kernel's centre sample (index len//2) sits at time t. Level g's sample j
    # is at input time j * 2^g - D_g with D_g = h (2^g - 1), so the centre index is (t + D_g) / 2^g, rounded.
    den = (2 ** level).astype(np.int64)
    delay = h * (den - 1)
    end_add = delay + den // 2                  # rounding to nearest on the level's grid
    end_num = bin_len - 1 - bin_len // 2
    cap = _NO_CAP if c.centered else int(round(c.lookahead_ms * 1e-3 * sr))
    cap_off = cap - 1
    # Look-ahead actually used: last input sample read = max over bins/frames of j_end * 2^g, relative to t. The
    # pattern of t mod 2^g repeats with period lcm(hop, 2^G) / hop frames; check one full period.
    period = int(np.lcm(hop, int(den.max())) // hop)
    t = (np.arange(period, dtype=np.int64) * hop)[:, None]
    j_end = np.minimum((t + end_add) // den + end_num, (t + cap_off) // den)
    lookahead = int(max(0, (j_end * den - t + 1).max()))
    # Streaming history per level: the longest window reaching back from the newest sample it may need, plus the
    # FIR history the next level reads, plus a hop of slack.
    history = np.zeros(n_levels, np.int64)
    for g in range(n_levels):
        sel = level == g
        longest = int(bin_len[sel].max()) if sel.any() else 0
        reach = longest + (lookahead + hop) // 2 ** g + 2
        history[g] = max(reach, c.decimation_taps + 2) + hop // 2 ** g + 2
    level_lo = np.array([np.flatnonzero(level == g).min() for g in range(n_levels)], np.int64)
    level_hi = np.array([np.flatnonzero(level == g).max() + 1 for g in range(n_levels)], np.int64)
    return KernelBank(sr, hop, n_levels, fir, freqs, level, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale, end_num, den, end_add,
                      cap_off, lookahead, history)


# ----------------------------------------------------------------------------------------------------------------
# Public drivers
# ----------------------------------------------------------------------------------------------------------------
class CQT:
    """The constant-Q transform for one set of settings; the kernel bank is built once (and cached per settings).

    Parameters
    ----------
    settings : kkoma settings (``audio`` and ``cqt`` sections are used).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bank = _build(settings.audio, settings.cqt)
        self.n_bins = settings.cqt.n_bins
        self.log_offset = np.float32(settings.cqt.log_offset)

    @property
    def lookahead_samples(self) -> int:
        """Future audio a frame reads beyond its own time [samples at audio.sample_rate]."""
        return self.bank.lookahead_samples

    @property
    def lookahead_ms(self) -> float:
        """Future audio a frame reads beyond its own time [ms]."""
        return 1000.0 * self.bank.lookahead_samples / self.bank.sample_rate

    @property
    def frequencies(self) -> np.ndarray:
        """``(n_bins,)`` bin centre frequencies [Hz]."""
        return self.bank.freqs.copy()

    def n_frames(self, n_samples: int) -> int:
        """Frames for a signal of ``n_samples`` [samples]: ``n // hop + 1``, and 0 for an empty signal."""
        return n_samples // self.bank.hop + 1 if n_samples > 0 else 0

    def _prepare(self, audio, sample_rate: int | None) -> np.ndarray:
        from kkoma.models.audio import check_finite, resample, to_mono

        x = to_mono(np.asarray(audio))
        check_finite(x)
        if sample_rate is not None and sample_rate != self.bank.sample_rate:
            x = resample(x, sample_rate, self.bank.sample_rate, self.settings)
        return np.ascontiguousarray(x, dtype=np.float32)

    def transform(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """Magnitudes of a whole signal.

        Parameters
        ----------
        audio : ``(n_samples,)`` or ``(n_samples, n_channels)`` (mixed to mono), float.
        sample_rate : rate of ``audio`` [Hz]; resampled to ``audio.sample_rate`` if different. None = already there.

        Returns
        -------
        ``(n_frames, n_bins)`` float32 magnitudes, ``n_frames = n_samples // hop + 1`` (0 for empty audio).
        """
        return self._run(self._prepare(audio, sample_rate), do_log=False)

    def features(self, audio, sample_rate: int | None = None) -> np.ndarray:
        """Model input ``(n_frames, n_bins)`` float32: ``log1p(|C| / cqt.log_offset)``. See :meth:`transform`."""
        return self._run(self._prepare(audio, sample_rate), do_log=True)

    def _run(self, x: np.ndarray, do_log: bool) -> np.ndarray:
        b = self.bank
        n_frames = self.n_frames(len(x))
        out = np.zeros((n_frames, self.n_bins), np.float32)
        if n_frames == 0:
            return out
        # Zero-pad the end so the last frame's look-ahead reads zeros, as the streaming driver's flush() does.
        x = np.concatenate([x, np.zeros(b.lookahead_samples + b.hop, np.float32)])
        levels = [x]
        for g in range(1, b.n_levels):
            src = levels[-1]
            n_dst = (len(src) + 1) // 2
            dst = np.empty(n_dst, np.float32)
            _fir_decimate(src, 0, len(src), b.fir, dst, 0, 0, n_dst)
            levels.append(dst)
        lens = np.array([len(v) for v in levels], np.int64)
        lev_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate(levels)
        base = np.zeros(b.n_levels, np.int64)
        _frames_batch(flat, lev_off, base, lens, b.level_lo, b.level_hi, b.bin_len, b.bin_kernel, b.kre, b.kim, b.scale, b.end_num, b.end_den,
                      b.end_add, b.cap_off, b.hop, n_frames, out, self.log_offset, do_log)
        return out

    def incremental(self, features: bool = True) -> "IncrementalCQT":
        """A streaming driver over the same kernel bank (``features=False`` emits magnitudes instead)."""
        return IncrementalCQT(self, features=features)


@nb.njit(cache=True, nogil=True)
def _stream_push(x, flat, lev_off, levels_base, levels_count, fir):
    """Append x to level 0 and compute every newly available decimated sample of the other levels.

    levels_count[g] = number of samples of level g produced so far (absolute). Buffers must have room.
    """
    n0 = levels_count[0]
    buf0 = flat[lev_off[0]:lev_off[1]]
    off = n0 - levels_base[0]
    for i in range(x.shape[0]):
        buf0[off + i] = x[i]
    levels_count[0] = n0 + x.shape[0]
    for g in range(1, levels_base.shape[0]):
        # y_g[j] needs y_{g-1}[2j]: available for j <= (count_{g-1} - 1) // 2.
        j_to = (levels_count[g - 1] - 1) // 2 + 1
        j_from = levels_count[g]
        if j_to > j_from:
            src = flat[lev_off[g - 1]:lev_off[g]]
            _fir_decimate(src, levels_base[g - 1], levels_count[g - 1] - levels_base[g - 1], fir,
                          flat[lev_off[g]:lev_off[g + 1]], levels_base[g], j_from, j_to)
            levels_count[g] = j_to


@nb.njit(cache=True, nogil=True)
def _make_room(flat, lev_off, levels_base, levels_count, history, n_new):
    """Shift each level's buffer so its newest ``history`` samples stay and ``n_new`` more input samples fit."""
    for g in range(levels_base.shape[0]):
        used = levels_count[g] - levels_base[g]
        add = (n_new >> g) + 2
        if used + add > lev_off[g + 1] - lev_off[g]:
            keep = min(history[g], used)
            buf = flat[lev_off[g]:lev_off[g + 1]]
            buf[:keep] = buf[used - keep:used].copy()
            levels_base[g] = levels_count[g] - keep


@nb.njit(cache=True, nogil=True)
def _stream_step(x, flat, lev_off, levels_base, levels_count, levels_len, history, fir, level_lo, level_hi,
                 bin_len, bin_kernel, kre, kim, scale, end_num, end_den, end_add, cap_off, hop, frame_from, frame_limit,
                 lookahead, out, log_offset, do_log):
    """Push one piece of audio and compute the frames it completes (up to frame_limit). Returns the frame count."""
    _make_room(flat, lev_off, levels_base, levels_count, history, x.shape[0])
    _stream_push(x, flat, lev_off, levels_base, levels_count, fir)
    avail = levels_count[0] - lookahead
    frame_to = avail // hop + 1 if avail >= 0 else 0
    if frame_to > frame_limit:
        frame_to = frame_limit
    for g in range(levels_len.shape[0]):
        levels_len[g] = levels_count[g] - levels_base[g]
    if frame_to - frame_from == 1:
        _frame(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim, scale,
               end_num, end_den, end_add, cap_off, frame_from * hop, out[0], log_offset, do_log)
    elif frame_to > frame_from:  # a big block (offline): kernels outermost, as the batch driver
        _frames_range(flat, lev_off, levels_base, levels_len, level_lo, level_hi, bin_len, bin_kernel, kre, kim,
                      scale, end_num, end_den, end_add, cap_off, hop, frame_from, frame_to, out, frame_from,
                      log_offset, do_log)
    return max(frame_to - frame_from, 0)


class IncrementalCQT:
    """Streaming CQT: audio blocks of any size in, one frame per hop out, state carried between calls.

    State (all restored by :meth:`reset`): ``samples_in`` [samples] consumed, ``frames_out`` emitted, per-level
    sample buffers with their absolute base index, ``nonfinite_samples`` replaced by zeros.
    Frame ``i`` is emitted once ``i * hop + lookahead_samples`` samples have arrived; :meth:`flush` pads zeros to
    emit every frame of the signal so far (``samples_in // hop + 1``), matching :meth:`CQT.transform`.
    """

    _CHUNK = 4096  # [samples] largest piece pushed at once, so buffers stay fixed-size

    def __init__(self, cqt: CQT, features: bool = True):
        self.cqt = cqt
        self.bank = cqt.bank
        self.do_log = features
        b = self.bank
        # Capacity: history + the samples one chunk adds at each level.
        cap = [int(b.history[g]) + self._CHUNK // 2 ** g + 4 for g in range(b.n_levels)]
        self._lev_off = np.concatenate([[0], np.cumsum(cap)]).astype(np.int64)
        self._flat = np.zeros(int(self._lev_off[-1]), np.float32)  # every level's buffer, back to back
        self._base = np.zeros(b.n_levels, np.int64)
        self._count = np.zeros(b.n_levels, np.int64)
        self._len = np.zeros(b.n_levels, np.int64)
        # Frames one piece can complete: a chunk's worth, plus those a look-ahead longer than a chunk held back.
        self._out = np.zeros(((self._CHUNK + b.lookahead_samples) // b.hop + 2, cqt.n_bins), np.float32)
        self.reset()

    @property
    def lookahead_samples(self) -> int:
        return self.cqt.lookahead_samples

    @property
    def lookahead_ms(self) -> float:
        return self.cqt.lookahead_ms

    def reset(self) -> None:
        """Forget all audio: the next sample is sample 0 of a new signal."""
        self._flat[:] = 0.0
        self._base[:] = 0
        self._count[:] = 0
        self.samples_in = 0
        self.frames_out = 0
        self.nonfinite_samples = 0
        self._flushed = False

    def _step(self, piece: np.ndarray, frame_limit: int) -> np.ndarray:
        b = self.bank
        n = _stream_step(piece, self._flat, self._lev_off, self._base, self._count, self._len, b.history, b.fir,
                         b.level_lo, b.level_hi, b.bin_len, b.bin_kernel, b.kre, b.kim, b.scale, b.end_num, b.end_den, b.end_add, b.cap_off,
                         b.hop, self.frames_out, frame_limit, b.lookahead_samples, self._out, self.cqt.log_offset,
                         self.do_log)
        self.frames_out += n
        return self._out[:n].copy()

    def process(self, block) -> np.ndarray:
        """Push audio ``(n,)`` float (model rate, mono) -> ``(k, n_bins)`` float32 frames now complete (k ≥ 0)."""
        if self._flushed:
            raise KkomaError("this IncrementalCQT was flushed; call reset() before streaming a new signal.")
        x = np.asarray(block, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            bad = ~np.isfinite(x)
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        if len(x) <= self._CHUNK:
            self.samples_in += len(x)
            return self._step(np.ascontiguousarray(x), self.cqt.n_frames(self.samples_in))
        out = []
        for i in range(0, len(x), self._CHUNK):
            piece = np.ascontiguousarray(x[i:i + self._CHUNK])
            self.samples_in += len(piece)
            out.append(self._step(piece, self.cqt.n_frames(self.samples_in)))
        return np.concatenate(out)

    def flush(self) -> np.ndarray:
        """Emit the remaining frames of the signal (zeros stand in for audio after its end); then reset() to reuse."""
        n_total = self.cqt.n_frames(self.samples_in)
        out = []
        pad = self.bank.lookahead_samples + self.bank.hop
        while self.frames_out < n_total and pad > 0:
            piece = np.zeros(min(pad, self._CHUNK), np.float32)
            pad -= len(piece)
            # Padding is not signal: frames beyond the signal's own count are never emitted.
            out.append(self._step(piece, n_total))
        self._flushed = True
        if not out:
            return np.zeros((0, self.cqt.n_bins), np.float32)
        return np.concatenate(out)
