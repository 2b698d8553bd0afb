"""Where the time of one file goes: decode, resample, CQT, network, tracker, write, each timed alone.

    python benchmarks/profile_transcribe.py [AUDIO] [--rate 44100] [--rounds 3] [--set SECTION.KEY=VALUE ...]
                                            [--weights FILE] [--out benchmarks/results/profile.md]

The stages of ``kkoma transcribe`` (offline/transcribe.py: ``models.audio.stream_audio`` -> ``Transcriber``) run
one after another over the whole file in this process, each on the previous stage's output kept in memory, so each
is timed on its own: decode (libsndfile blocks, mixed to mono), resample (``models.resample``), CQT (the streaming
transform), network (``StreamingModel``, flush included), tracker (``NoteTracker``), write (note pairing and the
MIDI file). The file is first written as a CD rip would be (``--rate`` Hz, stereo FLAC, from AUDIO resampled by
kkoma's own resampler; ``--rate 0`` keeps AUDIO as it is), so decode and resample cost what a user's file costs.

Then the bound on two cores: ``kkoma transcribe`` streams a file in three threads (decode + resample; CQT; network
+ tracker: ``Transcriber.stream``), so one file on two cores cannot go faster than audio / max(the slowest thread,
half of all three); the whole file through ``transcribe_file`` (threaded and not) is timed beside it. Last, what
400x real time on two cores asks of the stages.

The network's cost follows the settings: ``--set model.units=384`` etc. profiles a bigger network with random
weights of that size (the cost does not depend on the values), so its cost shows before it is trained.
Figures: median of ``--rounds`` rounds (the range beside it), with the machine's load average; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import finish_report, fmt_spread, machine, snapshot, spread  # noqa: E402

STAGES = ("decode", "resample", "CQT", "network", "tracker", "write")
THREADS = {"decode": ("decode", "resample"), "transform": ("CQT",), "model": ("network", "tracker")}  # stream()'s


def cd_rip(src: Path, dst: Path, rate: int, settings) -> None:
    """``src`` at ``rate`` Hz, stereo (the mono signal twice), 16-bit FLAC."""
    import soundfile as sf

    from kkoma.models.audio import load_audio

    x = load_audio(src, settings, sample_rate=rate)
    sf.write(str(dst), np.stack([x, x], axis=1), rate, subtype="PCM_16")


class _Clock:
    """Wall [s] and CPU time of this process [s] since the last lap."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        out = (w - self.wall, c - self.cpu)
        self.wall, self.cpu = w, c
        return out


def profile_once(path: Path, settings, tr, out_dir: Path) -> tuple[dict, float, int]:
    """(wall [s], CPU [s]) per stage for one file, its length [s] and its number of notes."""
    import soundfile as sf

    from kkoma.models.audio import to_mono
    from kkoma.models.notes import write_midi
    from kkoma.models.resample import Resampler
    from kkoma.offline.transcribe import _NoteCollector

    sr, hop = settings.audio.sample_rate, settings.audio.hop_length
    block_samples = settings.transcribe.chunk_frames * hop
    t: dict[str, float] = {}
    tr.reset()

    clock = _Clock()
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        raw = [to_mono(x) for x in f.blocks(blocksize=max(1, int(block_samples / sr * rate)), dtype="float32",
                                            always_2d=True)]
    t["decode"] = clock.lap()

    clock.lap()
    rs = Resampler(rate, sr, settings)
    res = [rs.process(x) for x in raw] + [rs.flush()]
    pieces = [b[i:i + block_samples] for b in res if len(b) for i in range(0, len(b), block_samples)]
    t["resample"] = clock.lap()
    n_samples = sum(len(p) for p in pieces)

    clock.lap()
    feats = [tr.cqt.process(p) for p in pieces] + [tr.cqt.flush()]
    t["CQT"] = clock.lap()

    outs = [tr.model.process(f) for f in feats if f.shape[0]] + [tr.model.flush()]
    t["network"] = clock.lap()

    events = []
    for o in outs:
        if o["onset"].shape[0]:
            events += tr.tracker.process(o["onset"], o["frame"], o["velocity"])
    events += tr.tracker.flush()
    t["tracker"] = clock.lap()

    notes = _NoteCollector()
    notes.add(events)
    result = notes.result()
    write_midi(result, out_dir / "profile.mid", settings)
    t["write"] = clock.lap()
    return t, n_samples / sr, len(result)


