"""``kkoma tune DATASET WEIGHTS``: choose the note tracker's thresholds on a validation split (offline/tune.py).

The settings are WEIGHTS' as ``kkoma transcribe --model WEIGHTS`` has them: the file's own transform and network,
on the offline settings (``transcribe.overrides``) for a file of one's own or the offline model, on the live ones
for the shipped live model (``kkoma tune DATASET live``, on a dataset prepared without ``--offline``).
Imports only the standard library at module level so ``kkoma --help`` stays instant.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder written by `kkoma prepare`")
    p.add_argument("weights", metavar="WEIGHTS",
                   help="the model: a weights file (a kkoma.npz) or a shipped model's name; it brings the settings it "
                        "was trained with, as --model does")
    p.add_argument("--split", default="valid_pieces", help="the split to tune on (default: valid_pieces)")
    p.add_argument("--onset", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                   help="onset_threshold values")
    p.add_argument("--frame", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5], help="frame_threshold values")
    p.add_argument("--hold", type=float, nargs="+", default=[0.0, 20.0, 30.0, 50.0], help="offset_hold_ms values")
    p.add_argument("--restrike", type=float, nargs="+", default=None,
                   help="restrike_margin values (a sounding key is re-struck at onset_threshold + this); "
                        "default: the settings' own")
    p.add_argument("--max-pieces", type=int, default=0,
                   help="pieces scored, spread evenly over the split (it lists them by composer); 0 = all")
    p.set_defaults(offline=True)  # the file settings (transcribe.overrides), as the model is used on files


def run(args: argparse.Namespace, settings) -> int:
    from kkoma.models.catalog import resolve_model
    from kkoma.models.settings import ConfigError, load_settings
    from kkoma.offline.tune import tune

    def model(name):  # a model is its weights file and the files averaged with it (an ensemble's entry)
        path, shipped = resolve_model(name)
        return path.resolve(), tuple(p.resolve() for p in (shipped.ensemble_paths if shipped else ()))

    if args.model is not None and model(args.model) != model(args.weights):
        raise ConfigError(f"--model {args.model} is not WEIGHTS ({args.weights}): kkoma tune tunes WEIGHTS; drop "
                          "--model.")
    # The settings for WEIGHTS, resolved as `--model WEIGHTS` would have them (its own record under the user's keys).
    settings = load_settings(args.config, args.overrides, offline=True, model=args.weights)
    tune(settings, args.dataset, split=args.split, onsets=args.onset, frames=args.frame,
         holds=args.hold, restrikes=args.restrike, max_pieces=args.max_pieces)
    return 0
