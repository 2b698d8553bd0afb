"""Live soak test: no memory growth and no drift between the sample clock and event times over a long input.

Target (live issue): "No growth in memory and no drift between sample clock and event times over a 30-minute input
at ``--speed max``."

    .venv/bin/python benchmarks/bench_live_soak.py                      # 30 min, shipped weights, 44.1 kHz input
    .venv/bin/python benchmarks/bench_live_soak.py --minutes 2 --weights w.npz --rate 0
    .venv/bin/python benchmarks/bench_live_soak.py --json soak.json     # also keep every figure (RSS samples...)

How: the bundled example (``examples/example.flac``, 12.45 s, reference ``examples/example.mid``) is repeated back
to back (plus ``--gap`` seconds of silence) until ``--minutes`` of audio, resampled once to ``--rate`` Hz as a sound
card would deliver it (0 = the example's own rate), and written to a temporary FLAC. Each repetition is padded to a
whole number of engine hops, so every repetition starts at the same phase of the hop grid and of the resampler: the
per-repetition figures below should be the same from the first repetition to the last; a trend is drift.
Reference notes are the example's notes shifted by each repetition's offset (exact, from sample counts).

That file goes through ``kkoma live --input FILE --speed max --no-midi -q --events-jsonl EV --stats-json ST`` in a
child process whose resident memory (VmRSS in /proc/<pid>/status) is sampled every ``--interval`` seconds, together
with the input position reached (the ``t_emit`` of the newest event line). Reported:

* memory: RSS once processing has started (first event), after warm-up (first minute of input), at the end,
  peak (VmHWM), and the slope of a least-squares line of RSS against input time after the first minute
  [MB per 10 min of input];
* drift: per repetition, the median of ``t_note - reference onset`` over the note-ons matched to the reference
  (same pitch, onset within 50 ms, mir_eval), its change from the first to the last repetition and the slope of a
  line through all repetitions [ms per 10 min]; also, needing no reference (so meaningful with untrained weights),
  the median shift of each repetition's note-ons against the first repetition's (same pitch, nearest within 50 ms);
* latency stability: per repetition, the median of ``t_emit - t_note`` over all its note-ons;
* clock totals: ``input_seconds`` in the stats against the file length, hops processed against the expected count;
* per-hop compute p50/p99/max [ms], hops and overflows from the stats json.

Needs trained weights (``model.weights`` of config.toml, or ``--weights``) for the reference-matched figures: with
random weights (``models.inference.export_random_weights``) memory, clock and self-consistency figures are still
real, reference matches are meaningless. Exits 2 if the weights file does not exist, 1 if the live run fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ONSET_TOL = 0.05  # [s] onset matching tolerance (mir_eval's default, the usual transcription metric)


# ---------------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------------
def build_input(path: Path, audio: str, midi: str, minutes: float, rate: int, gap: float, settings) -> dict:
    """Write the repeated example to ``path`` (mono FLAC, PCM 16) and return its layout.

    Returns dict(rate [Hz], unit [samples per repetition], n_reps, seconds, offsets [s] (n_reps,),
    ref: list of (pitch, onset [s] within a repetition)).
    """
    import soundfile as sf
    import soxr

    from kkoma.models.audio import to_mono
    from kkoma.models.notes import read_midi

    x, sr = sf.read(audio, dtype="float32", always_2d=True)
    x = to_mono(x)
    if rate and rate != sr:
        x = soxr.resample(x, sr, rate, quality="VHQ").astype(np.float32)  # a device's signal, not our filter
        sr = rate
    # The engine reads round(hop * device_rate / model_rate) device samples per hop (realtime.engine.Engine.hop_dev).
    hop_dev = max(1, int(round(settings.audio.hop_length * sr / settings.audio.sample_rate)))
    n = len(x) + int(round(gap * sr))
    unit = int(math.ceil(n / hop_dev)) * hop_dev
    block = np.zeros(unit, np.float32)
    block[:len(x)] = x
    pcm = np.clip(np.round(block * 32767.0), -32768, 32767).astype(np.int16)
    n_reps = max(1, int(math.ceil(minutes * 60.0 * sr / unit)))
    with sf.SoundFile(str(path), "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(n_reps):
            f.write(pcm)
    ref = [(n_.pitch, n_.onset) for n_ in read_midi(midi)]
    return {"rate": sr, "hop_dev": hop_dev, "unit": unit, "n_reps": n_reps, "seconds": n_reps * unit / sr,
            "offsets": np.arange(n_reps) * (unit / sr), "ref": ref}


# ---------------------------------------------------------------------------------------------------------------
# The live run, with its memory sampled
# ---------------------------------------------------------------------------------------------------------------
def _kkoma_command() -> list[str]:
    exe = Path(sys.executable).parent / "kkoma"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kkoma.cli"]


def _proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM [MB] of a process, {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0]) / 1024.0  # kB -> MB
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def _last_t_emit(path: Path) -> float | None:
    """``t_emit`` [s] of the newest complete line of the events file (the input position reached), or None."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            tail = fh.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")[:-1]):  # the last piece may be a line still being written
        try:
            return float(json.loads(line)["t_emit"])
        except (ValueError, KeyError):
            continue
    return None


