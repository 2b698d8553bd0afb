"""Scoring transcriptions against reference MIDI with mir_eval (the metrics of Onsets and Frames / MAESTRO).

Per file:

- ``onset``: note precision / recall / F1, a match needing the same pitch and an onset within 50 ms
  (``mir_eval.transcription.precision_recall_f1_overlap(..., offset_ratio=None)``);
- ``onset_offset``: as above, and the offset within 20 % of the reference note's length or 50 ms, whichever is larger
  (``offset_ratio=0.2``);
- ``velocity``: onset + offset + velocity (``mir_eval.transcription_velocity``, velocities rescaled per file, match
  within 0.1);
- ``frame``: frame-level precision / recall / F1 of the piano rolls at the model frame rate
  (``audio.frame_rate``; frame ``i`` covers ``[i, i+1) / frame_rate`` and is on for a note when
  ``round(onset·fr) <= i < max(round(offset·fr), round(onset·fr) + 1)``).

References are read with the sustain pedal extending note offsets (``read_midi(path, sustain=True)``, the MAESTRO
convention the labels use). Predictions are read as written (a kkoma MIDI file carries no pedal).

Empty cases: when a file's reference and prediction both hold no notes the file scores 1.0 (nothing to find,
nothing invented); when only one side is empty it scores 0.0. ``mir_eval``'s own warnings for empty inputs are
silenced because of this explicit rule.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from kkoma.models.errors import KkomaError, require

ONSET_TOLERANCE = 0.05    # [s] mir_eval's default, the field's standard
OFFSET_RATIO = 0.2        # offset tolerance as a fraction of the reference note length
OFFSET_MIN_TOLERANCE = 0.05  # [s]
VELOCITY_TOLERANCE = 0.1  # mir_eval.transcription_velocity default
METRICS = ("onset", "onset_offset", "velocity", "frame")
MIDI_EXTENSIONS = (".mid", ".midi")


def piano_roll(notes, frame_rate: float, n_frames: int | None = None):
    """``(n_frames, 128)`` bool roll at ``frame_rate`` [Hz] (see the module docstring for the frame rule)."""
    import numpy as np

    ends = [max(round(n.offset * frame_rate), round(n.onset * frame_rate) + 1) for n in notes]
    if n_frames is None:
        n_frames = max(ends, default=0)
    roll = np.zeros((n_frames, 128), bool)
    for n, end in zip(notes, ends):
        start = round(n.onset * frame_rate)
        roll[max(0, start):min(end, n_frames), int(n.pitch)] = True
    return roll


def _prf(tp: float, n_est: float, n_ref: float) -> tuple[float, float, float]:
    if n_est == 0 and n_ref == 0:
        return 1.0, 1.0, 1.0
    p = tp / n_est if n_est else 0.0
    r = tp / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def score_notes(ref, est, frame_rate: float) -> dict:
    """Scores of one transcription ``est`` against ``ref`` (lists of ``Note``).

    Returns
    -------
    ``{"n_ref", "n_est", "<metric>_precision", "<metric>_recall", "<metric>_f1" for metric in METRICS}``.
    """
    import numpy as np

    from kkoma.models.notes import notes_to_arrays

    mir_eval = require("mir_eval", "scoring with mir_eval")
    out: dict = {"n_ref": len(ref), "n_est": len(est)}
    if not ref or not est:
        value = 1.0 if (not ref and not est) else 0.0
        for m in METRICS:
            for k in ("precision", "recall", "f1"):
                out[f"{m}_{k}"] = value
        return out
    ri, rp, rv = notes_to_arrays(ref)
    ei, ep, ev = notes_to_arrays(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ratio in (("onset", None), ("onset_offset", OFFSET_RATIO)):
            p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
                ri, rp, ei, ep, onset_tolerance=ONSET_TOLERANCE, offset_ratio=ratio,
                offset_min_tolerance=OFFSET_MIN_TOLERANCE)
            out.update({f"{name}_precision": p, f"{name}_recall": r, f"{name}_f1": f})
        p, r, f, _ = mir_eval.transcription_velocity.precision_recall_f1_overlap(
            ri, rp, rv, ei, ep, ev, onset_tolerance=ONSET_TOLERANCE, offset_ratio=OFFSET_RATIO,
            offset_min_tolerance=OFFSET_MIN_TOLERANCE, velocity_tolerance=VELOCITY_TOLERANCE)
        out.update({"velocity_precision": p, "velocity_recall": r, "velocity_f1": f})
    n = max(len(piano_roll(ref, frame_rate)), len(piano_roll(est, frame_rate)))
    a, b = piano_roll(ref, frame_rate, n), piano_roll(est, frame_rate, n)
    p, r, f = _prf(float(np.logical_and(a, b).sum()), float(b.sum()), float(a.sum()))
    out.update({"frame_precision": p, "frame_recall": r, "frame_f1": f})
    return {k: (float(v) if not isinstance(v, int) else v) for k, v in out.items()}


@dataclass
class FileScore:
    name: str
    ref: str
    pred: str
    scores: dict


@dataclass
class Report:
    """Per-file scores and their means, grouped (e.g. by dataset split)."""
    groups: dict = field(default_factory=dict)   # group -> list[FileScore]
    failures: list = field(default_factory=list)  # (file, reason)

    def means(self, group: str) -> dict:
        files = self.groups[group]
        keys = [k for k in files[0].scores if k not in ("n_ref", "n_est")] if files else []
        out = {k: float(sum(f.scores[k] for f in files) / len(files)) for k in keys}
        out["files"] = len(files)
        out["n_ref"] = sum(f.scores["n_ref"] for f in files)
        out["n_est"] = sum(f.scores["n_est"] for f in files)
        return out

    def to_json(self) -> dict:
        return {
            "metrics": {"onset_tolerance_s": ONSET_TOLERANCE, "offset_ratio": OFFSET_RATIO,
                        "offset_min_tolerance_s": OFFSET_MIN_TOLERANCE, "velocity_tolerance": VELOCITY_TOLERANCE},
            "groups": {g: {"mean": self.means(g),
                           "files": [{"name": f.name, "ref": f.ref, "pred": f.pred, **f.scores} for f in files]}
                       for g, files in self.groups.items()},
            "failures": [{"file": f, "reason": r} for f, r in self.failures],
        }


def _midi_files(folder: Path) -> dict[str, Path]:
    """stem -> path of the MIDI files in ``folder`` (recursively; the stem must be unique)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in MIDI_EXTENSIONS and p.is_file() and not p.name.startswith("."):
            if p.stem in out:
                raise KkomaError(f"two MIDI files in {folder} share the name {p.stem!r} ({out[p.stem]} and {p}); "
                                 "pairing is by name, so names must be unique.")
            out[p.stem] = p
    return out


