"""A dataset made by ``kkoma prepare``: the one place that reads its manifest and finds its files.

Layout (written by offline/prepare.py)::

    DATASET/manifest.json                 settings it was made with, one entry per piece, skipped inputs
    DATASET/<split>/<id>.npz              one shard per piece: features and labels (offline/labels.py)
    DATASET/audio/<split>/<id>.flac|.mid  evaluation audio and its reference MIDI (validation splits)

A manifest entry holds at least ``id``, ``split``, ``file`` (the shard, relative to DATASET), ``midi`` (the source
performance, an absolute path) and ``seconds``. Readers: ``kkoma prepare`` (resuming), ``kkoma train``, ``kkoma tune``
and ``kkoma evaluate --dataset``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kkoma.models.errors import KkomaError

MANIFEST = "manifest.json"
CHECKED_SECTIONS = ("audio", "cqt")  # the settings a dataset's features depend on


def read_manifest(dataset: str | Path, settings, *, missing_ok: bool = False,
                  require_pieces: bool = False) -> dict | None:
    """``DATASET/manifest.json``, its ``audio`` and ``cqt`` settings checked against ``settings``.

    Returns None when there is no manifest and ``missing_ok`` (a new dataset), else raises KkomaError: no manifest,
    an unreadable one, settings that differ (naming the first key and how to match it), or, with
    ``require_pieces``, no pieces. Keys newer than the manifest read as their old values
    (:func:`models.settings.first_mismatch`).
    """
    from kkoma.models.settings import first_mismatch

    dataset = Path(dataset)
    path = dataset / MANIFEST
    if not path.is_file():
        if missing_ok:
            return None
        raise KkomaError(f"{dataset} is not a kkoma dataset (no {MANIFEST}); make one with `kkoma prepare`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KkomaError(f"{path} cannot be read ({e}); make the dataset again (move this file away, or use "
                         "another folder).") from None
    want = {section: asdict(getattr(settings, section)) for section in CHECKED_SECTIONS}
    bad = first_mismatch(manifest.get("settings", {}), want, missing_ok=True)
    if bad:
        section, key, value, mine = bad
        raise KkomaError(f"{dataset} was prepared with {section}.{key} = {value!r}, not {mine!r}: use the settings "
                         f"it was made with (--set {section}.{key}={value!r}, or --offline for a dataset prepared "
                         "with --offline) or another folder.")
    if require_pieces and not manifest.get("pieces"):
        raise KkomaError(f"dataset {dataset} has no pieces.")
    return manifest


def split_pieces(manifest: dict, split: str) -> list[dict]:
    """The manifest entries of one split, in the manifest's order (by composer: see ``offline.train.spread_subset``)."""
    return [p for p in manifest["pieces"] if p["split"] == split]


def audio_splits(dataset: str | Path) -> list[str]:
    """The splits with evaluation audio in ``DATASET/audio/`` (``train`` left out); KkomaError when there is none."""
    dataset = Path(dataset)
    root = dataset / "audio"
    if not root.is_dir():
        raise KkomaError(f"{dataset} has no audio/ folder (run `kkoma prepare` with audio export, or use --pred/--ref).")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "train")