def run_live(wav: Path, events: Path, stats: Path, overrides: list[str], interval: float, log: Path) -> dict:
    """Run ``kkoma live`` on ``wav``; returns dict(rc, wall [s], samples: list of (wall [s], rss [MB], pos [s]|None),
    hwm [MB])."""
    cmd = _kkoma_command()
    for o in overrides:
        cmd += ["--set", o]
    cmd += ["live", "--input", str(wav), "--speed", "max", "--no-midi", "-q",
            "--events-jsonl", str(events), "--stats-json", str(stats)]
    samples: list[tuple[float, float, float | None]] = []
    hwm = 0.0
    with open(log, "w") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=err, stderr=subprocess.STDOUT)
        while True:
            st = _proc_status(child.pid)
            if child.poll() is not None:
                break
            if "VmRSS" in st:
                samples.append((time.perf_counter() - t0, st["VmRSS"], _last_t_emit(events)))
                hwm = max(hwm, st.get("VmHWM", 0.0))
            try:
                child.wait(interval)
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
    return {"rc": child.returncode, "wall": wall, "samples": samples, "hwm": hwm, "cmd": cmd}


# ---------------------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------------------
def _slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Least-squares slope dy/dx, None with fewer than 3 points or no spread in x."""
    if len(x) < 3 or np.ptp(x) <= 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def memory_figures(run: dict, input_seconds: float, warmup: float) -> dict:
    """RSS start / after warm-up / end [MB] and slope [MB per 10 min of input] after ``warmup`` seconds of input.

    The input position of a sample is the newest event's ``t_emit``; when there are too few events to place the
    samples, the position is taken as linear in wall time over the whole run (``--speed max`` runs at a steady
    rate; start-up is then counted as input, so the figure is approximate).
    """
    s = run["samples"]
    if not s:
        return {}
    wall = np.array([a for a, _, _ in s])
    rss = np.array([b for _, b, _ in s])
    pos = np.array([np.nan if c is None else c for _, _, c in s])
    known = ~np.isnan(pos)
    # "Start" is when processing has begun (first sample with a position), not the bare interpreter at exec.
    i_start = int(np.argmax(known)) if known.any() else None
    placed = "events' t_emit"
    if known.sum() < 3:
        pos = wall * (input_seconds / max(wall[-1], 1e-9))
        placed = "wall clock (scaled to the input length; few events)"
    after = ~np.isnan(pos) & (pos >= warmup)
    i_warm = int(np.argmax(after)) if after.any() else None
    slope = _slope(pos[after], rss[after]) if after.any() else None
    return {"rss_exec_mb": float(rss[0]), "rss_start_mb": None if i_start is None else float(rss[i_start]),
            "rss_warm_mb": None if i_warm is None else float(rss[i_warm]),
            "rss_end_mb": float(rss[-1]), "rss_peak_mb": float(max(run["hwm"], rss.max())),
            "slope_mb_per_10min": None if slope is None else 600.0 * slope, "n_fit": int(after.sum()),
            "n_samples": len(s), "position_from": placed}


def load_events(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
    return out


def _nearest_shifts(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> np.ndarray:
    """For each (pitch, t) of ``b``, t - t' of the nearest same-pitch note of ``a`` within the tolerance [s]."""
    by_pitch: dict[int, np.ndarray] = {}
    for p in {p for p, _ in a}:
        by_pitch[p] = np.array(sorted(t for q, t in a if q == p))
    d = []
    for p, t in b:
        ts = by_pitch.get(p)
        if ts is None or not len(ts):
            continue
        j = int(np.argmin(np.abs(ts - t)))
        if abs(ts[j] - t) <= ONSET_TOL:
            d.append(t - ts[j])
    return np.array(d)