def whole_file(path: Path, settings, tr, threaded: bool) -> tuple[float, float]:
    from kkoma.offline.transcribe import transcribe_file

    clock = _Clock()
    transcribe_file(path, settings, tr, threaded=threaded)
    return clock.lap()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audio", nargs="?", type=Path, default=REPO / "examples" / "example.flac")
    ap.add_argument("--rate", type=int, default=44100, help="write the file at this rate, stereo (0 = as it is)")
    ap.add_argument("--repeat", type=int, default=0,
                    help="repeat the audio to at least this many seconds (0 = as it is); short files time badly")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--random-weights", action="store_true",
                    help="random weights of the configured size (implied by --set model.*)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) to this file")
    args = ap.parse_args(argv)

    from kkoma.models.inference import export_random_weights, make_streaming_model
    from kkoma.models.pipeline import Transcriber
    from kkoma.models.settings import load_settings

    # as `kkoma transcribe` (--model WEIGHTS: the file's own settings where --set gives none)
    settings = load_settings(overrides=args.overrides, offline=True,
                             model=str(args.weights) if args.weights else None)
    tmp = Path(tempfile.mkdtemp(prefix="kkoma-profile-"))
    random_w = args.random_weights or any(o.startswith("model.") and not o.startswith(("model.weights",
                                                                                        "model.ensemble"))
                                          for o in args.overrides)
    if args.weights:
        weights = args.weights
    elif random_w:
        weights = export_random_weights(tmp / "random.npz", settings)
    else:
        weights = settings.model.weights_path
    tr = Transcriber(settings, model=make_streaming_model(settings, weights))

    src = args.audio
    if args.repeat:
        import soundfile as sf

        x, r = sf.read(str(src), dtype="float32", always_2d=True)
        reps = int(np.ceil(args.repeat * r / len(x)))
        src = tmp / "repeated.flac"
        sf.write(str(src), np.tile(x, (reps, 1)), r, subtype="PCM_16")
    path = src
    if args.rate:
        path = tmp / f"input_{args.rate}.flac"
        cd_rip(src, path, args.rate, settings)

    # One BLAS thread, as in a transcription (Transcriber.stream limits it; a worker process is limited to one):
    # the stages run one after another, so the CPU time of this process is the stage's.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    profile_once(path, settings, tr, tmp)  # warm-up: Numba loads its cache, first-call costs
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in STAGES}
    whole: dict[str, list[tuple[float, float]]] = {"threaded": [], "one thread": []}
    snaps = []
    seconds = n_notes = 0
    for _ in range(args.rounds):
        snaps.append(snapshot())
        t, seconds, n_notes = profile_once(path, settings, tr, tmp)
        for k in STAGES:
            per[k].append(t[k])
        for name, threaded in (("threaded", True), ("one thread", False)):
            whole[name].append(whole_file(path, settings, tr, threaded))

    def ms(values):  # seconds -> ms per second of audio
        return [1000.0 * v / seconds for v in values]

    cpu = {k: float(np.median([c for _, c in v])) for k, v in per.items()}
    total = sum(cpu.values())
    per_thread = {name: sum(cpu[k] for k in stages) for name, stages in THREADS.items()}
    streamed = sum(per_thread.values())
    bound = max(max(per_thread.values()), streamed / 2)
    m = machine()
    lines = [f"One file, {seconds:.1f} s of audio ({path.name}: "
             + (f"{args.rate} Hz stereo FLAC" if args.rate else "as given") + f"), {n_notes} notes; model "
             f"{Path(weights).name} ({tr.model.n_params:,} parameters, units {settings.model.units}); "
             f"median of {args.rounds} rounds (range); {m['cpus']} CPUs, {m['usable_cores']} usable.",
             "CPU time is this process's (the stages run one after another), which another program on the machine "
             "changes little; wall time is what a user waits, and grows with the load.", "",
             "| stage | CPU ms per s of audio | wall ms per s of audio | x real time alone (CPU) | share (CPU) |",
             "|---|---|---|---|---|"]
    for k in STAGES:
        lines.append(f"| {k} | {fmt_spread(spread(ms([c for _, c in per[k]])), 2)} | "
                     f"{fmt_spread(spread(ms([w for w, _ in per[k]])), 2)} | {seconds / max(cpu[k], 1e-9):.0f} | "
                     f"{100 * cpu[k] / total:.0f} % |")
    lines.append(f"| all, one after another | {1000.0 * total / seconds:.2f} | "
                 f"{1000.0 * sum(float(np.median([w for w, _ in v])) for v in per.values()) / seconds:.2f} | "
                 f"{seconds / total:.0f} | 100 % |")
    whole_txt = "; ".join(
        f"{name}: {fmt_spread(spread([seconds / w for w, _ in v]), 0)}x real time (wall), "
        f"{fmt_spread(spread(ms([c for _, c in v])), 2)} CPU ms per s" for name, v in whole.items())
    threads_txt = ", ".join(f"{name} thread {1000 * v / seconds:.2f}" for name, v in per_thread.items())
    lines += ["", f"Bound on two cores (from CPU time): {threads_txt} ms per s of audio -> one file threaded at most "
              f"{seconds / bound:.0f}x real time (write: once at the end, {1000 * cpu['write'] / seconds:.2f} ms/s).",
              f"Measured, the whole file through transcribe_file: {whole_txt}.",
              "", f"400x real time on two cores leaves 5.00 ms of CPU per second of audio for all stages, at most 2.50 "
              f"in one thread. Today: {1000 * total / seconds:.2f} ms in all ({total / seconds * 200:.2f}x that), "
              f"slowest thread {1000 * max(per_thread.values()) / seconds:.2f} ms.",
              ""]
    finish_report(lines, snaps, out=args.out, title="Per-stage profile of one file", note=f" ({m['started']})",
                  command="python benchmarks/profile_transcribe.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
