"""Dataset preparation: performance MIDI rendered with FluidSynth, or a MAESTRO-layout folder -> feature shards.

Output (the format ``kkoma train`` and ``kkoma evaluate`` read)::

    OUT_DIR/manifest.json              settings used, one entry per piece, skipped inputs, renderer offsets
    OUT_DIR/<split>/<id>.npz           one piece: features (n, n_bins) float16; onset, frame, offset, velocity
                                       (n, 88) uint8 (see offline/labels.py for the label conventions)
    OUT_DIR/audio/<split>/<id>.flac    validation/test audio exactly as featurised (16-bit FLAC)
    OUT_DIR/audio/<split>/<id>.mid     its reference notes (cropped, sustain-extended, renderer offset removed)

Splits of a synthesised dataset (``prepare_synth``):

* Pieces are grouped by *work*: the folder holding the performance file, relative to MIDI_DIR, with ASAP's repeat
  variants (``17-1_no_repeat``, ``24-1_no_2_repeat``, ``Toccata_repeat``) folded into their work. A work is held
  out when ``sha256(f"{data.seed}:{work}")`` mapped to [0, 1) is below ``data.holdout_piece_fraction``, so no
  performance of a held-out work is ever trained on, whatever ``--max-pieces`` selects. (When the hash holds out no
  work, or all of them, the one with the smallest / largest hash is moved, so both sides exist.)
* ``train``: performances of the other works, each rendered with one training voice (the ``data.soundfonts`` other
  than ``data.holdout_soundfont`` x the GM piano ``data.programs``, taken in turn) and augmented (offline/augment.py) with probability
  ``augment.probability``.
* ``valid_pieces``: held-out performances, a training soundfont (first program), clean.
* ``valid_soundfont``: held-out performances, the held-out soundfont, clean.
* ``valid_room``: held-out performances, the held-out soundfont, synthetic room reverb + noise.
* With sample sets (``data.sample_sets`` / ``--samples``: folders of recorded piano notes, offline/sampler.py):
  each training performance is *also* rendered with each set, augmented, as ``train/<id>@<set>``, when
  ``sha256(f"{data.seed}:samples:{set}:{id}")`` falls below ``data.sample_set_fraction`` (copies, not a place in the
  rotation, so adding a set to a prepared dataset renders only the copies); ``valid_samples``: held-out
  performances played by the first set, clean.
* ``--split`` makes only the named splits (``valid``: all but ``train``), chosen from the whole plan, so they are
  the pieces a full run makes; running without it later adds the rest.
* ``--max-pieces N`` takes performances round-robin over the works (in hash order): every work once before any work
  twice, which gives the most different music for a budget.

A MAESTRO folder (``prepare_maestro``) keeps its own split column: train -> ``train`` (augmented as above),
validation -> ``valid_pieces``, test -> ``test``.

A MAPS-layout folder (``prepare_maps``; ``../shared/data/maps-synth``): ``<piano>/<piece>.<ogg|flac|wav>`` recordings,
each beside the ``<piece>.mid`` that played it (sustain pedal included), one folder per piano set-up. Pieces are
held out by name across all pianos (``sha256(f"{data.seed}:holdout:{piece}")`` below
``data.maps_holdout_piece_fraction``, as works above), so a held-out piece is never heard on any piano; pianos in
``data.maps_holdout_pianos`` are never trained on.

* ``train``: the other pianos' recordings of the other pieces, augmented as above (they are real recordings:
  the audio comes from the file, only the augmentation chain is added).
* ``valid_maps_piano``: every recording of a held-out piano, clean (the proxy for a piano never heard; some of its
  pieces are played by training pianos in ``train``: the manifest entries say which, ``"piece_in_train"``).
* ``valid_maps_pieces``: held-out pieces on the training pianos with close microphones, clean.
* ``valid_maps_ambient``: held-out pieces on the training pianos of ``data.maps_ambient_pianos`` (ambient
  microphones in a room), clean.

All three go into the same dataset as a synthesised one when given the same OUT_DIR (ids ``maps__<piano>__<piece>``
do not clash with the rendered pieces'), so one ``kkoma train`` reads both.

Every piece is cropped to ``data.max_piece_seconds`` (``--max-seconds``), notes and audio alike. Every random draw
of a piece comes from a generator seeded with ``data.seed`` and the piece's key, so a re-run makes the same data.

Resuming: a piece whose manifest entry and shard both exist is skipped; the manifest is rewritten (atomically)
as pieces complete, so an interrupted run loses at most the pieces in flight. Unreadable inputs are skipped with a
warning naming the file and listed under ``"skipped"``.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kkoma.models.atomic import atomic_write as _atomic_write
from kkoma.models.errors import KkomaError
from kkoma.offline.dataset import MANIFEST, read_manifest
from kkoma.offline.pool import limit_threads
from kkoma.offline.synth import SetupError

FORMAT_VERSION = 1
MIDI_SUFFIXES = (".mid", ".midi")
_REPEAT_VARIANT = re.compile(r"(_no(_\d+)?)?_repeat$")
MAESTRO_SPLITS = {"train": "train", "validation": "valid_pieces", "test": "test"}


# ----------------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One piece to make: one manifest entry and one shard."""
    split: str
    id: str
    midi: str
    audio: str | None      # source audio (MAESTRO) or None (rendered)
    soundfont: str | None  # rendering soundfont (synth) or None
    augment: str           # "train" (random chain with augment.probability), "room" (reverb + noise), "none"
    work: str
    program: int = 0       # GM program of the rendering soundfont (synth)
    piano: str = ""        # the recording's piano set-up (MAPS: its folder)
    piece_in_train: bool = False  # MAPS: another piano's recording of this piece is in train

    @property
    def key(self) -> str:
        return f"{self.split}/{self.id}"

    @property
    def source(self) -> str:
        return self.audio or self.midi


