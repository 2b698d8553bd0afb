"""``kkoma train DATASET OUT_DIR``: train the onset/frame/velocity model on a dataset made by ``kkoma prepare``.

Imports only the standard library at module level so ``kkoma --help`` stays instant; TensorFlow loads in ``run``.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="dataset folder written by `kkoma prepare` (manifest.json)")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="output folder: kkoma.npz (best weights for transcribe/live), summary.json, checkpoints/, "
                        "logs/ (TensorBoard); on several TensorFlow workers (the TF_CONFIG environment variable, "
                        "docs/cluster.md) the chief alone writes it")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="epochs (default: train.epochs)")
    p.add_argument("--steps-per-epoch", type=int, default=None, metavar="N",
                   help="batches per epoch; 0 = one pass over the training pieces (default: train.steps_per_epoch)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="default: train.batch_size")
    p.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                   help="default: train.learning_rate; with --resume, the rate to go on at (default: the checkpoint's; "
                        "--set train.learning_rate=LR says the same)")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="epochs without validation improvement before stopping (default: train.patience)")
    p.add_argument("--valid-max-pieces", type=int, default=None, metavar="N",
                   help="pieces scored per validation split each epoch, spread evenly over it; 0 = all "
                        "(default: train.valid_max_pieces)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT_DIR from its last checkpoint")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start a new run from this weights file (a kkoma.npz of the same architecture, e.g. the "
                        "shipped models/weights/kkoma.npz): fine-tune instead of starting from random weights; its "
                        "look-ahead may differ from model.lookahead_frames (fine-tuning to another look-ahead)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (one line per epoch)")
    p.add_argument("--offline", action="store_true",
                   help="train the offline model: apply transcribe.overrides (its transform settings), as `kkoma "
                        "transcribe` will; the dataset must have been prepared with --offline")


def resume_learning_rate(args: argparse.Namespace, settings) -> float | None:
    """The rate a resumed run goes on at: the one the command names (``--learning-rate``, else ``--set
    train.learning_rate``), or None for the checkpoint's. A rate in config.toml or a ``--config`` file is the one a
    new run starts at, so it does not reset a campaign's lowered rate."""
    from kkoma.models.settings import parse_override

    if args.learning_rate is not None:
        return args.learning_rate
    if any(parse_override(str(o))[:2] == ("train", "learning_rate") for o in getattr(args, "overrides", None) or ()):
        return settings.train.learning_rate
    return None


def run(args: argparse.Namespace, settings) -> int:
    import json
    import os

    from kkoma.models.errors import KkomaError

    resume_rate = resume_learning_rate(args, settings)
    overrides = {}
    for name, key in (("epochs", "epochs"), ("steps_per_epoch", "steps_per_epoch"), ("batch_size", "batch_size"),
                      ("learning_rate", "learning_rate"), ("patience", "patience"),
                      ("valid_max_pieces", "valid_max_pieces")):
        v = getattr(args, name)
        if v is not None:
            overrides[f"train__{key}"] = repr(v)
    if overrides:
        settings = settings.replace(**overrides)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kkoma.offline.train import train

    try:
        summary = train(args.dataset, args.out_dir, settings, resume=args.resume, init=args.init,
                        verbose=2 if args.quiet else "auto",
                        resume_rate=resume_rate if args.resume else None)
    except KeyboardInterrupt:
        raise KkomaError(f"interrupted; continue with `kkoma train {args.dataset} {args.out_dir} --resume`.") from None
    if summary.get("chief") is False:
        print(f"worker {summary['worker']} of {summary['workers']}: {summary['epochs_run']} epochs done (the chief "
              "writes OUT_DIR)")
        return 0
    best = summary.get("best") or {}
    print(json.dumps({k: v for k, v in summary.items() if k != "history"} | {"best": best}, indent=2, default=str))
    print(f"best weights: {os.path.join(args.out_dir, 'kkoma.npz')} (use with --set model.weights=...)")
    return 0
