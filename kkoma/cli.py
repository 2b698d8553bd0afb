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
    "serve": ("kkoma.realtime.serve", "a local web page: a browser's microphone -> live notes, audio files -> MIDI"),
    "models": ("kkoma.models.catalog", "list the shipped models (--model NAME): purpose, look-ahead, accuracy"),
    "cqt": ("kkoma.models.cqt_cli", "compute the CQT of an audio file and summarise it"),
    "prepare": ("kkoma.offline.prepare_cli",
                "make a training dataset (render MIDI with FluidSynth, or MAESTRO / MAPS recordings)"),
    "train": ("kkoma.offline.train_cli", "train the onset/frame/velocity model"),
    "evaluate": ("kkoma.offline.evaluate_cli", "score transcriptions against reference MIDI (mir_eval)"),
    "tune": ("kkoma.offline.tune_cli", "choose the note tracker's thresholds on a validation split"),
    "diagnose": ("kkoma.offline.diagnose_cli", "where a model's note errors are: per register, and by kind"),
    "note-set": ("kkoma.offline.note_set_cli", "render a synthesiser's piano, key by key, as a sample set"),
}


#: Commands that work on files: their settings take ``transcribe.overrides`` (the offline model and its features);
#: ``prepare`` and ``train`` take them with ``--offline`` (to make that model).
OFFLINE_COMMANDS = ("transcribe", "evaluate")

#: Commands that make data or models for the settings as written: the settings a weights file carries are applied
#: only when ``--model`` names one (every other command runs a model, and gets the settings it was trained with).
MAKING_COMMANDS = ("prepare", "train")


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # the subcommand has not been built yet in this checkout
            return None
        raise


def _add_global_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
    """``--config``, ``--set`` and ``--model``: on the main parser, and again on every subcommand (``after``) so that they may
    come after the subcommand too. After it they go to their own ``dest`` (absent unless given, so the subcommand
    never resets what came before it); :func:`main` joins both places."""
    pre, extra = ("sub_", {"default": argparse.SUPPRESS}) if after else ("", {})
    parser.add_argument("--config", metavar="FILE", dest=f"{pre}config", **extra,
                        help="a TOML file with the settings to change (same sections as config.toml)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", dest=f"{pre}overrides",
                        **(extra or {"default": []}),
                        help="override one setting, e.g. --set cqt.lookahead_ms=10 (repeatable)")
    parser.add_argument("--model", metavar="NAME|FILE", dest=f"{pre}model", **(extra or {"default": None}),
                        help="the model: a shipped one by name (`kkoma models`) or a weights file; it brings the "
                             "settings it was trained with (default: live for live/record, offline for files)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kkoma",
        description="kkoma: real-time piano transcription (microphone or audio files -> MIDI).",
        epilog="Settings come from config.toml; see `kkoma --config FILE` and `--set section.key=value` "
               "(before or after the command).",
    )
    parser.add_argument("--version", action="version", version=f"kkoma {__version__}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p) if not hasattr(module, f"add_{name}_arguments") else \
            getattr(module, f"add_{name}_arguments")(p)
        _add_global_options(p.add_argument_group("settings (also accepted before the command)"), after=True)
        p.set_defaults(_module=module)
    return parser


def run_module_as(command: str) -> None:
    """``python -m kkoma.offline.X ARGS`` (as older commands in docs/training-log.md ran the tools) is ``kkoma
    COMMAND ARGS``: the one parser and settings handling of the CLI, not a second entry point that could drift
    from it. Exits with its code."""
    sys.exit(main([command, *sys.argv[1:]]))


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
        if getattr(args, "sub_config", None) is not None:
            if args.config is not None:
                raise ConfigError("--config is given twice (before and after the command); give one file.")
            args.config = args.sub_config
        args.overrides = list(args.overrides) + list(getattr(args, "sub_overrides", []))
        args.model = getattr(args, "sub_model", None) or args.model
        offline = args.command in OFFLINE_COMMANDS or bool(getattr(args, "offline", False))
        settings = load_settings(args.config, args.overrides, offline=offline, model=args.model,
                                 weights_settings=args.command not in MAKING_COMMANDS)
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
