"""Seconds per training step of ``kkoma train`` on one machine, this tree against another checkout of kkoma.

    python benchmarks/bench_train_step.py --baseline TREE [--config offline/campaigns/pitch_files.toml --offline]
        [--dataset DATASET] [--steps 24] [--skip 4] [--rounds 2]

Each figure is a fresh ``kkoma train`` process (``--set`` and ``--config`` as given) on a new OUT_DIR that runs
``--steps`` steps and exits before the epoch ends (no validation, no checkpoint). A step is timed between two calls
of the weight average's update (``offline.train._WeightAverage.update``, which both the ``model.fit`` loop and the
custom loop call after every step; ``train.average_decay`` must be > 0); the first ``--skip`` steps (tracing, the
first pool of pieces) are left out, and the median of the rest is reported. The trees alternate (baseline, this,
baseline, this, ...), so a shared machine's load falls on both alike; the ratio is this / baseline per round.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
import kkoma.offline.train as T
from kkoma.cli import main

stamps, steps = [], int(os.environ["BENCH_STEPS"])
update = T._WeightAverage.update

def timed(self):
    update(self)
    stamps.append(time.perf_counter())
    if len(stamps) > steps:
        print("BENCH " + json.dumps(stamps), flush=True)
        os._exit(0)

T._WeightAverage.update = timed
sys.exit(main(sys.argv[1:]))
"""


def run_tree(tree: Path, args, out: Path) -> list[float]:
    """One ``kkoma train`` process of ``tree`` -> the durations of its steps after the skipped ones [s]."""
    cmd = [sys.executable, "-c", CHILD]
    if args.config:
        cmd += ["--config", args.config]
    for o in args.set:
        cmd += ["--set", o]
    cmd += ["--set", f"train.steps_per_epoch={args.steps + 10}", "train", args.dataset, str(out), "-q"]
    if args.offline:
        cmd.append("--offline")
    env = dict(os.environ, PYTHONPATH=str(tree), BENCH_STEPS=str(args.steps), TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"{tree}: no timings (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    stamps = json.loads(line[6:])
    return [b - a for a, b in zip(stamps, stamps[1:])][args.skip:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="another checkout of kkoma (e.g. `git worktree add` of main)")
    ap.add_argument("--config", default="offline/campaigns/pitch_files.toml")
    ap.add_argument("--offline", action="store_true", default=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--dataset", default="/work/data/campaign/dataset")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--skip", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.config:
        args.config = str(Path(args.config).resolve())
    trees = {"baseline": Path(args.baseline).resolve(), "this": REPO}
    medians: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                t0 = time.time()
                d = sorted(run_tree(tree, args, Path(tmp) / f"{name}{r}"))
                med = d[len(d) // 2]
                medians[name].append(med)
                print(f"round {r + 1} {name:8s}: median {med:.3f} s/step (min {d[0]:.3f}, max {d[-1]:.3f}, "
                      f"{len(d)} steps; process {time.time() - t0:.0f} s)", flush=True)
    for r in range(args.rounds):
        print(f"round {r + 1}: this / baseline = {medians['this'][r] / medians['baseline'][r]:.3f}")
    b, t = sorted(medians["baseline"]), sorted(medians["this"])
    print(f"median over rounds: baseline {b[len(b) // 2]:.3f} s/step, this {t[len(t) // 2]:.3f} s/step, "
          f"ratio {t[len(t) // 2] / b[len(b) // 2]:.3f}")


if __name__ == "__main__":
    main()
