"""Where a model's note errors are: ``kkoma diagnose AUDIO_DIR [--max-files N]`` (offline/diagnose_cli.py).

Transcribes the audio files of a folder that has the reference ``X.mid`` beside each ``X.flac`` (as
``DATASET/audio/<split>/`` made by ``kkoma prepare``), or reads transcriptions made already (``--pred DIR``: the
``X.mid`` files ``kkoma evaluate --dataset DATA --out DIR`` keeps in ``DIR/<split>/``), and prints two tables over all
of them:

- per register (12 keys from A0): reference notes, onset recall and precision (mir_eval's one-to-one note matching,
  50 ms onset tolerance, no offset), and the median onset error of the matched notes [ms];
- what each false note (a transcribed note with no match) sits beside: a reference note starting within 50 ms an
  octave above it (so the false note is an octave *below* a played one), an octave below, a twelfth or two octaves
  above, one or two semitones away, a fourth or fifth away; the same key still sounding (a re-strike of a held
  note); the same key starting 50-150 ms away (too late or too early); other notes starting; nothing.

The model card's "where the errors are" figures come from this tool.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kkoma.models.notes import PIANO_MIN_MIDI

REGISTER_KEYS = 12
ONSET_TOLERANCE = 0.05  # [s]
NEAR_MISS = 0.15  # [s] same key this far away still counts as a timing miss, not a false note

#: False-note kinds, in the order they are tested (the first that applies is counted).
KINDS = ("octave below a played note", "octave above a played note", "a twelfth or two octaves below a played note",
         "1-2 semitones from a played note", "a fourth or fifth from a played note",
         "re-strike of a key still sounding", "same key, 50-150 ms off", "other notes starting", "nothing starting")


@dataclass
class Diagnosis:
    """Counts over many files. Registers are indexed by ``(pitch - PIANO_MIN_MIDI) // 12``."""
    n_ref: Counter = field(default_factory=Counter)
    n_ref_found: Counter = field(default_factory=Counter)
    n_est: Counter = field(default_factory=Counter)
    n_est_right: Counter = field(default_factory=Counter)
    errors_ms: dict = field(default_factory=dict)       # register -> list of onset errors [ms] (est - ref)
    false_kinds: dict = field(default_factory=dict)     # "low"/"high" half of the keyboard -> Counter of KINDS

    def add(self, ref, est) -> None:
        """Add one file: ``ref`` and ``est`` are lists of :class:`models.notes.Note`."""
        from kkoma.models.errors import require
        from kkoma.models.notes import notes_to_arrays

        mir_eval = require("mir_eval", "kkoma diagnose")

        matched = []
        if ref and est:
            ri, rp, _ = notes_to_arrays(ref)
            ei, ep, _ = notes_to_arrays(est)
            matched = mir_eval.transcription.match_notes(ri, rp, ei, ep, onset_tolerance=ONSET_TOLERANCE,
                                                         offset_ratio=None)
        ref_hit = {i for i, _ in matched}
        est_hit = {j for _, j in matched}
        for i, n in enumerate(ref):
            g = register(n.pitch)
            self.n_ref[g] += 1
            self.n_ref_found[g] += i in ref_hit
        for i, j in matched:
            self.errors_ms.setdefault(register(ref[i].pitch), []).append(1e3 * (est[j].onset - ref[i].onset))
        for j, e in enumerate(est):
            g = register(e.pitch)
            self.n_est[g] += 1
            if j in est_hit:
                self.n_est_right[g] += 1
            else:
                half = "low" if e.pitch < PIANO_MIN_MIDI + 3 * REGISTER_KEYS else "high"
                self.false_kinds.setdefault(half, Counter())[false_kind(e, ref)] += 1

    def register_rows(self) -> list[tuple[str, int, float, float, float]]:
        """(keys, reference notes, recall, precision, median onset error [ms]) per register with notes."""
        from kkoma.models.notes import note_name

        rows = []
        for g in sorted(set(self.n_ref) | set(self.n_est)):
            lo = PIANO_MIN_MIDI + g * REGISTER_KEYS
            recall = self.n_ref_found[g] / self.n_ref[g] if self.n_ref[g] else float("nan")
            precision = self.n_est_right[g] / self.n_est[g] if self.n_est[g] else float("nan")
            err = float(np.median(self.errors_ms[g])) if self.errors_ms.get(g) else float("nan")
            rows.append((f"{note_name(lo)}-{note_name(lo + REGISTER_KEYS - 1)} ({lo}-{lo + REGISTER_KEYS - 1})",
                         self.n_ref[g], recall, precision, err))
        return rows