def stable_unit(*parts) -> float:
    """A deterministic number in [0, 1) from ``parts`` (sha256; the same on every machine and Python)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def piece_seed(seed: int, key: str) -> int:
    return int(stable_unit(seed, "piece", key) * 2 ** 62)


def piece_id(rel: Path) -> str:
    """File-system-safe id from a path relative to the dataset root: ``Haydn/Sonatas/6-1/Chen01.mid`` ->
    ``Haydn__Sonatas__6-1__Chen01``."""
    parts = list(rel.with_suffix("").parts)
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def work_key(rel: Path) -> str:
    """The work a performance belongs to: its folder relative to the root, repeat variants folded in."""
    folder = rel.parent.as_posix()
    if folder in ("", "."):
        return rel.stem  # a flat folder: every file is its own work
    head, _, last = folder.rpartition("/")
    last = _REPEAT_VARIANT.sub("", last) or last
    return f"{head}/{last}" if head else last


def holdout_works(works: list[str], seed: int, fraction: float) -> set[str]:
    """Works held out for validation (see the module notes)."""
    if fraction <= 0 or not works:
        return set()
    score = {w: stable_unit(seed, "holdout", w) for w in works}
    held = {w for w in works if score[w] < fraction}
    if len(works) >= 2:
        ordered = sorted(works, key=lambda w: score[w])
        if not held:
            held = {ordered[0]}
        elif len(held) == len(works):
            held.discard(ordered[-1])
    return held


def find_midi(midi_dir: Path) -> list[Path]:
    if not midi_dir.is_dir():
        raise KkomaError(f"{midi_dir} is not a folder of MIDI files.")
    files = sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    if not files:
        raise KkomaError(f"{midi_dir} holds no MIDI files (*.mid, *.midi).")
    return files


def round_robin(items: list, group_of, seed: int) -> list:
    """Items ordered so every group appears once before any appears twice; groups and items in hash order."""
    groups: dict[str, list] = {}
    for it in items:
        groups.setdefault(group_of(it), []).append(it)
    order = sorted(groups, key=lambda g: stable_unit(seed, "work-order", g))
    for g in order:
        groups[g].sort(key=lambda it: stable_unit(seed, "item-order", it))
    out = []
    depth = 0
    while len(out) < len(items):
        for g in order:
            if depth < len(groups[g]):
                out.append(groups[g][depth])
        depth += 1
    return out


def _same_file(a: str, b: str) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def piano_programs(settings) -> list[int]:
    """``data.programs`` as GM program numbers (a KkomaError for an empty list or a non-integer)."""
    programs = list(settings.data.programs)
    if not programs or any(p != int(p) for p in programs):
        raise KkomaError(f"data.programs must be a non-empty list of GM program numbers 0-127, not {programs}.")
    return [int(p) for p in programs]


def voice_name(soundfont: str, program: int) -> str:
    """Manifest key of a rendering voice: the soundfont path, with ``#program`` when it is not program 0."""
    return soundfont if program == 0 else f"{soundfont}#{program}"


