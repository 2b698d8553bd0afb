"""Choose the note tracker's thresholds on a validation split: ``kkoma tune DATASET WEIGHTS`` (offline/tune_cli.py).

The network's probabilities are computed once per piece (from the cached feature shards); the tracker then runs
for every (onset_threshold, frame_threshold, offset_hold_ms, restrike_margin) of a grid and the notes are scored
with mir_eval against the piece's reference MIDI (sustain-extended). Prints a table and the best setting by onset F1 +
onset/offset F1; put it in ``[tracker]`` of config.toml. Tune on ``valid_pieces`` (training soundfonts) and report
the held-out soundfont and room conditions with the chosen values, so they stay unseen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tune(settings, dataset: Path, *, split: str, onsets, frames, holds, restrikes=None,
         max_pieces: int = 0) -> tuple:
    """Score every grid point on ``split`` of ``dataset`` with the model of ``settings`` (``model.weights``, the
    settings as :func:`models.settings.load_settings` gives them for it); print one line per point and the best.

    ``onsets``, ``frames``, ``holds`` [ms] and ``restrikes`` are the values tried for the tracker's onset_threshold,
    frame_threshold, offset_hold_ms and restrike_margin (None: the settings' own). Returns the best row ``(onset,
    frame, hold, margin, onset F1, onset+offset F1)``, best by onset F1 + onset+offset F1.
    """
    from kkoma.models.errors import KkomaError, require
    from kkoma.models.inference import make_streaming_model
    from kkoma.models.notes import events_to_notes, notes_to_arrays, read_midi
    from kkoma.models.tracker import NoteTracker
    from kkoma.offline.dataset import read_manifest, split_pieces
    from kkoma.offline.labels import crop_notes
    from kkoma.offline.train import spread_subset

    mir_eval = require("mir_eval", "kkoma tune")

    dataset = Path(dataset)
    pieces = spread_subset(split_pieces(read_manifest(dataset, settings), split), max_pieces)
    if not pieces:
        raise KkomaError(f"{dataset} has no {split} pieces to tune on.")
    model = make_streaming_model(settings)
    probs, refs = [], []
    for p in pieces:
        with np.load(dataset / p["file"]) as z:
            probs.append(model.predict(z["features"].astype(np.float32)))
        # The reference as the piece was rendered: the source performance, sustain-extended, cropped.
        ref = crop_notes(read_midi(p["midi"], sustain=True), float(p["seconds"]))
        refs.append(notes_to_arrays(ref))
    rows = []
    margins = restrikes if restrikes is not None else [settings.tracker.restrike_margin]
    grid = [(o, f, h, r) for o in onsets for f in frames for h in holds for r in margins if f <= o and o + r <= 1.0]
    for on_t, fr_t, hold, margin in grid:
        s = settings.replace(tracker__onset_threshold=str(on_t), tracker__frame_threshold=str(fr_t),
                             tracker__offset_hold_ms=str(hold), tracker__restrike_margin=str(margin))
        f_on, f_onoff = [], []
        for pr, (ri, rp, _) in zip(probs, refs):
            tr = NoteTracker(s)
            ev = tr.process(pr["onset"], pr["frame"], pr["velocity"]) + tr.flush()
            ei, ep, _ = notes_to_arrays(events_to_notes(ev))
            if len(ri) == 0 or len(ei) == 0:
                f_on.append(float(len(ri) == len(ei)))
                f_onoff.append(float(len(ri) == len(ei)))
                continue
            f_on.append(mir_eval.transcription.precision_recall_f1_overlap(ri, rp, ei, ep, offset_ratio=None)[2])
            f_onoff.append(mir_eval.transcription.precision_recall_f1_overlap(ri, rp, ei, ep)[2])
        rows.append((on_t, fr_t, hold, margin, float(np.mean(f_on)), float(np.mean(f_onoff))))
        print(f"onset_threshold {on_t:.2f} frame_threshold {fr_t:.2f} offset_hold_ms {hold:g} "
              f"restrike_margin {margin:.2f}: onset F1 {rows[-1][4]:.3f} onset+offset F1 {rows[-1][5]:.3f}",
              flush=True)
    best = max(rows, key=lambda r: r[4] + r[5])
    print(f"best on {split} ({len(pieces)} pieces): onset_threshold = {best[0]}, frame_threshold = {best[1]}, "
          f"offset_hold_ms = {best[2]}, restrike_margin = {best[3]} (onset F1 {best[4]:.3f}, onset+offset F1 "
          f"{best[5]:.3f})")
    return best


if __name__ == "__main__":  # pragma: no cover - tested through a subprocess
    from kkoma.cli import run_module_as

    run_module_as("tune")
