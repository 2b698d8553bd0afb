"""CQT benchmark: incremental cost per hop and batch throughput, beside librosa.cqt on the same audio, same run.

    python benchmarks/bench_cqt.py [--seconds 60] [--audio FILE]
    python benchmarks/bench_cqt.py --gemm-sketch       # the files' transform against a matrix-product sketch of it

Prints (all on this machine, this run):
- incremental CQT: µs per 10 ms hop, p50 / p99 / max (block = one hop, default causal settings);
- librosa.cqt recomputed per hop over the shortest context that covers its longest window (what a naive live
  driver would have to do), µs per hop;
- batch throughput (× real time) of our transform, causal and centred, and of librosa.cqt (centred, same fmin, bins,
  bins per octave, hop, filter scale), and the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kkoma.models.audio import load_audio  # noqa: E402
from kkoma.models.cqt import CQT  # noqa: E402
from kkoma.models.settings import load_settings  # noqa: E402


def piano_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = np.zeros(n)
    for _ in range(int(seconds * 4)):
        f0 = 440.0 * 2 ** ((rng.integers(21, 109) - 69) / 12)
        i0 = int(rng.uniform(0, seconds - 0.5) * sr)
        tt = t[i0:] - t[i0]
        env = np.exp(-tt * rng.uniform(0.5, 4)) * rng.uniform(0.05, 0.2)
        for h in range(1, 8):
            if f0 * h < 0.45 * sr:
                x[i0:] += env / h * np.sin(2 * np.pi * f0 * h * tt)
    return (x + 1e-3 * rng.standard_normal(n)).astype(np.float32)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_sketch(args) -> None:
    """What the files' transform (offline settings) would cost with each octave level's bins as one matrix product
    (kernels zero-padded to the level's longest, frames as the columns of a strided copy of the level's signal)
    instead of one dot product per bin and frame. A cost estimate, not the transform: no window alignment, and
    NumPy's convolution standing in for the decimation filter. CPU time per second of audio, alternating runs."""
    from numpy.lib.stride_tricks import as_strided
    from threadpoolctl import threadpool_limits

    s = load_settings(offline=True)
    sr = s.audio.sample_rate
    x = load_audio(args.audio, s)[: int(args.seconds * sr)] if args.audio else piano_like(args.seconds, sr)
    cqt = CQT(s)
    b = cqt.bank
    cqt.features(x[:sr])
    banks = []
    for g in range(b.n_levels):
        lo, hi = int(b.level_lo[g]), int(b.level_hi[g])
        length = int(b.bin_len[lo:hi].max()) if hi > lo else 0
        rows = b.bin_kernel[lo:hi]
        banks.append((hi - lo, length, b.hop >> g, np.concatenate([b.kre[rows, :length], b.kim[rows, :length]])))

    def sketch():
        sig = x
        for n_bins, length, hop, k in banks:
            if n_bins:
                n = (len(sig) - length) // hop
                y = k @ np.ascontiguousarray(as_strided(sig, (length, n), (4, 4 * hop)))
                np.sqrt(y[:n_bins] ** 2 + y[n_bins:] ** 2)
            sig = np.convolve(sig, b.fir)[::2].astype(np.float32)

    def cpu_ms(fn) -> float:
        t0 = time.process_time()
        fn()
        return 1000 * (time.process_time() - t0) / (len(x) / sr)

    with threadpool_limits(1):
        numba_ms, gemm_ms = [], []
        for _ in range(args.repeats):
            numba_ms.append(cpu_ms(lambda: cqt.features(x)))
            gemm_ms.append(cpu_ms(sketch))
    taps = int(b.bin_len.sum())
    print(f"files' transform: {taps} kernel taps per frame, {4 * taps * sr / b.hop / 1e6:.1f} MFLOP per second of "
          f"audio; CPU ms per second of audio, {args.repeats} alternating runs:")
    print(f"  kkoma (Numba, one dot product per bin and frame): median {np.median(numba_ms):.2f} "
          f"(range {min(numba_ms):.2f}-{max(numba_ms):.2f})")
    print(f"  sketch (one matrix product per level):          median {np.median(gemm_ms):.2f} "
          f"(range {min(gemm_ms):.2f}-{max(gemm_ms):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--audio", help="an audio file to use instead of synthetic piano-like tones")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gemm-sketch", action="store_true",
                    help="only: CPU time of the files' transform against a sketch of it as one matrix product per "
                         "octave level (docs/files-speed.md), one BLAS thread")
    args = ap.parse_args()
    if args.gemm_sketch:
        return gemm_sketch(args)

    s = load_settings()
    sr, hop = s.audio.sample_rate, s.audio.hop_length
    x = load_audio(args.audio, s)[: int(args.seconds * sr)] if args.audio else piano_like(args.seconds, sr)
    seconds = len(x) / sr
    causal = CQT(s)
    centred = CQT(s.replace(cqt__lookahead_ms="inf"))
    causal.features(x[:sr])  # compile (cached on disk after the first run)
    centred.features(x[:sr])

    # -- incremental, one hop per call ---------------------------------------------------------------------------
    inc = causal.incremental()
    inc.process(x[: 2 * sr])
    per_hop = []
    for i in range(2 * sr, len(x) - hop + 1, hop):
        t0 = time.perf_counter_ns()
        inc.process(x[i:i + hop])
        per_hop.append(time.perf_counter_ns() - t0)
    per_hop = np.array(per_hop) / 1000.0

    # -- batch ---------------------------------------------------------------------------------------------------
    t_causal = best_of(lambda: causal.features(x), args.repeats)
    t_centred = best_of(lambda: centred.features(x), args.repeats)

    import librosa

    kw = dict(sr=sr, hop_length=hop, fmin=s.cqt.fmin, n_bins=s.cqt.n_bins, bins_per_octave=s.cqt.bins_per_octave,
              filter_scale=s.cqt.filter_scale, scale=True)
    librosa.cqt(x[:sr], **kw)  # warm-up (filter construction caches, resampler load)
    t_lib = best_of(lambda: librosa.cqt(x, **kw), args.repeats)
    # A live driver built on librosa would recompute the transform over the window of the longest filter every hop.
    # librosa's filters are never cut (cqt.max_window_ms), so its longest window is the plain constant-Q one.
    plain = CQT(s.replace(cqt__lookahead_ms="inf", cqt__max_window_ms="inf"))
    context = int(2 * plain.lookahead_samples + 2 * hop)
    lib_hop = []
    for k in range(20):
        end = context + k * 37 * hop
        seg = x[end - context:end]
        t0 = time.perf_counter_ns()
        librosa.cqt(seg, **kw)
        lib_hop.append(time.perf_counter_ns() - t0)
    lib_hop = np.array(lib_hop) / 1000.0

    print(f"audio: {seconds:.1f} s {'from ' + args.audio if args.audio else 'synthetic piano-like tones'}, "
          f"{sr} Hz, hop {hop} samples ({1000 * hop / sr:.1f} ms), {s.cqt.n_bins} bins")
    print()
    print("| transform | per hop p50 [µs] | p99 [µs] | max [µs] | batch × real time |")
    print("|---|---:|---:|---:|---:|")
    print(f"| kkoma incremental (causal) | {np.percentile(per_hop, 50):.1f} | {np.percentile(per_hop, 99):.1f} "
          f"| {per_hop.max():.1f} | – |")
    print(f"| kkoma batch, causal | – | – | – | {seconds / t_causal:.0f} |")
    print(f"| kkoma batch, centred | – | – | – | {seconds / t_centred:.0f} |")
    print(f"| librosa.cqt (centred) | {np.percentile(lib_hop, 50):.0f} (recomputed on {context / sr:.2f} s) "
          f"| {np.percentile(lib_hop, 99):.0f} | {lib_hop.max():.0f} | {seconds / t_lib:.0f} |")
    print()
    print(f"incremental p50 vs librosa per hop: {np.percentile(lib_hop, 50) / np.percentile(per_hop, 50):.0f}x less "
          f"time; batch throughput vs librosa: causal {t_lib / t_causal:.1f}x, centred {t_lib / t_centred:.1f}x")
    print(f"targets: <= 50 µs per hop -> p50 {'met' if np.percentile(per_hop, 50) <= 50 else 'MISSED'}, "
          f"p99 {'met' if np.percentile(per_hop, 99) <= 50 else 'MISSED'}; batch >= 2x librosa -> "
          f"{'met' if t_lib / t_centred >= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