def plan_synth(midi_dir: str | os.PathLike, settings, soundfonts: list[str], holdout_soundfont: str,
               max_pieces: int = 0, sample_sets: list[str] = ()) -> list[Task]:
    """The tasks of a synthesised dataset (see the module notes for the splits)."""
    # Absolute paths in the manifest: its readers (tune, diagnose, evaluate) may run from any folder.
    root = Path(midi_dir).absolute()
    sample_sets = [str(Path(f).absolute()) for f in sample_sets]
    files = find_midi(root)
    seed = settings.data.seed
    rel = {f: f.relative_to(root) for f in files}
    train_sfs = [sf for sf in soundfonts if not _same_file(sf, holdout_soundfont)]
    if not train_sfs:
        raise KkomaError("there is no training soundfont: data.soundfonts (or --soundfont) must name at least one "
                         "soundfont besides data.holdout_soundfont.")
    programs = piano_programs(settings)
    names = [sample_set_name(f) for f in sample_sets]
    if len(set(names)) < len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise KkomaError(f"two sample sets are both named {clash!r} (their folder names make the piece ids): "
                         "rename one folder.")
    # Pieces take the (soundfont, program) voices in turn: each piece is one piano, the set is many.
    voices = [(sf, p) for p in programs for sf in train_sfs]
    held = holdout_works(sorted({work_key(r) for r in rel.values()}), seed, settings.data.holdout_piece_fraction)
    chosen = round_robin([r.as_posix() for r in rel.values()], lambda r: work_key(Path(r)), seed)
    if max_pieces:
        chosen = chosen[:max_pieces]
    tasks = []
    n_train = n_valid = 0
    for r in chosen:
        r = Path(r)
        midi = str(root / r)
        pid = piece_id(r)
        work = work_key(r)
        if work in held:
            tasks.append(Task("valid_pieces", pid, midi, None, train_sfs[n_valid % len(train_sfs)], "none", work,
                              programs[0]))
            n_valid += 1
            if holdout_soundfont:
                tasks.append(Task("valid_soundfont", pid, midi, None, holdout_soundfont, "none", work, programs[0]))
                tasks.append(Task("valid_room", pid, midi, None, holdout_soundfont, "room", work, programs[0]))
            if sample_sets:
                tasks.append(Task("valid_samples", pid, midi, None, sample_sets[0], "none", work))
        else:
            sf, program = voices[n_train % len(voices)]
            tasks.append(Task("train", pid, midi, None, sf, "train", work, program))
            n_train += 1
            # Sample sets add copies rather than joining the rotation, so adding one to a prepared dataset
            # renders only the copies and leaves every existing shard valid.
            for folder in sample_sets:
                name = sample_set_name(folder)
                if stable_unit(seed, "samples", name, pid) < settings.data.sample_set_fraction:
                    tasks.append(Task("train", f"{pid}@{name}", midi, None, folder, "train", work))
    return tasks


def select_splits(tasks: list[Task], splits: list[str] | None) -> list[Task]:
    """The tasks of ``splits`` only (``--split``); ``"valid"`` names every split but ``train``; None = all.

    Selecting after planning keeps every piece's voice, augmentation and id what the whole plan gives it, so a
    dataset made a split at a time is the same as one made at once (and ``--split valid`` makes just the
    evaluation audio without rendering the training set). KkomaError for a split the plan does not have.
    """
    if not splits:
        return tasks
    have = sorted({t.split for t in tasks})
    for name in splits:
        if name != "valid" and name not in have:
            raise KkomaError(f"--split {name}: this dataset has no such split (it has {', '.join(have)}; "
                             "'valid' = all but train).")
    wanted = set(splits)
    return [t for t in tasks if t.split in wanted or ("valid" in wanted and t.split != "train")]


