"""Streaming model cost: parameters, weights size, per-frame (hop-by-hop) and batch time of the NumPy path.

Usage: python benchmarks/bench_model.py [--frames N] [--weights PATH] [--set KEY=VALUE ...]   (random weights of the
configured size if no weights file is given; the cost does not depend on the values; e.g. ``--set
model.harmonic_units=16`` for the harmonic branch). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    from kkoma.models.inference import StreamingModel, export_random_weights
    from kkoma.models.settings import load_settings

    s = load_settings(overrides=args.overrides, model=args.weights)  # a file's own settings where --set gives none
    path = Path(args.weights) if args.weights else export_random_weights(Path(tempfile.mkdtemp()) / "w.npz", s)
    sm = StreamingModel(s, weights_path=path)
    x = np.random.default_rng(0).uniform(0, 5, (args.frames, s.cqt.n_bins)).astype(np.float32)
    for i in range(100):  # warm-up (Numba load, caches)
        sm.process(x[i:i + 1])
    sm.reset()
    ts = np.empty(args.frames)
    for i in range(args.frames):
        t = time.perf_counter()
        sm.process(x[i:i + 1])
        ts[i] = time.perf_counter() - t
    ts *= 1e6
    t = time.perf_counter()
    sm.predict(x)
    batch = (time.perf_counter() - t) / args.frames * 1e6
    print(f"parameters {sm.n_params:,}; weights file {path.stat().st_size / 1e6:.2f} MB; look-ahead "
          f"{sm.lookahead_frames} frames ({sm.lookahead_ms:g} ms)")
    print(f"hop by hop: median {np.median(ts):.1f} us, p99 {np.percentile(ts, 99):.1f} us, max {ts.max():.1f} us "
          f"per frame ({args.frames} frames)")
    print(f"batch (chunks of {s.transcribe.chunk_frames}): {batch:.1f} us per frame")


if __name__ == "__main__":
    main()
