"""kkoma beside basic-pitch (Spotify, ICASSP 2022) on rendered piano pieces neither was trained on, in one run.

    python benchmarks/compare_peers.py --dataset DATA [--split valid_soundfont valid_room] [--limit N] [--rounds 3]
                                       [--json F] [--out benchmarks/results/compare_peers.md]
    python benchmarks/compare_peers.py --audio-dir DIR        # any folder of X.flac/.wav with X.mid beside

For each split: both systems transcribe the same files to MIDI, and both are scored by the same code
(``offline.evaluate``: mir_eval onset F1 at 50 ms, onset+offset F1 with offset_ratio 0.2, onset+offset+velocity F1,
frame F1 at kkoma's frame rate; references read with sustain-pedal extension). Speed: × real time = audio seconds /
seconds spent transcribing, in one warm process per system, files one after another (model loading, imports and a
first transcription of a 2-second warm-up excerpt excluded for both: JIT and first-inference costs are start-up,
measured by the cold start); cold start = wall time of a fresh process transcribing one 10-second excerpt to a MIDI
file (imports, model loading and JIT included). kkoma runs as ``kkoma transcribe`` runs one file on this machine's
cores (its threads from offline/transcribe.py:resolve_layout); basic-pitch as ONNX runtime sets itself up (one
thread per core).

Speed on a shared machine: the systems are timed in alternating rounds (``--rounds``; kkoma, basic-pitch, kkoma,
basic-pitch ...), and every speed is printed as the median and range over the rounds, with the ratio taken round by
round (each round's kkoma over the same round's basic-pitch), so a change in load falls on both. CPU seconds per
minute of audio are printed too, and their ratio: another program's load changes them little, so they are the
figure to compare across machines and days. The CPU count and the load average before each timed run are printed
beside the tables, with a warning when the load was too high for the speeds to mean much (benchmarks/machine.py).
Figures print as markdown tables (``--out`` writes them to a file too).

basic-pitch runs in its own virtual environment, ``/work/peers-venv`` by default (``--peers-venv``), because its
pinned dependencies (TensorFlow < 2.15.1, resampy < 0.4.3) clash with kkoma's. The script creates it when missing
(benchmarks/requirements-peers.txt):

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install --no-deps basic-pitch==0.4.0
    /work/peers-venv/bin/pip install -r benchmarks/requirements-peers.txt

(``--no-deps`` skips TensorFlow: the second line is exactly what ``basic_pitch.inference`` imports at inference
time, and with onnxruntime present basic-pitch picks the ONNX model it ships, ``saved_models/icassp_2022/nmp.onnx``.)
basic-pitch runs with its defaults (onset 0.5, frame 0.3, minimum note 127.7 ms, melodia trick on); its note
amplitude becomes the MIDI velocity (as its own ``predict`` writes it). kkoma runs with config.toml as it is.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import fmt_spread, load_line, load_warning, machine, snapshot, spread  # noqa: E402

DEFAULT_VENV = Path("/work/peers-venv")
PEER = "basic-pitch==0.4.0"
PEER_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-peers.txt"
AUDIO_EXT = (".flac", ".wav", ".ogg", ".mp3")

# Runs inside the peers venv: transcribe each file with basic-pitch, write X.mid, report timings as JSON lines.
BASIC_PITCH_RUNNER = r"""
import json, logging, os, sys, time
t_start = time.perf_counter()
logging.disable(logging.WARNING)
import warnings; warnings.filterwarnings("ignore")
from basic_pitch import ICASSP_2022_MODEL_PATH
from basic_pitch.inference import Model, predict
model = Model(ICASSP_2022_MODEL_PATH)
import contextlib, io
warmup = os.environ.get("KKOMA_PEERS_WARMUP")
if warmup:
    with contextlib.redirect_stdout(io.StringIO()):
        predict(warmup, model)