def sample_set_name(folder: str | os.PathLike) -> str:
    """Short name of a sample set in piece ids (``<piece>@<name>``): the folder name, or its parent's for a
    folder called ``audio`` (the npm packages' layout, ``package/audio``)."""
    p = Path(folder).resolve()
    return re.sub(r"[^A-Za-z0-9_.-]", "_", (p.parent.name if p.name == "audio" else p.name) or "samples")


def plan_maestro(root: str | os.PathLike, settings, max_pieces: int = 0) -> list[Task]:
    """The tasks of a MAESTRO-layout folder (``maestro-v*.csv`` + audio/MIDI pairs)."""
    root = Path(root).absolute()  # as in plan_synth: the manifest is read from any folder
    if not root.is_dir():
        raise KkomaError(f"{root} is not a folder.")
    csvs = sorted(root.glob("maestro-v*.csv")) or sorted(root.glob("*.csv"))
    if not csvs:
        raise KkomaError(f"{root} has no maestro-v*.csv (MAESTRO layout: a CSV with split, midi_filename and "
                         "audio_filename columns beside the year folders).")
    path = csvs[-1]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise KkomaError(f"{path} cannot be read ({e}).") from None
    need = ("split", "midi_filename", "audio_filename")
    if not rows or any(k not in rows[0] for k in need):
        raise KkomaError(f"{path} must have the columns {', '.join(need)}.")
    order = sorted(range(len(rows)), key=lambda i: stable_unit(settings.data.seed, "maestro", rows[i]["midi_filename"]))
    if max_pieces:
        order = order[:max_pieces]
    tasks = []
    for i in sorted(order):
        row = rows[i]
        split = MAESTRO_SPLITS.get(row["split"].strip().lower())
        if split is None:
            continue
        rel = Path(row["midi_filename"])
        work = f"{row.get('canonical_composer', '')}/{row.get('canonical_title', '')}"
        tasks.append(Task(split, piece_id(rel), str(root / rel), str(root / row["audio_filename"]), None,
                          "train" if split == "train" else "none", work))
    return tasks


MAPS_AUDIO_SUFFIXES = (".flac", ".ogg", ".wav")
MAPS_SPLITS = ("valid_maps_piano", "valid_maps_pieces", "valid_maps_ambient")


def find_maps(root: Path) -> list[tuple[str, str, Path, Path]]:
    """``(piano, piece, audio, midi)`` of every ``<piano>/<piece>.<audio>`` with a ``<piece>.mid`` beside it, sorted
    by piano and piece; KkomaError when ``root`` is not a folder or holds no such pair."""
    if not root.is_dir():
        raise KkomaError(f"{root} is not a folder.")
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        by_stem: dict[str, Path] = {}
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in MAPS_AUDIO_SUFFIXES and f.is_file():
                by_stem.setdefault(f.stem, f)  # one audio file per piece: the first suffix in name order
        for stem, audio in sorted(by_stem.items()):
            midi = next((m for m in (folder / f"{stem}{x}" for x in MIDI_SUFFIXES) if m.is_file()), None)
            if midi is not None:
                pairs.append((folder.name, stem, audio, midi))
    if not pairs:
        raise KkomaError(f"{root} holds no <piano>/<piece>.ogg|flac|wav recordings with a <piece>.mid beside them "
                         "(the MAPS layout).")
    return pairs