def repetition_figures(events: list[dict], layout: dict) -> list[dict]:
    """Per repetition: note-ons, matched notes, median onset error vs reference and vs repetition 1, median
    t_emit - t_note [ms]."""
    import mir_eval

    rate, unit, offsets = layout["rate"], layout["unit"], layout["offsets"]
    ons = [e for e in events if e["type"] == "note_on"]
    per: list[list[dict]] = [[] for _ in range(layout["n_reps"])]
    for e in ons:
        # A note-on up to the tolerance before a repetition's start belongs to it (an early estimate).
        k = int(math.floor((e["t_note"] + ONSET_TOL) * rate / unit))
        if 0 <= k < layout["n_reps"]:
            per[k].append(e)
    ref = layout["ref"]
    ref_iv = np.array([[t, t + 0.1] for _, t in ref]).reshape(-1, 2)
    ref_hz = 440.0 * 2.0 ** ((np.array([p for p, _ in ref], float) - 69.0) / 12.0)
    first_local: list[tuple[int, float]] | None = None
    rows = []
    for k, evs in enumerate(per):
        local = [(e["pitch"], e["t_note"] - offsets[k]) for e in evs]
        row = {"rep": k + 1, "start_s": float(offsets[k]), "note_ons": len(evs), "matched": 0,
               "onset_err_ms": None, "self_shift_ms": None, "latency_ms": None}
        if evs:
            row["latency_ms"] = 1000.0 * float(np.median([e["t_emit"] - e["t_note"] for e in evs]))
            est_on = np.array([t for _, t in local])
            est_iv = np.stack([est_on, est_on + 0.1], axis=1)
            est_hz = 440.0 * 2.0 ** ((np.array([p for p, _ in local], float) - 69.0) / 12.0)
            if len(ref):
                m = mir_eval.transcription.match_notes(ref_iv, ref_hz, est_iv, est_hz, onset_tolerance=ONSET_TOL,
                                                       offset_ratio=None)
                row["matched"] = len(m)
                if m:
                    row["onset_err_ms"] = 1000.0 * float(np.median([est_on[j] - ref_iv[i, 0] for i, j in m]))
        if first_local is None:
            first_local = local
            row["self_shift_ms"] = 0.0 if local else None
        else:
            d = _nearest_shifts(first_local, local)
            row["self_shift_ms"] = 1000.0 * float(np.median(d)) if len(d) else None
            row["self_matched"] = int(len(d))
        rows.append(row)
    return rows


