"""``kkoma evaluate``: score transcriptions against reference MIDI (mir_eval), from folders or a whole dataset.

    kkoma evaluate --pred OUT/ --ref REF/ [--json scores.json]        # pairs X.mid with X.mid by name
    kkoma evaluate --dataset DATA/ [--split valid_soundfont ...]      # transcribes DATA/audio/<split>/*.flac first

Imports only the standard library at module level so ``kkoma --help`` stays instant.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", metavar="DIR", help="folder of predicted .mid files")
    p.add_argument("--ref", metavar="DIR", help="folder of reference .mid files (paired with --pred by file name; "
                                                "sustain pedal extends the reference notes)")
    p.add_argument("--dataset", metavar="DIR",
                   help="a dataset made by `kkoma prepare`: transcribe DIR/audio/<split>/*.flac with the file "
                        "pipeline and score against the .mid beside each")
    p.add_argument("--split", nargs="+", metavar="SPLIT", default=None,
                   help="with --dataset: the splits to evaluate (default: every valid_* split with audio)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="with --dataset: keep the transcriptions in DIR/<split>/ (default: a temporary folder)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every score to FILE (JSON)")
    p.add_argument("--summary-only", action="store_true", help="print only the mean rows, not one row per file")
    p.add_argument("-q", "--quiet", action="store_true", help="no transcription progress (with --dataset)")


def run(args: argparse.Namespace, settings) -> int:
    import sys

    from kkoma.models.errors import KkomaError, require
    from kkoma.offline.evaluate import evaluate_dataset, evaluate_dirs, format_table, write_json

    require("mir_eval", "kkoma evaluate")  # before transcribing a dataset, not after

    if args.dataset:
        if args.pred or args.ref:
            raise KkomaError("give either --dataset, or --pred and --ref, not both.")
        report = evaluate_dataset(args.dataset, settings, args.split, out_dir=args.out, quiet=args.quiet)
    else:
        if not (args.pred and args.ref):
            raise KkomaError("give --pred DIR and --ref DIR (folders of .mid files), or --dataset DIR.")
        if args.split or args.out:
            raise KkomaError("--split and --out go with --dataset.")
        report = evaluate_dirs(args.pred, args.ref, settings)
    print(format_table(report, per_file=not args.summary_only))
    for f, reason in report.failures:
        print(f"failed {f}: {reason}", file=sys.stderr)
    if args.json:
        write_json(report, args.json)
        print(f"scores written to {args.json}")
    if not any(report.groups.values()):
        raise KkomaError("no file could be scored.")
    return 1 if report.failures else 0