def plan_maps(root: str | os.PathLike, settings, max_pieces: int = 0) -> list[Task]:
    """The tasks of a MAPS-layout folder (see the module notes for the splits)."""
    root = Path(root).absolute()  # as in plan_synth: the manifest is read from any folder
    pairs = find_maps(root)
    data = settings.data
    pianos = {p for p, *_ in pairs}
    held_pianos = set(data.maps_holdout_pianos)
    unknown = sorted(held_pianos - pianos)
    if unknown:
        raise KkomaError(f"data.maps_holdout_pianos names {', '.join(unknown)}, which {root} does not have (it has "
                         f"{', '.join(sorted(pianos))}).")
    if not pianos - held_pianos:
        raise KkomaError("data.maps_holdout_pianos holds out every piano: no recording is left to train on.")
    ambient = set(data.maps_ambient_pianos)
    held_pieces = holdout_works(sorted({piece for _, piece, *_ in pairs}), data.seed,
                                data.maps_holdout_piece_fraction)
    trained = {piece for piano, piece, *_ in pairs if piano not in held_pianos and piece not in held_pieces}
    chosen = round_robin(pairs, lambda x: x[1], data.seed)
    if max_pieces:
        chosen = chosen[:max_pieces]
    tasks = []
    for piano, piece, audio, midi in sorted(chosen):
        if piano in held_pianos:
            split = "valid_maps_piano"
        elif piece in held_pieces:
            split = "valid_maps_ambient" if piano in ambient else "valid_maps_pieces"
        else:
            split = "train"
        tasks.append(Task(split, "maps__" + re.sub(r"[^A-Za-z0-9._-]+", "_", f"{piano}__{piece}"), str(midi), str(audio), None,
                          "train" if split == "train" else "none", piece, piano=piano,
                          piece_in_train=piece in trained))
    return tasks


# ----------------------------------------------------------------------------------------------------------------
# Making one piece (runs in the worker processes)
# ----------------------------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _renderer(soundfont: str, settings, program: int = 0):
    from kkoma.offline.sampler import SampleRenderer, is_sample_set
    from kkoma.offline.synth import Renderer, measure_onset_offset

    r = _CACHE.get(("renderer", soundfont, program))
    if r is None:
        if is_sample_set(soundfont):
            r = SampleRenderer(soundfont, settings.audio.sample_rate, settings.data.render_gain)
        else:
            r = Renderer(soundfont, settings.audio.sample_rate, settings.data.render_gain, program)
        offset = measure_onset_offset(r, seed=settings.data.seed)
        _CACHE[("renderer", soundfont, program)] = r = (r, offset)
    return r


def _cqt(settings):
    from kkoma.models.cqt import CQT

    c = _CACHE.get("cqt")
    if c is None or c.settings != settings:
        c = _CACHE["cqt"] = CQT(settings)
    return c


