"""``kkoma transcribe`` on 1, 2 and 4 cores: -j 1, -j 2 (-j 4) and the automatic layout (-j unset), in one run.

    python benchmarks/bench_jobs_layout.py AUDIO_DIR [--files N] [--cores 1 2 4] [--rounds 3]
                                          [--out benchmarks/results/jobs_layout.md]

Each figure is a fresh process transcribing the same files to MIDI, as a user's ``kkoma transcribe`` does (Python
start, imports, model loading and worker start-up included), pinned to the first N cores of this process's CPU
affinity with ``os.sched_setaffinity`` (what ``taskset -c`` does), so kkoma's own rule sees N usable cores. The
layouts: ``-j 1`` and ``-j 2`` (and ``-j 4`` on four cores) as kkoma runs them, ``auto`` (transcribe.jobs = 0, the
rule of offline/transcribe.py:choose_layout), and one process streaming in three threads (decode, transform, model)
or in one. The "runs as" column says what each run did.

Rounds alternate: every round runs every (cores, layout) once, in a rotated order, so a change in the machine's
load falls on all of them alike. Printed per layout: × real time (audio seconds / wall seconds; median and range
over the rounds), CPU seconds per minute of audio (this process's children: the run and its workers; less noisy
than the wall time on a shared machine), and the median's distance from the fastest layout at that core count.
Core counts above the machine's are reported as not measured, with the layout the rule would choose. ``--dask 1 2
4`` adds runs through a local Dask cluster of that many workers (``kkoma transcribe --scheduler local:N``, cluster
start-up included) on the largest core count measured. The machine's
CPU count and load average are printed beside the table, with a warning when the load was too high for the figures
to mean much. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import finish_report, fmt_spread, machine, snapshot, spread  # noqa: E402

# Runs in the pinned child: one `kkoma transcribe` run with a given layout, or the automatic one.
DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
from kkoma.models.settings import load_settings
from kkoma.offline.transcribe import Layout, resolve_layout, transcribe_paths, usable_cores
spec, out_dir, files = sys.argv[1], sys.argv[2], sys.argv[3:]
settings = load_settings(overrides=["transcribe.jobs=0"], offline=True)  # as `kkoma transcribe`
scheduler = None
if spec == "auto":
    layout = None
    chosen = resolve_layout(settings, len(files))
elif spec.startswith("jobs:"):
    layout = chosen = resolve_layout(settings, len(files), n_jobs=int(spec[5:]))
elif spec.startswith("dask:"):
    layout, scheduler = None, "local:" + spec[5:]
    chosen = None
else:
    p, threaded = spec.split(":")
    layout = chosen = Layout(int(p), threaded == "2", usable_cores())
summary = transcribe_paths(files, settings, out_dir=out_dir, quiet=True, overwrite=True, layout=layout,
                           scheduler=scheduler)
# Stop the pool's fork server and wait for it, so the CPU time of the workers it reaped is counted in this
# process's children (and so in the benchmark's).
try:
    from multiprocessing import forkserver
    if getattr(forkserver._forkserver, "_forkserver_pid", None):
        forkserver._forkserver._stop()
except Exception:
    pass
if summary.failed:
    sys.exit("failed: " + "; ".join(f"{o.audio}: {o.reason}" for o in summary.failed))
print(json.dumps({"audio_s": summary.audio_seconds,
                  "layout": chosen.describe() if chosen else f"Dask {scheduler}, 1 task thread per worker",
                  "inner_s": time.perf_counter() - t0}))
"""

AUDIO_EXT = (".flac", ".wav", ".ogg", ".mp3")


def candidates(cores: int) -> dict[str, str]:
    """label -> driver spec for one core count: ``-j N`` and ``auto`` as the command runs them, and one process with
    a fixed number of threads."""
    if cores == 1:  # one core: -j 1, auto and one thread are the same run
        return {"-j 1 = auto = 1 process x 1 thread": "auto", "-j 2": "jobs:2", "1 process x 3 threads": "1:2"}
    out = {"-j 1": "jobs:1", "-j 2": "jobs:2"}
    if cores >= 4:
        out["-j 4"] = "jobs:4"
    out.update({"auto": "auto", "1 process x 3 threads": "1:2", "1 process x 1 thread": "1:1"})
    return out


