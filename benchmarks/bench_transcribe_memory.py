"""Peak memory of ``kkoma transcribe`` on a long file: the file is streamed, so memory must not grow with length.

    python benchmarks/bench_transcribe_memory.py [--minutes 60] [--rate 44100] [--keep DIR]

Writes a piano-like test signal (decaying harmonic tones at random pitches, stereo, ``--rate`` Hz, FLAC) of the
given length block by block, then runs ``kkoma transcribe`` on it in a fresh process and reports that process's
peak resident memory (``ru_maxrss`` of the child), its wall time and speed. Also runs a 1-minute file the same way,
so the figure can be read as "memory does not depend on length". Target: < 2 GB for one hour.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_signal(path: Path, seconds: float, rate: int, seed: int = 0) -> None:
    """A stereo FLAC of ``seconds`` [s]: a new random note every 0.25 s, 4 harmonics, 1.5 s decay, some noise."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    block = rate * 10
    n_total = int(seconds * rate)
    step = int(0.25 * rate)
    decay = np.exp(-np.arange(int(1.5 * rate)) / (0.3 * rate))
    t = np.arange(len(decay)) / rate
    carry = np.zeros(len(decay))  # the decay of notes that started near the end of the previous block
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, n_total, block):
            n = min(block, n_total - start)
            buf = np.zeros(n + len(decay))
            buf[:len(carry)] += carry
            for onset in range(0, n, step):
                f0 = 440.0 * 2 ** ((rng.integers(36, 96) - 69) / 12)
                tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5) if f0 * h < rate / 2.2)
                buf[onset:onset + len(decay)] += 0.15 * tone * decay
            carry = buf[n:].copy()
            x = np.clip(buf[:n] + 0.003 * rng.standard_normal(n), -1, 1).astype(np.float32)
            f.write(np.stack([x, 0.8 * x], axis=1))


def run_transcribe(path: Path, out: Path, weights: Path) -> tuple[float, float]:
    """(peak RSS [MB], wall [s]) of a fresh ``kkoma transcribe`` process (one worker)."""
    code = ("import resource, sys\nfrom kkoma.cli import main\n"
            f"rc = main(['--set', 'transcribe.jobs=1', '--set', 'model.weights={weights}', 'transcribe', "
            f"{str(path)!r}, '-o', {str(out)!r}, '-q', "
            "'--overwrite'])\n"
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"kkoma transcribe failed:\n{p.stderr[-3000:]}")
    kb = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    return kb / 1024.0, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the long file (default 60)")
    ap.add_argument("--rate", type=int, default=44100, help="sample rate of the test files [Hz] (default 44100)")
    ap.add_argument("--keep", type=Path, default=None, help="write the test files here and keep them")
    ap.add_argument("--weights", type=Path, default=None,
                    help="model weights (default: model.weights of config.toml, or random weights of the same "
                         "shape when that file does not exist: memory and speed do not depend on the values)")
    args = ap.parse_args(argv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kkoma-mem-"))
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from kkoma.models.settings import load_settings

    weights = args.weights or load_settings(offline=True).model.weights_path
    note = ""
    if not Path(weights).exists():
        from kkoma.models.inference import export_random_weights

        weights = export_random_weights(folder / "random_weights.npz", load_settings(offline=True))
        note = " (random weights of the shipped shape)"
    rows = []
    for minutes in (1.0, args.minutes):
        path = folder / f"signal_{minutes:g}min.flac"
        if not path.exists():
            t0 = time.perf_counter()
            write_signal(path, minutes * 60, args.rate)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        rss, wall = run_transcribe(path, folder / "out", weights)
        rows.append((minutes, rss, wall))
        print(f"{minutes:g} min: peak RSS {rss:.0f} MB, {wall:.1f} s wall", file=sys.stderr)
    print(f"\n`kkoma transcribe` peak memory ({args.rate} Hz stereo FLAC, one worker, {os.cpu_count()} cores){note}\n")
    print("| audio | peak RSS [MB] | wall [s] | × real time (incl. start-up) |")
    print("|---|---|---|---|")
    for minutes, rss, wall in rows:
        print(f"| {minutes:g} min | {rss:.0f} | {wall:.1f} | {minutes * 60 / wall:.1f} |")
    if args.keep is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