def drift_figures(rows: list[dict], key: str) -> dict:
    """Change of ``key`` from the first to the last repetition that has it, and the slope [ms per 10 min]."""
    pts = [(r["start_s"], r[key]) for r in rows if r.get(key) is not None]
    if not pts:
        return {"first": None, "last": None, "change": None, "slope_per_10min": None, "spread": None}
    t = np.array([a for a, _ in pts])
    v = np.array([b for _, b in pts])
    sl = _slope(t, v)
    return {"first": float(v[0]), "last": float(v[-1]), "change": float(v[-1] - v[0]),
            "slope_per_10min": None if sl is None else 600.0 * sl, "spread": float(np.ptp(v)), "n": len(v)}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def _f(v, fmt="{:.1f}", none="n/a") -> str:
    return none if v is None else fmt.format(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the input [min] (default 30)")
    ap.add_argument("--weights", default=None,
                    help="weights .npz (default: model.weights of config.toml; exits 2 if the file does not exist)")
    ap.add_argument("--rate", type=int, default=44100,
                    help="sample rate of the input file [Hz], as a sound card would deliver it (default 44100; "
                         "0 = the example's own rate, no resampling in the engine)")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="silence after each repetition [s] (default 0; the example ends in 1 s of decay); "
                         "rounded up so a repetition is a whole number of hops")
    ap.add_argument("--audio", default=str(ROOT / "examples" / "example.flac"), help="audio to repeat")
    ap.add_argument("--midi", default=str(ROOT / "examples" / "example.mid"), help="its reference notes")
    ap.add_argument("--interval", type=float, default=1.0, help="RSS sampling period [s] (default 1)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="input [s] excluded from the memory slope (imports, JIT, caches; default 60)")
    ap.add_argument("--rows", type=int, default=8,
                    help="repetitions shown in the per-repetition table, evenly spaced, first and last "
                         "included (default 8; 0 = all)")
    ap.add_argument("--keep", type=Path, default=None, help="write the input, events and stats here and keep them")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure (RSS samples, per repetition)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE",
                    help="setting passed to kkoma (repeatable)")
    args = ap.parse_args(argv)
    if not args.minutes > 0:
        ap.error("--minutes must be positive")

    from kkoma.models.settings import ConfigError, load_settings

    overrides = list(args.overrides)
    if args.weights:
        overrides.append(f"model.weights={Path(args.weights).resolve()}")
    try:
        s = load_settings(overrides=overrides)
    except ConfigError as e:
        print(f"bench_live_soak: {e}", file=sys.stderr)
        return 2
    if not s.model.weights_path.exists():
        print(f"bench_live_soak: weights {s.model.weights_path} do not exist (yet): trained weights will be at "
              f"{ROOT / 'models' / 'weights' / 'kkoma.npz'}; or pass --weights FILE (e.g. random weights from "
              "kkoma.models.inference.export_random_weights, for memory and clock figures only).", file=sys.stderr)
        return 2

    folder = args.keep or Path(tempfile.mkdtemp(prefix="kkoma-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        wav = folder / "soak.flac"
        events, stats, log = folder / "events.jsonl", folder / "stats.json", folder / "live.log"
        t0 = time.perf_counter()
        layout = build_input(wav, args.audio, args.midi, args.minutes, args.rate, args.gap, s)
        t_build = time.perf_counter() - t0
        print(f"input: {layout['n_reps']} x {Path(args.audio).name} ({layout['unit'] / layout['rate']:.3f} s each, "
              f"{layout['unit']} samples = {layout['unit'] // layout['hop_dev']} hops) = "
              f"{layout['seconds'] / 60:.2f} min at {layout['rate']} Hz -> {wav} "
              f"({wav.stat().st_size / 1e6:.1f} MB, built in {t_build:.1f} s)", flush=True)

        run = run_live(wav, events, stats, overrides, args.interval, log)
        if run["rc"] != 0 or not stats.exists():
            print(f"bench_live_soak: kkoma live failed (exit {run['rc']}): {' '.join(run['cmd'])}", file=sys.stderr)
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        st = json.loads(stats.read_text())
        evs = load_events(events) if events.exists() else []
        mem = memory_figures(run, st.get("input_seconds", layout["seconds"]), args.warmup)
        rows = repetition_figures(evs, layout)
        d_ref = drift_figures(rows, "onset_err_ms")
        d_self = drift_figures(rows, "self_shift_ms")
        d_lat = drift_figures(rows, "latency_ms")
        h = st["hop_compute_ms"]
        hop_ms = 1000.0 * s.audio.hop_seconds
        n_in = layout["n_reps"] * layout["unit"]
        step = min(layout["hop_dev"], s.live.block_size)  # realtime.engine.Engine.step_dev
        hops_expected = -(-n_in // step)
        in_s = st.get("input_seconds")
        ov = st.get("overflows", {})
        print(f"kkoma live --speed max: {run['wall']:.1f} s wall for {layout['seconds']:.1f} s of input "
              f"(x{layout['seconds'] / max(run['wall'], 1e-9):.1f} real time); weights {s.model.weights_path}; "
              f"{len(evs)} events; RSS sampled {mem.get('n_samples', 0)} times, input position from "
              f"{mem.get('position_from', '-')}")
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| RSS at first event / after {args.warmup:g} s of input / end / peak [MB] | "
              f"{_f(mem.get('rss_start_mb'))} / "
              f"{_f(mem.get('rss_warm_mb'))} / {_f(mem.get('rss_end_mb'))} / {_f(mem.get('rss_peak_mb'))} |")
        print(f"| RSS slope after {args.warmup:g} s [MB per 10 min of input] | "
              f"{_f(mem.get('slope_mb_per_10min'), '{:+.2f}')} ({mem.get('n_fit', 0)} samples) |")
        print(f"| onset error vs reference, median per rep [ms]: first / last / change | {_f(d_ref['first'])} / "
              f"{_f(d_ref['last'])} / {_f(d_ref['change'], '{:+.1f}')} |")
        print(f"| onset error drift, fit over reps [ms per 10 min] | {_f(d_ref['slope_per_10min'], '{:+.3f}')} |")
        print(f"| note-on shift vs rep 1 (no reference), median per rep [ms]: last / max spread | "
              f"{_f(d_self['last'], '{:+.1f}')} / {_f(d_self['spread'])} |")
        print(f"| note-on shift drift, fit over reps [ms per 10 min] | "
              f"{_f(d_self['slope_per_10min'], '{:+.3f}')} |")
        print(f"| t_emit - t_note, median per rep [ms]: first / last / change | {_f(d_lat['first'])} / "
              f"{_f(d_lat['last'])} / {_f(d_lat['change'], '{:+.1f}')} |")
        print(f"| input_seconds (stats) vs file [s] | {_f(in_s, '{:.6f}')} vs {n_in / layout['rate']:.6f} |")
        print(f"| hops processed vs expected | {st.get('hops_processed')} vs {hops_expected} |")
        print(f"| per-hop compute p50 / p99 / max [ms] (hop = {hop_ms:.0f} ms) | {_f(h['p50_ms'], '{:.3f}')} / "
              f"{_f(h['p99_ms'], '{:.3f}')} / {_f(h['max_ms'], '{:.3f}')} over {h['hops']} hops |")
        print(f"| overflows (ring / dropped samples / input) | {ov.get('ring_overflows')} / "
              f"{ov.get('ring_dropped_samples')} / {ov.get('input_overflows')} |")
        print()
        n = len(rows)
        if args.rows and n > args.rows:
            show = sorted({int(round(i * (n - 1) / (args.rows - 1))) for i in range(args.rows)}) if args.rows > 1 \
                else [n - 1]
        else:
            show = list(range(n))
        print("| rep | start [s] | note-ons | matched / ref | onset err vs ref [ms] | shift vs rep 1 [ms] | "
              "t_emit - t_note [ms] |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for i in show:
            r = rows[i]
            print(f"| {r['rep']} | {r['start_s']:.2f} | {r['note_ons']} | {r['matched']} / {len(layout['ref'])} | "
                  f"{_f(r['onset_err_ms'], '{:+.1f}')} | {_f(r['self_shift_ms'], '{:+.1f}')} | "
                  f"{_f(r['latency_ms'])} |")
        if args.json:
            out = {"layout": {k: v for k, v in layout.items() if k not in ("offsets", "ref")},
                   "wall_s": run["wall"], "memory": mem, "rss_samples": run["samples"], "drift_ref_ms": d_ref,
                   "drift_self_ms": d_self, "latency_ms": d_lat, "repetitions": rows, "stats": st,
                   "weights": str(s.model.weights_path)}
            args.json.write_text(json.dumps(out, indent=1) + "\n")
            print(f"\nall figures: {args.json}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
