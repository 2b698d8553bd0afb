"""Throughput of ``kkoma transcribe`` on a Dask cluster (``--scheduler``) against the local pool (``-j``), same files.

    python benchmarks/bench_cluster.py [--files 8] [--seconds 30] [--workers 1,2,4]

Writes ``--files`` FLAC files of ``--seconds`` each (the example recording, repeated), then times, each in a fresh
``kkoma transcribe ... --overwrite -q`` process:

- ``-j N``: the local process pool (the baseline; ratios are against ``-j 1`` of the same run);
- ``local:N``: a Dask LocalCluster of N worker processes started by the command (cold: worker start, imports and
  model load are inside the figure, as for a user who types it);
- ``tcp N``: a ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` started beforehand and warmed by one
  run (their models stay loaded between runs), so the figure is the per-file cost of the cluster itself.

Wall time includes the command's own start (Python, NumPy, the weights). On a machine with fewer cores than N the
figures show overhead, not speed-up.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1", DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0")


def make_files(folder: Path, n: int, seconds: float) -> float:
    """``n`` files of ``seconds`` [s] each (the example, tiled); returns the total audio length [s]."""
    import soundfile as sf

    x, sr = sf.read(str(REPO / "examples" / "example.flac"), dtype="float32")
    reps = int(np.ceil(seconds * sr / len(x)))
    y = np.tile(x, reps)[:int(seconds * sr)]
    for i in range(n):
        sf.write(str(folder / f"take{i:02d}.flac"), np.roll(y, i * sr), sr)  # rolled: not n identical files
    return n * len(y) / sr


def transcribe(folder: Path, out: Path, extra: list[str]) -> float:
    """Wall time [s] of one ``kkoma transcribe`` process."""
    cmd = [sys.executable, "-m", "kkoma.cli", "transcribe", str(folder), "-o", str(out), "--overwrite", "-q",
           "--device", "cpu", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return wall


class WarmCluster:
    """``dask scheduler`` + ``dask worker --nworkers N --nthreads 1`` on 127.0.0.1."""

    def __init__(self, n: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        py, env = sys.executable, _env()
        self.procs = [subprocess.Popen([py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                        "--port", str(port), "--no-dashboard"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.procs.append(subprocess.Popen([py, "-m", "distributed.cli.dask_worker", self.address, "--nworkers",
                                            str(n), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(self.address, timeout=60) as c:
            c.wait_for_workers(n, timeout=120)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each file [s]")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kkoma_bench_cluster_"))
    try:
        folder, out = tmp / "in", tmp / "out"
        folder.mkdir()
        audio = make_files(folder, args.files, args.seconds)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{args.files} files, {audio:.0f} s of audio; {cores} CPU cores; "
              f"load average {os.getloadavg()[0]:.1f} at start")
        rows = []

        def row(name: str, wall: float) -> None:
            if not rows:
                print(f"{'run':36s} {'wall [s]':>9s} {'× real time':>12s} {'vs ' + name:>12s}")
            rows.append(wall)
            print(f"{name:36s} {wall:9.1f} {audio / wall:12.1f} {rows[0] / wall:12.2f}", flush=True)

        for n in counts:
            row(f"-j {n}", transcribe(folder, out, ["-j", str(n)]))
        for n in counts:
            row(f"--scheduler local:{n} (cold)", transcribe(folder, out, ["--scheduler", f"local:{n}"]))
        for n in counts:
            c = WarmCluster(n)
            try:
                transcribe(folder, out, ["--scheduler", c.address])  # warm-up: every worker loads its model
                row(f"--scheduler tcp, {n} warm workers", transcribe(folder, out, ["--scheduler", c.address]))
            finally:
                c.close()
        print(f"load average {os.getloadavg()[0]:.1f} at end")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
