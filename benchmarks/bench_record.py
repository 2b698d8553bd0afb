"""`kkoma record` against `kkoma transcribe` on the same audio: the file's accuracy and the port's latency.

For each audio file with a reference MIDI beside it (``x.flac`` + ``x.mid``: the bundled example, or the
``audio/<split>/`` folders a ``kkoma prepare`` dataset exports), runs the two commands in this process:

* ``kkoma record OUT --input F --speed max --no-midi --events-jsonl EV`` (the files model writes the file, the live
  model sends the events), and
* ``kkoma transcribe F``,

and prints mir_eval's note onset F1 (50 ms) of both files against the reference, and the live events' latency from
the reference onset to the note-on (``t_emit``, the sample clock; matched notes only; compute comes on top live).

    .venv/bin/python benchmarks/bench_record.py                                  # the bundled example
    .venv/bin/python benchmarks/bench_record.py /tmp/data/audio/valid_*          # folders of .flac + .mid
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pairs(paths: list[str]) -> list[tuple[Path, Path]]:
    out = []
    for p in map(Path, paths):
        files = sorted(p.glob("*.flac")) + sorted(p.glob("*.wav")) if p.is_dir() else [p]
        out += [(f, f.with_suffix(".mid")) for f in files if f.with_suffix(".mid").exists()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*", default=[str(ROOT / "examples" / "example.flac")],
                    help="audio files or folders of them, each with its reference .mid beside it")
    args = ap.parse_args(argv)

    import mir_eval

    from kkoma.cli import main as kkoma
    from kkoma.models.notes import notes_to_arrays, read_midi

    def onset_f1(ref, est):
        ri, rh, _ = notes_to_arrays(ref)
        ei, eh, _ = notes_to_arrays(est)
        if not len(est):
            return 0.0
        return mir_eval.transcription.precision_recall_f1_overlap(ri, rh, ei, eh, offset_ratio=None)[2]

    rows, lat_all = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, (audio, ref_path) in enumerate(pairs(args.inputs)):
            rec, ev, tr = tmp / f"{i}.mid", tmp / f"{i}.jsonl", tmp / f"tr{i}"
            assert kkoma(["record", str(rec), "--input", str(audio), "--speed", "max", "--no-midi", "-q",
                          "--events-jsonl", str(ev)]) == 0
            assert kkoma(["transcribe", str(audio), "-o", str(tr), "-q"]) == 0
            ref = read_midi(ref_path)
            f_rec = onset_f1(ref, read_midi(rec))
            f_tr = onset_f1(ref, read_midi(next(tr.glob("*.mid"))))
            ons = [json.loads(line) for line in open(ev)]
            ons = [d for d in ons if d["type"] == "note_on"]
            live_notes_iv = np.array([[d["t_note"], d["t_note"] + 0.1] for d in ons]).reshape(-1, 2)
            live_hz = 440.0 * 2.0 ** ((np.array([d["pitch"] for d in ons]) - 69) / 12.0)
            ri, rh, _ = notes_to_arrays(ref)
            matched = mir_eval.transcription.match_notes(ri, rh, live_notes_iv, live_hz, offset_ratio=None) \
                if len(ons) else []
            lat = [1000.0 * (ons[j]["t_emit"] - ri[k, 0]) for k, j in matched]
            lat_all += lat
            f_live = onset_f1(ref, [_Note(d) for d in ons])
            rows.append((audio, f_rec, f_tr, f_live, np.median(lat) if lat else float("nan")))
            print(f"{audio.parent.name}/{audio.name}: onset F1 record {100 * f_rec:.1f}, transcribe "
                  f"{100 * f_tr:.1f} (diff {100 * (f_rec - f_tr):+.1f}); live events {100 * f_live:.1f}, "
                  f"onset -> note-on median {rows[-1][-1]:.1f} ms", flush=True)
    if not rows:
        print("no audio file with a reference .mid beside it")
        return 1
    m = np.mean([r[1:4] for r in rows], axis=0) * 100
    print(f"mean over {len(rows)} files: onset F1 record {m[0]:.1f}, transcribe {m[1]:.1f} (diff {m[0] - m[1]:+.2f}, "
          f"largest per-file |diff| {max(abs(r[1] - r[2]) for r in rows) * 100:.2f}); live events {m[2]:.1f}; "
          f"onset -> note-on over all {len(lat_all)} matched live notes: median {np.median(lat_all):.1f} ms, "
          f"p90 {np.percentile(lat_all, 90):.1f} ms")
    return 0


class _Note:
    """A live note-on as mir_eval needs it (onset, 0.1 s long, pitch)."""

    def __init__(self, d):
        self.onset, self.offset, self.pitch, self.velocity = d["t_note"], d["t_note"] + 0.1, d["pitch"], 64


if __name__ == "__main__":
    sys.exit(main())