def make_piece(task: Task, settings, out_dir: str | os.PathLike, max_seconds: float,
               export_audio: bool) -> dict:
    """Render/load, crop, augment, featurise and label one piece; write its shard (and audio export).

    Returns its manifest entry. Raises KkomaError naming the input file when it cannot be read.
    """
    from kkoma.models.notes import read_midi, write_midi
    from kkoma.offline import augment as aug
    from kkoma.offline.labels import crop_notes, note_labels, piano_notes, scale_times

    out_dir = Path(out_dir)
    sr = settings.audio.sample_rate
    notes = piano_notes(read_midi(task.midi, sustain=True))
    if not notes:
        raise KkomaError(f"{task.midi} has no notes on the piano's 88 keys.")
    entry = {"id": task.id, "split": task.split, "file": f"{task.split}/{task.id}.npz", "midi": task.midi,
             "audio": task.audio, "soundfont": task.soundfont, "program": task.program, "work": task.work}
    if task.piano:
        entry.update({"piano": task.piano, "piece_in_train": task.piece_in_train})
    if task.audio is None:
        from kkoma.offline.synth import midi_events

        end = min(max_seconds, max(n.offset for n in notes) + settings.data.tail_seconds)
        renderer, offset = _renderer(task.soundfont, settings, task.program)
        events = [e for e in midi_events(task.midi, end) if e.kind == "cc" or 21 <= e.a <= 108]
        skip = int(round(offset * sr))
        # Render `skip` samples more and drop them at the start: removes the renderer's onset latency.
        audio = renderer.render(events, end + skip / sr)[skip:]
        entry["renderer_offset_ms"] = round(1000.0 * skip / sr, 3)
    else:
        from kkoma.models.audio import load_audio

        audio = load_audio(task.audio, settings)
        end = min(max_seconds, len(audio) / sr)
        audio = audio[: int(round(end * sr))]
    notes = crop_notes(notes, end)

    rng = np.random.default_rng(piece_seed(settings.data.seed, task.key))
    params: dict = {}
    if task.augment == "train" and rng.random() < settings.augment.probability:
        params = aug.draw_params(settings, rng)
    elif task.augment == "room":
        params = aug.draw_params(settings, rng, stages=("reverb", "noise"))
    if params:
        audio, factor = aug.augment_audio(audio, params, sr)
        notes = scale_times(notes, factor)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:  # keep the exported 16-bit audio unclipped; features see the same scaled signal
        audio = audio * np.float32(0.99 / peak)
        params["limited_db"] = round(20.0 * np.log10(0.99 / peak), 2)

    features = _cqt(settings).features(audio)
    labels = note_labels(notes, features.shape[0], settings.audio.frame_rate)

    shard = out_dir / entry["file"]
    _atomic_write(shard, lambda p: np.savez_compressed(p, features=features.astype(np.float16), **labels))
    if export_audio and task.split != "train":
        import soundfile as sf

        # Ids hold dots ("op.90_D.899"): append the suffix, never replace one.
        folder = out_dir / "audio" / task.split
        _atomic_write(folder / f"{task.id}.flac", lambda p: sf.write(str(p), audio, sr, subtype="PCM_16",
                                                                     format="FLAC"))
        folder.mkdir(parents=True, exist_ok=True)
        write_midi(notes, folder / f"{task.id}.mid", settings)
    entry.update({"augment": params, "n_frames": int(features.shape[0]), "seconds": round(len(audio) / sr, 3),
                  "n_notes": len(notes)})
    return entry


def _run_one(task: Task, settings, out_dir: str, max_seconds: float, export_audio: bool):
    """Worker entry point: ("ok", entry, seconds) or ("skip", reason, seconds); never raises for bad input."""
    t0 = time.perf_counter()
    try:
        return "ok", make_piece(task, settings, out_dir, max_seconds, export_audio), time.perf_counter() - t0
    except SetupError:
        raise  # FluidSynth or a soundfont, not this input: stop the whole run
    except KkomaError as e:
        return "skip", str(e), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# Running a plan: resume, parallel workers, manifest
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """What a run did (counts of manifest entries / skipped input files)."""
    done: int = 0
    already: int = 0
    skipped: list = field(default_factory=list)  # [(path, reason)]
    interrupted: bool = False
    seconds: float = 0.0
    piece_seconds: list = field(default_factory=list)  # wall time of each piece made [s]
    by_split: dict = field(default_factory=dict)
    out_dir: str = ""

    def text(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in sorted(self.by_split.items()))
        parts = [f"{self.done} pieces made" + (f" ({splits})" if splits else ""),
                 f"{self.already} already done", f"{len(self.skipped)} skipped"]
        if self.piece_seconds:
            parts.append(f"{np.mean(self.piece_seconds):.2f} s per piece in a worker")
        return f"{self.out_dir}: " + ", ".join(parts) + f", {self.seconds:.0f} s in all."


def settings_record(settings) -> dict:
    """The settings a dataset depends on (checked by ``kkoma train``)."""
    return {"audio": asdict(settings.audio), "cqt": asdict(settings.cqt),
            "model": {"lookahead_frames": settings.model.lookahead_frames}}


def read_existing(out_dir: Path, settings) -> dict | None:
    """The manifest of a dataset being resumed (None for a new one); KkomaError if it was made with other settings."""
    return read_manifest(out_dir, settings, missing_ok=True)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["pieces"].sort(key=lambda p: (p["split"], p["id"]))
    text = json.dumps(manifest, indent=1)
    _atomic_write(out_dir / MANIFEST, lambda p: p.write_text(text))