def register(pitch: int) -> int:
    return (int(pitch) - PIANO_MIN_MIDI) // REGISTER_KEYS


def false_kind(e, ref) -> str:
    """What the unmatched transcribed note ``e`` sits beside in ``ref`` (one of :data:`KINDS`)."""
    starting = {r.pitch - e.pitch for r in ref if abs(r.onset - e.onset) <= ONSET_TOLERANCE}
    if 12 in starting:
        return KINDS[0]
    if -12 in starting:
        return KINDS[1]
    if starting & {19, 24}:
        return KINDS[2]
    if starting & {-2, -1, 1, 2}:
        return KINDS[3]
    if starting & {-7, -5, 5, 7}:
        return KINDS[4]
    if any(r.pitch == e.pitch and r.onset < e.onset < r.offset for r in ref):
        return KINDS[5]
    if any(r.pitch == e.pitch and abs(r.onset - e.onset) <= NEAR_MISS for r in ref):
        return KINDS[6]
    return KINDS[7] if starting else KINDS[8]


def format_report(d: Diagnosis, title: str) -> str:
    lines = [f"{title}", "", "| keys | reference notes | onset recall | onset precision | median onset error [ms] |",
             "|---|---:|---:|---:|---:|"]
    def pct(x: float) -> str:
        return "–" if np.isnan(x) else f"{100 * x:.1f} %"

    for keys, n, rec, prec, err in d.register_rows():
        lines.append(f"| {keys} | {n} | {pct(rec)} | {pct(prec)} | {'–' if np.isnan(err) else f'{err:.1f}'} |")
    for half, label in (("low", "A0-G#3"), ("high", "A3 and up")):
        kinds = d.false_kinds.get(half, Counter())
        total = sum(kinds.values())
        if not total:
            continue
        lines += ["", f"false notes, {label}: {total}"]
        lines += [f"  {100 * kinds[k] / total:5.1f} %  {k}" for k in KINDS if kinds[k]]
    return "\n".join(lines)


def diagnose(settings, audio_dir: Path, max_files: int = 0, pred: Path | None = None) -> tuple[Diagnosis, int]:
    """Gather the note errors on the ``.flac`` files of ``audio_dir`` that have a reference ``.mid`` beside them (the
    first ``max_files`` in name order; 0 = all) -> (diagnosis, files used). Each file is transcribed with
    ``settings``, or, with ``pred``, its transcription ``pred/X.mid`` is read (e.g. what ``kkoma evaluate --out``
    wrote).

    Raises KkomaError when the folder holds no such file, or ``pred`` lacks one of their transcriptions.
    """
    from kkoma.models.errors import KkomaError
    from kkoma.models.notes import read_midi

    audio_dir = Path(audio_dir)
    files = sorted(p for p in audio_dir.glob("*.flac") if p.with_suffix(".mid").is_file())
    if max_files:
        files = files[:max_files]
    if not files:
        raise KkomaError(f"{audio_dir} holds no .flac file with a reference .mid beside it.")
    d = Diagnosis()
    if pred is not None:
        pred = Path(pred)
        missing = [f.stem for f in files if not (pred / f"{f.stem}.mid").is_file()]
        if missing:
            raise KkomaError(f"{pred} has no transcription {missing[0]}.mid (of {len(missing)} missing).")
        for f in files:
            d.add(read_midi(f.with_suffix(".mid"), sustain=True), read_midi(pred / f"{f.stem}.mid"))
        return d, len(files)
    from kkoma.models.pipeline import make_transcriber
    from kkoma.offline.transcribe import transcribe_file

    transcriber = make_transcriber(settings)
    for f in files:
        d.add(read_midi(f.with_suffix(".mid"), sustain=True), list(transcribe_file(f, settings, transcriber).notes))
    return d, len(files)


if __name__ == "__main__":  # pragma: no cover - tested through a subprocess
    from kkoma.cli import run_module_as

    run_module_as("diagnose")