print(json.dumps({"event": "ready", "seconds": time.perf_counter() - t_start, "model": str(ICASSP_2022_MODEL_PATH)}),
      flush=True)
out_dir = sys.argv[1]
for path in sys.argv[2:]:
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        _, midi, notes = predict(path, model)
    stem = os.path.splitext(os.path.basename(path))[0]
    midi.write(os.path.join(out_dir, stem + ".mid"))
    print(json.dumps({"event": "file", "path": path, "seconds": time.perf_counter() - t0, "notes": len(notes),
                      "cpu_s": time.process_time() - c0, "since_start": time.perf_counter() - t_start}), flush=True)
"""


def ensure_peers_venv(venv: Path) -> Path:
    """The venv's python, creating the venv and installing basic-pitch (ONNX inference only) if needed."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import basic_pitch.inference, onnxruntime"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with basic-pitch (ONNX runtime, no TensorFlow)...", file=sys.stderr)
    if not py.exists():
        subprocess.run([sys.executable if sys.prefix == sys.base_prefix else "python3", "-m", "venv", str(venv)],
                       check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--no-deps", PEER], check=True)
    subprocess.run(pip + ["-r", str(PEER_REQUIREMENTS)], check=True)
    subprocess.run(probe, check=True)
    return py


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(audio, reference .mid) pairs in ``folder``, by stem."""
    pairs = []
    for a in sorted(folder.iterdir()):
        if a.suffix.lower() in AUDIO_EXT:
            ref = a.with_suffix(".mid")
            if ref.exists():
                pairs.append((a, ref))
    return pairs


def make_excerpt(src: Path, dst: Path, seconds: float = 10.0) -> None:
    import soundfile as sf

    with sf.SoundFile(str(src)) as f:
        x = f.read(int(seconds * f.samplerate), dtype="float32")
        sf.write(str(dst), x, f.samplerate)


def run_kkoma(files: list[Path], out_dir: Path, s, warmup: Path, tr) -> dict:
    """Transcribe in this process with the transcriber ``tr``, one file after another, as ``kkoma transcribe`` does
    on this machine's cores (:func:`offline.transcribe.resolve_layout`'s threads); the seconds exclude imports,
    model loading and the warm-up excerpt. ``cpu_s``: this process's CPU time over the files."""
    from kkoma.offline.transcribe import Job, resolve_layout, run_job, transcribe_file

    threaded = resolve_layout(s, 1).threaded
    transcribe_file(warmup, s, tr, threaded=threaded)
    audio_s, busy = 0.0, 0.0
    cpu0 = time.process_time()
    for f in files:
        o = run_job(Job(f, {"mid": out_dir / f"{f.stem}.mid"}, str(f)), s, tr, threaded=threaded)
        if o.status != "done":
            raise SystemExit(f"kkoma failed on {f}: {o.reason}")
        audio_s += o.seconds
        busy += o.elapsed
    return {"audio_s": audio_s, "busy_s": busy, "cpu_s": time.process_time() - cpu0}


def run_basic_pitch(py: Path, files: list[Path], out_dir: Path, warmup: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KKOMA_PEERS_WARMUP=str(warmup))
    p = subprocess.run([str(py), "-c", BASIC_PITCH_RUNNER, str(out_dir)] + [str(f) for f in files],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"basic-pitch failed:\n{p.stderr[-3000:]}")
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    busy = sum(e["seconds"] for e in events if e["event"] == "file")
    cpu = sum(e["cpu_s"] for e in events if e["event"] == "file")
    ready = next(e["seconds"] for e in events if e["event"] == "ready")
    return {"ready_s": ready, "busy_s": busy, "cpu_s": cpu}