def run_tasks(tasks: list[Task], out_dir: str | os.PathLike, settings, *, kind: str, source: str,
              max_seconds: float | None = None, jobs: int | None = None, export_audio: bool | None = None,
              quiet: bool = False, log=None) -> Summary:
    """Make every task not yet done (resumable; see the module notes) and keep ``manifest.json`` up to date."""
    from tqdm import tqdm

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_seconds = settings.data.max_piece_seconds if max_seconds is None else float(max_seconds)
    export_audio = settings.data.export_audio if export_audio is None else bool(export_audio)
    jobs = jobs if jobs is not None else settings.data.jobs
    jobs = jobs or os.cpu_count() or 1

    manifest = read_existing(out_dir, settings) or {"format": FORMAT_VERSION, "kind": kind, "source": source,
                                                    "settings": settings_record(settings), "renderer_offsets_ms": {},
                                                    "pieces": [], "skipped": []}
    manifest.setdefault("renderer_offsets_ms", {})
    # One dataset may gather several sources (an ASAP rendering and MAPS recordings): "kind"/"source" name the
    # first, "sources" every one.
    manifest.setdefault("sources", {manifest.get("kind", kind): manifest.get("source", source)})[kind] = source
    manifest.setdefault("skipped", [])
    have = {f"{p['split']}/{p['id']}": p for p in manifest["pieces"] if (out_dir / p["file"]).is_file()}
    manifest["pieces"] = list(have.values())
    todo = [t for t in tasks if t.key not in have]
    summary = Summary(already=len(tasks) - len(todo), out_dir=str(out_dir))
    retried = {t.source for t in todo}  # inputs skipped last time are tried again (the file may be fixed)
    manifest["skipped"] = [s for s in manifest["skipped"] if s["path"] not in retried]
    skipped_paths: dict[str, dict] = {}
    t_start = time.perf_counter()
    last_write = [0.0]

    def save(force: bool = False) -> None:
        if force or time.perf_counter() - last_write[0] > 2.0:
            manifest["skipped"] = sorted(
                {s["path"]: s for s in manifest["skipped"] + list(skipped_paths.values())}.values(),
                key=lambda s: s["path"])
            write_manifest(out_dir, manifest)
            last_write[0] = time.perf_counter()

    bar = tqdm(total=len(todo), unit="piece", disable=quiet or not todo, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0)
    current: dict = {}

    def record(task: Task, result) -> None:
        status, value, secs = result
        if status == "ok":
            manifest["pieces"].append(value)
            summary.done += 1
            summary.by_split[task.split] = summary.by_split.get(task.split, 0) + 1
            summary.piece_seconds.append(secs)
            if task.soundfont and "renderer_offset_ms" in value:
                manifest["renderer_offsets_ms"][voice_name(task.soundfont, task.program)] = value["renderer_offset_ms"]
        else:
            if task.source not in skipped_paths:
                log(f"warning: skipped {task.source}: {value}")
                skipped_paths[task.source] = {"path": task.source, "reason": value}
        bar.update(1)
        save()

    previous_term = _sigterm_as_interrupt()
    try:
        if jobs <= 1 or len(todo) <= 1:
            limit_threads(1)  # one process: the batch CQT would otherwise take every core
            for task in todo:
                current["task"] = task
                record(task, _run_one(task, settings, str(out_dir), max_seconds, export_audio))
        else:
            _run_pool(todo, settings, out_dir, max_seconds, export_audio, min(jobs, len(todo)), record, current)
    except KeyboardInterrupt:
        summary.interrupted = True
        save(force=True)
        bar.close()
        where = current.get("task")
        last = f" (the last one finished: {where.source})" if where else ""
        log(f"interrupted after {summary.done + summary.already} of {len(tasks)} pieces{last}; the finished ones "
            f"are saved in {out_dir / MANIFEST}: run the same command again to resume.")
        raise
    finally:
        _restore_sigterm(previous_term)
    bar.close()
    save(force=True)
    summary.skipped = sorted((s["path"], s["reason"]) for s in skipped_paths.values())
    summary.seconds = time.perf_counter() - t_start
    return summary