def _read(path: Path, sustain: bool):
    from kkoma.models.notes import read_midi

    try:
        return read_midi(path, sustain=sustain)
    except KkomaError:
        raise
    except Exception as e:  # mido raises a zoo of types on damaged files
        raise KkomaError(f"{path} is not a MIDI file kkoma can read ({e}).") from None


def score_pair(ref_path: Path, pred_path: Path, frame_rate: float, name: str | None = None) -> FileScore:
    ref = _read(ref_path, sustain=True)
    est = _read(pred_path, sustain=False)
    return FileScore(name or ref_path.stem, str(ref_path), str(pred_path), score_notes(ref, est, frame_rate))


def evaluate_dirs(pred_dir: str | Path, ref_dir: str | Path, settings, group: str = "all") -> Report:
    """Pair ``pred_dir/**/X.mid`` with ``ref_dir/**/X.mid`` by stem and score every pair.

    A reference without a prediction is a failure (it counts, as a missed file, in no mean); predictions without a
    reference are ignored with a failure line too, so a mismatch of folders never passes unnoticed.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, what in ((pred_dir, "--pred"), (ref_dir, "--ref")):
        if not d.is_dir():
            raise KkomaError(f"{what} {d} is not a folder.")
    preds, refs = _midi_files(pred_dir), _midi_files(ref_dir)
    if not refs:
        raise KkomaError(f"{ref_dir} holds no reference MIDI files (.mid).")
    report = Report(groups={group: []})
    for stem, ref in refs.items():
        if stem not in preds:
            report.failures.append((str(ref), f"no prediction {stem}.mid in {pred_dir}"))
            continue
        try:
            report.groups[group].append(score_pair(ref, preds[stem], settings.audio.frame_rate, stem))
        except KkomaError as e:
            report.failures.append((stem, str(e)))
    for stem in sorted(set(preds) - set(refs)):
        report.failures.append((str(preds[stem]), f"no reference {stem}.mid in {ref_dir}"))
    return report


def evaluate_dataset(dataset: str | Path, settings, splits: Sequence[str] | None = None,
                     out_dir: str | Path | None = None, quiet: bool = False, n_jobs: int | None = None) -> Report:
    """Transcribe ``DATASET/audio/<split>/*.flac`` through the file pipeline and score against the ``.mid`` beside.

    The transcriptions go to ``out_dir/<split>/`` (a temporary folder, removed afterwards, when None).
    """
    import shutil
    import tempfile

    from kkoma.offline.dataset import audio_splits
    from kkoma.offline.transcribe import transcribe_paths

    dataset = Path(dataset)
    available = audio_splits(dataset)
    splits = list(splits) if splits else [s for s in available if s.startswith("valid")] or available
    missing = [s for s in splits if s not in available]
    if missing:
        raise KkomaError(f"{dataset}/audio has no split {missing[0]!r}; it has " + (", ".join(available) or "none")
                         + ".")
    tmp = None
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="kkoma-eval-")
        out_dir = tmp
    out_dir = Path(out_dir)
    report = Report()
    try:
        for split in splits:
            audio_dir = dataset / "audio" / split
            pred_dir = out_dir / split
            summary = transcribe_paths([str(audio_dir)], settings, out_dir=pred_dir, formats=("mid",),
                                       overwrite=True, quiet=quiet, n_jobs=n_jobs)
            for o in summary.failed:
                report.failures.append((o.audio, o.reason))
            part = evaluate_dirs(pred_dir, audio_dir, settings, group=split) if summary.done else \
                Report(groups={split: []})
            report.groups[split] = part.groups[split]
            report.failures += [(f, r) for f, r in part.failures if not r.startswith("no prediction")]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def format_table(report: Report, per_file: bool = True) -> str:
    """Markdown table: one row per file (optional) and one mean row per group; F1 in %."""
    head = "| file | notes ref | notes est | onset F1 | onset+offset F1 | +velocity F1 | frame F1 |"
    lines = [head, "|" + "---|" * 7]

    def row(name, s) -> str:
        return (f"| {name} | {s['n_ref']} | {s['n_est']} | " +
                " | ".join(f"{100 * s[f'{m}_f1']:.1f}" for m in METRICS) + " |")

    for group, files in report.groups.items():
        if per_file:
            for f in files:
                lines.append(row(f.name, f.scores))
        if files:
            m = report.means(group)
            lines.append(row(f"**mean {group}** ({m['files']} files)", m))
        else:
            lines.append(f"| **{group}**: no file scored | | | | | | |")
    return "\n".join(lines)


def write_json(report: Report, path: str | Path) -> None:
    from kkoma.offline.transcribe import write_text

    write_text(Path(path), json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n")
