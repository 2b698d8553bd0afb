"""``kkoma note-set SOURCE OUT_DIR``: a synthesiser's piano as a sample set (offline/note_set.py).

Imports only the standard library at module level so ``kkoma --help`` stays instant.
"""
from __future__ import annotations

import argparse

from kkoma.offline.note_set import HOLD_S, RATE, SECONDS, VELOCITIES  # stdlib-only module: the one definition


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help=".sf2/.sf3 soundfont or TiMidity++ .cfg")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the note files (created)")
    p.add_argument("--program", type=int, default=0, help="GM program of bank 0 (default 0, Acoustic Grand)")
    p.add_argument("--velocities", type=int, nargs="+", default=list(VELOCITIES),
                   help="one velocity layer per value (default: %(default)s)")
    p.add_argument("--hold", type=float, default=HOLD_S, help="[s] how long each key is held (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=SECONDS,
                   help="[s] length of each file, the release after the hold (default: %(default)s)")
    p.add_argument("--rate", type=int, default=RATE, help="[Hz] sample rate of the files (default: %(default)s)")


def run(args: argparse.Namespace, settings) -> int:
    import sys

    from kkoma.offline.note_set import make_note_set

    files = make_note_set(args.source, args.out_dir, program=args.program, velocities=args.velocities,
                          hold=args.hold, seconds=args.seconds, rate=args.rate, gain=settings.data.render_gain)
    print(f"{args.out_dir}: {len(files)} notes", file=sys.stderr)
    return 0
