"""The ``kkoma`` console command: one parser, subcommands that plug in from their own modules.

Each subcommand lives beside the code it drives (``offline/``, ``realtime/``, ``models/``) in a module that
defines ``add_arguments(parser)`` and ``run(args, settings) -> int``. Those modules import only the standard
library at import time, so ``kkoma --help`` stays instant; TensorFlow, librosa and Numba load inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from kkoma import __version__

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "transcribe": ("kkoma.offline.transcribe_cli", "transcribe audio files to MIDI (and CSV/JSON/piano roll)"),
    "live": ("kkoma.realtime.cli", "microphone -> MIDI port, live"),
    "record": ("kkoma.realtime.cli", "live, and write the stream to a MIDI file"),
    "devices": ("kkoma.realtime.cli", "list audio inputs and MIDI outputs"),
    "cqt": ("kkoma.models.cqt_cli", "compute the CQT of an audio file and summarise it"),
    "prepare": ("kkoma.offline.prepare_cli",
                "make a training dataset (render MIDI with FluidSynth, or MAESTRO / MAPS recordings)"),
    "train": ("kkoma.offline.train_cli", "train the onset/frame/velocity model"),
    "evaluate": ("kkoma.offline.evaluate_cli", "score transcriptions against reference MIDI (mir_eval)"),
}


#: Commands that work on files: their settings take ``transcribe.overrides`` (the offline model and its features);
#: ``prepare`` and ``train`` take them with ``--offline`` (to make that model).
OFFLINE_COMMANDS = ("transcribe", "evaluate")


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # the subcommand has not been built yet in this checkout
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kkoma",
        description="kkoma: real-time piano transcription (microphone or audio files -> MIDI).",
        epilog="Settings come from config.toml; see `kkoma --config FILE` and `--set section.key=value`.",
    )
    parser.add_argument("--version", action="version", version=f"kkoma {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file with the settings to change (same sections as config.toml)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[], dest="overrides",
                        help="override one setting, e.g. --set cqt.lookahead_ms=10 (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p) if not hasattr(module, f"add_{name}_arguments") else \
            getattr(module, f"add_{name}_arguments")(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the process exit code (0 ok, 1 a user-facing error, 2 bad usage/settings)."""
    from kkoma.models.errors import KkomaError
    from kkoma.models.settings import ConfigError, load_settings

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        offline = args.command in OFFLINE_COMMANDS or bool(getattr(args, "offline", False))
        settings = load_settings(args.config, args.overrides, offline=offline)
        module = args._module
        run = getattr(module, f"run_{args.command}", None) or module.run
        return int(run(args, settings) or 0)
    except ConfigError as e:
        print(f"kkoma: {e}", file=sys.stderr)
        return 2
    except KkomaError as e:
        print(f"kkoma {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"kkoma {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
