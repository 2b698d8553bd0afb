"""``kkoma diagnose AUDIO_DIR``: where a model's note errors are, per register and by kind (offline/diagnose.py).

Uses the file settings (``transcribe.overrides``), as ``kkoma transcribe``; ``kkoma --set 'transcribe.overrides=[]'
diagnose ...`` diagnoses the live model. Imports only the standard library at module level.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio_dir", type=Path, metavar="AUDIO_DIR",
                   help="audio files with reference X.mid beside (DATASET/audio/<split>)")
    p.add_argument("--max-files", type=int, default=0, help="the first N files in name order (0 = all)")
    p.add_argument("--pred", type=Path, default=None, metavar="DIR",
                   help="read the transcription of X.flac from DIR/X.mid instead of transcribing (e.g. the folder "
                        "`kkoma evaluate --dataset DATA --out OUT` writes, OUT/<split>)")
    p.set_defaults(offline=True)


def run(args: argparse.Namespace, settings) -> int:
    from kkoma.offline.diagnose import diagnose, format_report

    report, n_files = diagnose(settings, args.audio_dir, max_files=args.max_files, pred=args.pred)
    source = f"transcriptions in {args.pred}" if args.pred is not None else settings.model.name
    print(format_report(report, f"{args.audio_dir} ({n_files} files, {source})"))
    return 0