def _sigterm_as_interrupt():
    """While a run is going, SIGTERM stops it like Ctrl-C (progress saved, resume message)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover
        return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _run_pool(todo, settings, out_dir, max_seconds, export_audio, jobs, record, current) -> None:
    from functools import partial

    from kkoma.offline.pool import run_pool

    def on_result(task, result) -> None:
        current["task"] = task
        record(task, result)

    # Errors are not caught (on_error=None): _run_one turns bad input into a "skip" itself, and anything it raises
    # (a missing soundfont, FluidSynth) stops the whole run.
    run_pool(partial(_run_one, settings=settings, out_dir=str(out_dir), max_seconds=max_seconds,
                     export_audio=export_audio), todo, workers=jobs, on_result=on_result,
             preload=["numpy", "kkoma.offline.prepare", "kkoma.offline.synth", "kkoma.models.cqt"])


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
def check_soundfonts(paths: list[str], sample_sets: list[str] = ()) -> None:
    """SetupError when FluidSynth or a soundfont is missing, or a sample set has no usable file."""
    from kkoma.offline.sampler import find_samples
    from kkoma.offline.synth import INSTALL_HINT, _fluidsynth

    _fluidsynth()
    for p in paths:
        if p and not Path(p).is_file():
            raise SetupError(f"soundfont {p} does not exist: {INSTALL_HINT}, or name your own with --soundfont.")
    for p in sample_sets:
        find_samples(p)


def prepare_synth(midi_dir, out_dir, settings, *, soundfonts: list[str] | None = None,
                  holdout_soundfont: str | None = None, sample_sets: list[str] | None = None, max_pieces: int = 0,
                  max_seconds: float | None = None, jobs: int | None = None, export_audio: bool | None = None,
                  quiet: bool = False, splits: list[str] | None = None) -> Summary:
    """Render ``midi_dir``'s performances into a dataset in ``out_dir`` (see the module notes); ``splits``:
    make only these (:func:`select_splits`)."""
    soundfonts = list(soundfonts) if soundfonts else list(settings.data.soundfonts)
    holdout = settings.data.holdout_soundfont if holdout_soundfont is None else holdout_soundfont
    sample_sets = list(settings.data.sample_sets if sample_sets is None else sample_sets)
    check_soundfonts(soundfonts + [holdout], sample_sets)
    tasks = select_splits(plan_synth(midi_dir, settings, soundfonts, holdout, max_pieces, sample_sets), splits)
    return run_tasks(tasks, out_dir, settings, kind="synth", source=str(midi_dir), max_seconds=max_seconds,
                     jobs=jobs, export_audio=export_audio, quiet=quiet)


def prepare_maestro(root, out_dir, settings, *, max_pieces: int = 0, max_seconds: float | None = None,
                    jobs: int | None = None, export_audio: bool | None = None, quiet: bool = False,
                    splits: list[str] | None = None) -> Summary:
    """Featurise a MAESTRO-layout folder into a dataset in ``out_dir`` (see the module notes); ``splits``: make
    only these (:func:`select_splits`)."""
    tasks = select_splits(plan_maestro(root, settings, max_pieces), splits)
    return run_tasks(tasks, out_dir, settings, kind="maestro", source=str(root), max_seconds=max_seconds,
                     jobs=jobs, export_audio=export_audio, quiet=quiet)


def prepare_maps(root, out_dir, settings, *, max_pieces: int = 0, max_seconds: float | None = None,
                 jobs: int | None = None, export_audio: bool | None = None, quiet: bool = False,
                 splits: list[str] | None = None) -> Summary:
    """Featurise a MAPS-layout folder into a dataset in ``out_dir`` (see the module notes; a folder already holding
    a synthesised dataset gains the MAPS pieces beside its own); ``splits``: make only these
    (:func:`select_splits`)."""
    tasks = select_splits(plan_maps(root, settings, max_pieces), splits)
    return run_tasks(tasks, out_dir, settings, kind="maps", source=str(Path(root).absolute()),
                     max_seconds=max_seconds, jobs=jobs, export_audio=export_audio, quiet=quiet)