def cold_start(cmd: list[str], env=None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"cold-start run failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return wall


def ratio_rounds(rounds: list[dict], key: str) -> dict:
    """Per round: kkoma's figure over basic-pitch's (speed: x real time; cost: basic-pitch's CPU over kkoma's)."""
    if key == "x_real_time":
        return spread([r["kkoma"]["x_real_time"] / r["basic-pitch"]["x_real_time"] for r in rounds])
    return spread([r["basic-pitch"]["cpu_s"] / r["kkoma"]["cpu_s"] for r in rounds])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="a dataset from `kkoma prepare` (uses DATASET/audio/<split>/)")
    src.add_argument("--audio-dir", type=Path, help="a folder of audio files with reference X.mid beside")
    ap.add_argument("--split", nargs="+", default=["valid_soundfont", "valid_room"])
    ap.add_argument("--limit", type=int, default=0, help="at most N files per split (0 = all)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timed rounds, each kkoma then basic-pitch over every file (accuracy from the first)")
    ap.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--out", type=Path, help="also write the printed tables (markdown) to this file")
    ap.add_argument("--weights", type=Path,
                    help="kkoma weights (default: the offline model, as kkoma transcribe: transcribe.overrides)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a kkoma settings override (e.g. model.harmonic_units=16 for kkoma_harmonic.npz)")
    args = ap.parse_args(argv)

    from kkoma.models.pipeline import make_transcriber
    from kkoma.models.settings import load_settings
    from kkoma.offline.evaluate import evaluate_dirs, format_table

    overrides = list(args.overrides) + ([f"model.weights={args.weights.resolve()}"] if args.weights else [])
    settings = load_settings(overrides=overrides, offline=True)
    if not settings.model.weights_path.exists():
        raise SystemExit(f"no kkoma weights at {settings.model.weights_path}: train a model (`kkoma train`) or "
                         "pass --weights FILE")
    py = ensure_peers_venv(args.peers_venv)
    peer_version = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('basic-pitch'))"],
                                  capture_output=True, text=True).stdout.strip() or "?"
    if args.dataset:
        groups = {s: args.dataset / "audio" / s for s in args.split}
    else:
        groups = {args.audio_dir.name: args.audio_dir}
    results: dict = {"machine": machine(), "basic_pitch_version": peer_version, "groups": {}, "cold_start_s": {},
                     "rounds": args.rounds}
    snaps: list[dict] = []
    tr = make_transcriber(settings)  # one warm kkoma process for every round, as basic-pitch's model is per round
    with tempfile.TemporaryDirectory(prefix="kkoma-peers-") as tmp:
        tmp = Path(tmp)
        first = None
        for name, folder in groups.items():
            if not folder.is_dir():
                raise SystemExit(f"{folder} is not a folder")
            pairs = find_pairs(folder)[: args.limit or None]
            if not pairs:
                raise SystemExit(f"{folder} holds no audio with a reference .mid beside it")
            first = first or pairs[0][0]
            files = [a for a, _ in pairs]
            ref_dir = tmp / name / "ref"
            ref_dir.mkdir(parents=True)
            for _, r in pairs:
                os.symlink(r.resolve(), ref_dir / r.name)  # a relative --dataset would leave the link dangling
            warm = tmp / name / "warmup2s.flac"
            make_excerpt(files[0], warm, 2.0)
            rounds, means = [], {}
            for r in range(args.rounds):
                per = {}
                for system in ("kkoma", "basic-pitch"):  # alternating: kkoma, peer, kkoma, peer ...
                    out = tmp / name / f"{system}{r}"
                    out.mkdir()
                    print(f"[{name}] round {r + 1}/{args.rounds}, {system}: {len(files)} files...", file=sys.stderr)
                    snaps.append(snapshot())
                    per[system] = (run_kkoma(files, out, settings, warm, tr) if system == "kkoma"
                                   else run_basic_pitch(py, files, out, warm))
                    if r == 0:  # both are deterministic: the first round's outputs are scored
                        report = evaluate_dirs(out, ref_dir, settings, group=system)
                        print(format_table(report, per_file=False), file=sys.stderr)
                        means[system] = report.means(system)
                audio_s = per["kkoma"]["audio_s"]
                for system in per:
                    per[system]["audio_s"] = audio_s
                    per[system]["x_real_time"] = audio_s / per[system]["busy_s"]
                print(f"[{name}] round {r + 1}: kkoma {per['kkoma']['x_real_time']:.1f}x, basic-pitch "
                      f"{per['basic-pitch']['x_real_time']:.1f}x real time; load {snaps[-1]['load1']:.1f}",
                      file=sys.stderr)
                rounds.append(per)
            results["groups"][name] = {"files": len(files), "audio_s": rounds[0]["kkoma"]["audio_s"],
                                       "mean": means, "rounds": rounds}

        clip = tmp / "clip10s.flac"
        make_excerpt(first, clip)
        cold_out = tmp / "cold"
        cold_out.mkdir()
        cold: dict[str, list[float]] = {"kkoma": [], "basic-pitch": []}
        for r in range(args.rounds):
            cold["kkoma"].append(cold_start(
                [sys.executable, "-m", "kkoma.cli", *[a for o in overrides for a in ("--set", o)], "transcribe",
                 str(clip), "-o", str(cold_out / "k"), "-q", "--overwrite"]))
            cold["basic-pitch"].append(cold_start(
                [str(py), "-c", BASIC_PITCH_RUNNER, str(cold_out), str(clip)],
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")))
        results["cold_start_s"] = {k: spread(v) for k, v in cold.items()}

    lines = [f"kkoma ({settings.model.name}) vs basic-pitch {peer_version} ONNX; F1 in % (mir_eval, first "
             "round; both are deterministic); x real time excludes start-up; cold start = fresh process, one 10 s "
             f"file. {args.rounds} alternating rounds (kkoma, basic-pitch, kkoma, ...): median (range).", "",
             "| split | system | files | onset F1 | onset+offset F1 | +velocity F1 | frame F1 | x real time "
             "| CPU s per min of audio |", "|---|---|---|---|---|---|---|---|---|"]
    for name, g in results["groups"].items():
        for system in ("kkoma", "basic-pitch"):
            m = g["mean"][system]
            x = spread([r[system]["x_real_time"] for r in g["rounds"]])
            cpu = spread([60.0 * r[system]["cpu_s"] / r[system]["audio_s"] for r in g["rounds"]])
            lines.append(f"| {name} | {system} | {g['files']} | {100 * m['onset_f1']:.1f} | "
                         f"{100 * m['onset_offset_f1']:.1f} | {100 * m['velocity_f1']:.1f} | {100 * m['frame_f1']:.1f} "
                         f"| {fmt_spread(x)} | {fmt_spread(cpu, 2)} |")
    lines += ["", "| split | kkoma / basic-pitch speed (x real time) | basic-pitch / kkoma CPU time |", "|---|---|---|"]
    every = []
    for name, g in results["groups"].items():
        every += g["rounds"]
        lines.append(f"| {name} | {fmt_spread(ratio_rounds(g['rounds'], 'x_real_time'), 2)} | "
                     f"{fmt_spread(ratio_rounds(g['rounds'], 'cpu'), 2)} |")
    if len(results["groups"]) > 1:
        lines.append(f"| every split's rounds | {fmt_spread(ratio_rounds(every, 'x_real_time'), 2)} | "
                     f"{fmt_spread(ratio_rounds(every, 'cpu'), 2)} |")
    c = results["cold_start_s"]
    lines += ["", f"Cold start [s]: kkoma {fmt_spread(c['kkoma'], 2)}, basic-pitch {fmt_spread(c['basic-pitch'], 2)}.",
              "", load_line(snaps)]
    warning = load_warning(snaps)
    if warning:
        lines.append(warning)
    results["load"] = snaps
    results["load_warning"] = warning
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/compare_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(f"# kkoma beside basic-pitch\n\n`{cmd.strip()}` ({results['machine']['started']}, "
                            f"{results['machine']['cpus']} CPUs)\n\n{text}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
