"""Live engine benchmark: per-hop compute time and latency from true onset to note-on, on a rendered file.

The file goes through the real live engine (ring buffer -> resampler -> Transcriber -> MIDI sink) from
:class:`realtime.audio_in.FileInput`, at ``--speed max`` (default: compute figures without waiting) or ``realtime``.
Latency is measured on the sample clock: ``t_emit`` (device-clock time of the last input sample consumed when the
note-on was sent) minus the reference onset of the note it matches (mir_eval matching, 50 ms onset tolerance on the
tracker's own onset estimate). Compute time comes on top of it live; both are printed.

    .venv/bin/python benchmarks/bench_live.py                         # bundled example, shipped weights
    .venv/bin/python benchmarks/bench_live.py --device-rate 48000     # as from a 48 kHz sound card
    .venv/bin/python benchmarks/bench_live.py --audio x.flac --midi x.mid --weights w.npz
    .venv/bin/python benchmarks/bench_live.py --record                # + kkoma record's files model beside it
    .venv/bin/python benchmarks/bench_live.py --record --files-model pitch   # ... with kkoma record --files-model

``--record``: the engine as ``kkoma record`` runs it, the files model (the offline settings) fed the same audio on
its own thread after each step's live events are sent. Run once without it and once with it in the same process; the per-hop compute of
both and their ratio are printed (the note-on latency is the live model's in both).

Without trained weights (models/weights/kkoma.npz missing) it runs tiny random weights: the compute figures are
real (the cost does not depend on the weight values), the latency figure is not available (nothing to match).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio", default=str(ROOT / "examples" / "example.flac"))
    ap.add_argument("--midi", default=str(ROOT / "examples" / "example.mid"), help="reference notes")
    ap.add_argument("--weights", default=None, help="weights .npz (default: model.weights from config.toml)")
    ap.add_argument("--device-rate", type=int, default=0, help="resample the file to this rate first [Hz] "
                    "(as a sound card would deliver it); 0 = the file's rate")
    ap.add_argument("--speed", choices=("max", "realtime"), default="max")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    ap.add_argument("--record", action="store_true",
                    help="also run the files model beside the live one (as kkoma record does) and compare")
    ap.add_argument("--files-model", default=None, metavar="NAME|FILE",
                    help="with --record: the file's model, as kkoma record --files-model (default: offline)")
    args = ap.parse_args(argv)
    if args.files_model and not args.record:
        ap.error("--files-model goes with --record")

    import soundfile as sf
    import soxr

    from kkoma.models.audio import to_mono
    from kkoma.models.notes import notes_to_arrays, read_midi
    from kkoma.models.settings import load_settings
    from kkoma.realtime.audio_in import FileInput
    from kkoma.realtime.engine import Engine, make_live_transcriber, make_record_transcriber
    from kkoma.realtime.midi_out import NullMidiOut

    overrides = list(args.overrides)
    s = load_settings(overrides=overrides)
    trained = True
    tmp = tempfile.TemporaryDirectory()
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    elif not s.model.weights_path.exists():
        from kkoma.models.inference import export_random_weights

        trained = False
        w = Path(tmp.name) / "random.npz"
        export_random_weights(w, s)
        overrides.append(f"model.weights={w}")
    s = load_settings(overrides=overrides)

    x, sr = sf.read(args.audio, dtype="float32", always_2d=True)
    x = to_mono(x)
    path = args.audio
    if args.device_rate and args.device_rate != sr:
        # The "device" signal comes from soxr (not our resampler), as a sound card's would.
        x = soxr.resample(x, sr, args.device_rate, quality="VHQ").astype(np.float32)
        sr = args.device_rate
        path = str(Path(tmp.name) / "input.wav")
        sf.write(path, x, sr, subtype="FLOAT")

    def run(file_model: bool):
        ons = []  # (event, t_emit)
        source = FileInput(s, path, speed=args.speed)
        files = None
        if file_model:
            files = make_record_transcriber(load_settings(overrides=args.overrides, offline=True,
                                                         model=args.files_model, network_keys=False))
        engine = Engine(s, source, NullMidiOut(s), transcriber=make_live_transcriber(s), file_transcriber=files,
                        on_event=lambda e, t, v: ons.append((e, t)) if e.kind == "on" else None)
        engine.start()
        engine.join()
        if engine.error:
            raise engine.error
        return engine, ons

    hop_ms = 1000 * s.audio.hop_seconds
    engine, ons = run(False)
    rep = engine.report()
    h = rep["hop_compute_ms"]
    if args.record:
        engine2, ons2 = run(True)
        rep2 = engine2.report()
        h2, f2 = rep2["hop_compute_ms"], rep2["file_model"]["step_compute_ms"]
        assert [(e.pitch, e.time) for e, _ in ons2] == [(e.pitch, e.time) for e, _ in ons]  # the port's notes
        fb = engine2.file_transcriber.latency_budget()
        print(f"record (live + files model {engine2.file_transcriber.settings.model.name}, its notes "
              f"{fb['total_ms']:.0f} ms behind): per-hop compute [ms] p50 {h2['p50_ms']:.3f} "
              f"({h2['p50_ms'] / h['p50_ms']:.2f}x live alone), p99 {h2['p99_ms']:.3f} "
              f"({h2['p99_ms'] / h['p99_ms']:.2f}x), max {h2['max_ms']:.3f}, mean {h2['mean_ms']:.3f} "
              f"({h2['mean_ms'] / h['mean_ms']:.2f}x; real-time factor {h2['mean_ms'] / hop_ms:.3f}); the files "
              f"model on its thread per step p50 {f2['p50_ms']:.3f}, p99 {f2['p99_ms']:.3f}, max {f2['max_ms']:.3f}, "
              f"mean {f2['mean_ms']:.3f}")
    print(f"input: {args.audio} ({len(x) / sr:.1f} s at {sr} Hz, block {s.live.block_size} samples, "
          f"resampler look-ahead {engine.resampler.lookahead_ms:.2f} ms); weights: {'trained' if trained else 'RANDOM (untrained)'}")
    print("latency budget [ms]: " + ", ".join(f"{k} {v:.1f}" for k, v in rep["latency_budget_ms"].items()))
    print(f"live alone: per-hop compute [ms] over {h['hops']} hops (hop = {hop_ms:.0f} ms of audio): p50 {h['p50_ms']:.3f}, "
          f"p99 {h['p99_ms']:.3f}, max {h['max_ms']:.3f}, mean {h['mean_ms']:.3f}  "
          f"(real-time factor {h['mean_ms'] / hop_ms:.3f})")
    print(f"overflows: {rep['overflows']}")

    if not trained and not args.weights:
        print("onset -> note-on latency: n/a (untrained weights; nothing to match)")
        return 0
    import mir_eval

    ref = read_midi(args.midi)
    ref_iv, ref_hz, _ = notes_to_arrays(ref)
    if not ons:
        print("onset -> note-on latency: n/a (no notes detected)")
        return 0
    est_on = np.array([e.time for e, _ in ons])
    est_iv = np.stack([est_on, est_on + 0.1], axis=1)
    est_hz = 440.0 * 2.0 ** ((np.array([e.pitch for e, _ in ons]) - 69) / 12.0)
    matched = mir_eval.transcription.match_notes(ref_iv, ref_hz, est_iv, est_hz, offset_ratio=None)
    p, r, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(ref_iv, ref_hz, est_iv, est_hz,
                                                                      offset_ratio=None)
    lat = np.array([ons[j][1] - ref_iv[i, 0] for i, j in matched]) * 1000
    est_err = np.array([ons[j][0].time - ref_iv[i, 0] for i, j in matched]) * 1000
    print(f"onset P/R/F1 (50 ms): {p:.3f}/{r:.3f}/{f1:.3f} ({len(matched)} of {len(ref)} reference notes matched)")
    if len(lat):
        print(f"true onset -> note-on sent (sample clock) [ms]: p50 {np.median(lat):.1f}, p90 "
              f"{np.percentile(lat, 90):.1f}, p95 {np.percentile(lat, 95):.1f}, max {lat.max():.1f}, min {lat.min():.1f}; onset estimate error "
              f"p50 {np.median(est_err):.1f} ms; add the per-hop compute for the wall-clock latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
