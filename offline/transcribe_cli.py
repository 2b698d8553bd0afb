"""``kkoma transcribe AUDIO... [-o OUTDIR]``: audio files, folders and globs -> MIDI (and CSV / JSON / piano roll).

Imports only the standard library at module level so ``kkoma --help`` stays instant; the pipeline loads in ``run``.
"""
from __future__ import annotations

import argparse

_FORMATS = ("mid", "csv", "json")


def _formats(text: str) -> list[str]:
    items = [t.strip().lower().lstrip(".") for t in text.split(",") if t.strip()]
    items = ["mid" if t == "midi" else t for t in items]
    bad = [t for t in items if t not in _FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown format {bad[0] if bad else text!r}; choose from "
                                         + ", ".join(_FORMATS) + " (comma-separated)")
    return list(dict.fromkeys(items))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", nargs="+", metavar="AUDIO",
                   help="audio files (WAV/FLAC/OGG/MP3..., any rate and channel count), folders (searched "
                        "recursively) or glob patterns (quote them, e.g. 'takes/**/*.flac')")
    p.add_argument("-o", "--output-dir", metavar="OUTDIR", default=None,
                   help="folder for the outputs, created if needed (default: next to each input); files found "
                        "in a folder keep their sub-folder under OUTDIR")
    p.add_argument("-f", "--format", type=_formats, default=["mid"], metavar="LIST",
                   help="comma-separated outputs: mid (MIDI), csv (onset,offset,pitch,velocity; seconds), json "
                        "(note list). Default: mid")
    p.add_argument("--piano-roll", action="store_true",
                   help="also write <stem>.png: the piano roll over the waveform")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (otherwise a file whose outputs exist is skipped)")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="worker processes, each transcribing one file at a time (default: transcribe.jobs from "
                        "config.toml; 0 = automatic: from the cores kkoma may use and the number of files, one "
                        "process, which keeps two cores busy, up to three cores; one more for every two cores "
                        "beyond). One file is always streamed by one process")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run the files on a Dask cluster instead of this machine's processes (-j is then not "
                        "used): tcp://HOST:PORT of a `dask scheduler` whose workers (`dask worker ADDRESS "
                        "--nthreads 1`) see the same paths, or local:N for N local worker processes. Needs "
                        "pip install 'kkoma[cluster]'")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None,
                   help="where the model runs: cpu (NumPy/Numba), gpu (TensorFlow; an error if TensorFlow sees no "
                        "GPU) or auto (gpu when TensorFlow sees one, else cpu; a machine without an NVIDIA driver "
                        "is cpu without loading TensorFlow). Same notes either way. Default: transcribe.device "
                        "from config.toml (auto)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-file lines; errors only")


def run(args: argparse.Namespace, settings) -> int:
    from kkoma.models.errors import KkomaError
    from kkoma.offline.transcribe import transcribe_paths

    if args.scheduler:
        from kkoma.offline.cluster import parse_address

        parse_address(args.scheduler)  # a malformed address fails here, before any work
    if args.jobs is not None and args.jobs < 0:
        raise KkomaError(f"--jobs must be 0 (automatic) or more, not {args.jobs}.")
    if args.jobs is not None:
        settings = settings.replace(transcribe__jobs=str(args.jobs))
    device = args.device or settings.transcribe.device
    if device != "cpu":
        from kkoma.models.tf_inference import resolve_device

        # Settled once here, so every worker process runs the model on the same device.
        device = resolve_device(device)
        if device == "gpu" and not args.quiet:
            import sys

            print("model on the GPU (TensorFlow)", file=sys.stderr)
    settings = settings.replace(transcribe__device=device)
    summary = transcribe_paths(args.audio, settings, out_dir=args.output_dir, formats=args.format,
                               piano_roll=args.piano_roll, overwrite=args.overwrite, quiet=args.quiet,
                               scheduler=args.scheduler)
    return 1 if summary.failed else 0
