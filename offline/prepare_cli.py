"""``kkoma prepare``: make a training dataset.

    kkoma prepare synth MIDI_DIR OUT_DIR [--soundfont SF2 ...] [--holdout-soundfont SF2] [--samples DIR ...]
                        [--max-pieces N] [--max-seconds S] [--jobs J] [--no-audio] [--split SPLIT ...]
    kkoma prepare maestro MAESTRO_ROOT OUT_DIR [--max-pieces N] [--max-seconds S] [--jobs J] [--no-audio]
                          [--split SPLIT ...]
    kkoma prepare maps MAPS_ROOT OUT_DIR [--max-pieces N] [--max-seconds S] [--jobs J] [--no-audio] [--split SPLIT ...]

Re-running the same command resumes: pieces already made are skipped. Splits and formats: offline/prepare.py.
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("synth: render performance MIDI (e.g. ASAP: <Composer>/<Work>/<Performer>.mid) with FluidSynth "
                     "through data.soundfonts; works are held out by folder (data.holdout_piece_fraction) and "
                     "data.holdout_soundfont is never trained on; --samples adds recorded pianos (extra training "
                     "copies). Splits: train, valid_pieces, valid_soundfont, valid_room (and valid_samples).\n"
                     "maestro: a MAESTRO-layout folder (maestro-v*.csv + audio/MIDI pairs); train -> "
                     "train, validation -> valid_pieces, test -> test.\n"
                     "maps: a MAPS-layout folder (<piano>/<piece>.ogg|flac|wav + <piece>.mid, e.g. "
                     "../shared/data/maps-synth); data.maps_holdout_pianos are never trained on (valid_maps_piano), "
                     "pieces are held out by name on every piano (data.maps_holdout_piece_fraction: "
                     "valid_maps_pieces, and valid_maps_ambient for data.maps_ambient_pianos). Give the OUT_DIR of a "
                     "synth dataset to train on both at once.\nRe-run the same command to resume.")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("out_dir", metavar="OUT_DIR", help="dataset folder to write (created; resumed if it exists)")
        p.add_argument("--max-pieces", type=int, default=0, metavar="N",
                       help="use at most N performances (0 = all)")
        p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                       help="crop every piece to its first S seconds (default data.max_piece_seconds)")
        p.add_argument("--jobs", "-j", type=int, default=None, metavar="J",
                       help="parallel workers (default data.jobs; 0 = number of CPU cores)")
        p.add_argument("--no-audio", action="store_true",
                       help="do not write validation audio + reference MIDI under OUT_DIR/audio/")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        p.add_argument("--split", nargs="+", metavar="SPLIT", default=None,
                       help="make only these splits (valid = every split but train: the evaluation audio, without "
                            "rendering the training set; default: all)")
        p.add_argument("--offline", action="store_true",
                       help="features for the offline model: apply transcribe.overrides (its transform settings)")

    s = sub.add_parser("synth", help="render a folder of performance MIDI with FluidSynth",
                       description="Render a folder of performance MIDI files with FluidSynth into a dataset.")
    s.add_argument("midi_dir", metavar="MIDI_DIR", help="folder of .mid/.midi files (searched recursively)")
    common(s)
    s.add_argument("--soundfont", action="append", default=None, metavar="SF2",
                   help="soundfont to render with (repeatable; default data.soundfonts)")
    s.add_argument("--holdout-soundfont", default=None, metavar="SF2",
                   help="soundfont kept for validation only (default data.holdout_soundfont; '' = none)")
    s.add_argument("--samples", action="append", default=None, metavar="DIR",
                   help="folder of recorded piano notes (A0v10.ogg, C4.wav, Piano.ff.C4.aiff ...) rendering extra "
                        "training copies and valid_samples (repeatable; default data.sample_sets)")

    m = sub.add_parser("maestro", help="a MAESTRO-layout folder of recordings + MIDI",
                       description="Featurise a MAESTRO-layout folder (maestro-v*.csv, audio + MIDI pairs).")
    m.add_argument("root", metavar="MAESTRO_ROOT", help="folder holding maestro-v*.csv")
    common(m)

    a = sub.add_parser("maps", help="a MAPS-layout folder of piano recordings + MIDI (one folder per piano)",
                       description="Featurise a MAPS-layout folder (<piano>/<piece>.ogg|flac|wav + <piece>.mid) into a "
                                   "dataset, or into an existing one beside its pieces.")
    a.add_argument("root", metavar="MAPS_ROOT", help="folder holding one folder per piano")
    common(a)


def run(args: argparse.Namespace, settings) -> int:
    from kkoma.models.errors import KkomaError

    if args.max_pieces < 0:
        raise KkomaError(f"--max-pieces must be 0 (all) or more, not {args.max_pieces}.")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise KkomaError(f"--max-seconds must be more than 0, not {args.max_seconds}.")
    if args.jobs is not None and args.jobs < 0:
        raise KkomaError(f"--jobs must be 0 (all cores) or more, not {args.jobs}.")
    from kkoma.offline.prepare import prepare_maestro, prepare_maps, prepare_synth

    common = dict(max_pieces=args.max_pieces, max_seconds=args.max_seconds, jobs=args.jobs,
                  export_audio=False if args.no_audio else None, quiet=args.quiet, splits=args.split)
    if args.source == "synth":
        summary = prepare_synth(args.midi_dir, args.out_dir, settings, soundfonts=args.soundfont,
                                holdout_soundfont=args.holdout_soundfont, sample_sets=args.samples, **common)
    elif args.source == "maps":
        summary = prepare_maps(args.root, args.out_dir, settings, **common)
    else:
        summary = prepare_maestro(args.root, args.out_dir, settings, **common)
    print(summary.text(), file=sys.stderr)
    for path, reason in summary.skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 0