def run_one(spec: str, cpus: list[int], files: list[Path], out_dir: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", DRIVER, spec, str(out_dir), *map(str, files)], capture_output=True,
                       text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus),
                       env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"run {spec} on {len(cpus)} cores failed:\n{p.stderr[-3000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, **info}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audio_dir", type=Path)
    ap.add_argument("--files", type=int, default=0, help="use the first N audio files (0 = all)")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dask", type=int, nargs="*", default=[], metavar="N",
                    help="also run through a local Dask cluster of N workers (--scheduler local:N; kkoma[cluster]) "
                         "on the largest core count measured")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    files = sorted(p for p in args.audio_dir.rglob("*") if p.suffix.lower() in AUDIO_EXT)[: args.files or None]
    if not files:
        raise SystemExit(f"{args.audio_dir} holds no audio files")
    mine = sorted(os.sched_getaffinity(0))
    plan: list[tuple[int, str, str]] = []           # (cores, label, spec)
    not_measured: dict[int, object] = {}
    for c in args.cores:
        if c > len(mine):
            from kkoma.offline.transcribe import choose_layout

            not_measured[c] = choose_layout(c, len(files))
            continue
        for label, spec in candidates(c).items():
            plan.append((c, label, spec))
    measured = [c for c in args.cores if c not in not_measured]
    for n in args.dask:
        if measured:
            plan.append((max(measured), f"Dask local:{n}", f"dask:{n}"))

    results: dict[tuple[int, str], list[dict]] = {(c, label): [] for c, label, _ in plan}
    snaps = []
    with tempfile.TemporaryDirectory(prefix="kkoma-jobs-") as tmp:
        # One untimed run first: Numba's cache and the OS file cache are then warm for every timed run alike.
        run_one("1:1", mine[:1], files[:1], Path(tmp) / "warm")
        for r in range(args.rounds):
            k = r % len(plan)
            order = plan[k:] + plan[:k]
            if r % 2:
                order.reverse()
            for c, label, spec in order:
                snaps.append(snapshot())
                res = run_one(spec, mine[:c], files, Path(tmp) / f"out{c}")
                results[(c, label)].append(res)
                print(f"round {r + 1}: {c} cores, {label}: {res['audio_s'] / res['wall_s']:.1f}x real time "
                      f"({res['layout']}), load {snaps[-1]['load1']:.1f}", file=sys.stderr)

    audio_s = next(iter(results.values()))[0]["audio_s"] if results else 0.0
    m = machine()
    lines = [f"{len(files)} files, {audio_s / 60:.1f} min of audio ({args.audio_dir}), {args.rounds} alternating "
             f"rounds; {m['cpus']} CPUs on this machine ({m['processor']}), {m['started']}.", "",
             "| cores | layout | runs as | x real time: median (range) | CPU s per min of audio | vs fastest |",
             "|---|---|---|---|---|---|"]
    verdicts = []
    for c in args.cores:
        if c in not_measured:
            lines.append(f"| {c} | auto | {not_measured[c].describe()} | not measured: this machine has "
                         f"{len(mine)} usable cores | | |")
            continue
        rows = [(label, results[(cc, label)]) for cc, label, _ in plan if cc == c]
        speed = {label: spread([x["audio_s"] / x["wall_s"] for x in rs]) for label, rs in rows}
        best = max(s["median"] for s in speed.values())
        for label, rs in rows:
            cpu = spread([60.0 * x["cpu_s"] / x["audio_s"] for x in rs])
            lines.append(f"| {c} | {label} | {rs[0]['layout']} | {fmt_spread(speed[label])} | {fmt_spread(cpu, 2)} "
                         f"| {100 * (speed[label]['median'] / best - 1):+.0f} % |")
        auto = next(label for label, _ in rows if "auto" in label)
        gap = 100 * (1 - speed[auto]["median"] / best)
        verdicts.append(f"{c} cores: auto ({auto}) is {gap:.0f} % below the fastest layout's median"
                        + (" (within 5 %)" if gap <= 5 else ""))
    lines += ["", *verdicts, ""]
    finish_report(lines, snaps, cores=len(mine), out=args.out,
                  title="kkoma transcribe: processes and threads against cores",
                  command="python benchmarks/bench_jobs_layout.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        args.json.write_text(json.dumps({f"{c} {label}": v for (c, label), v in results.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
