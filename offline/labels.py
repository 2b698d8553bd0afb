"""Frame labels from notes: onset, frame (sustain-pedal-extended), offset and velocity rolls.

Time grid: frame ``i`` is at time ``i * hop / sr`` [s] (``audio.frame_rate`` frames per second), the same grid as the
features (:meth:`models.cqt.CQT.features` gives ``n_samples // hop + 1`` frames) and as the note tracker, which
reports an event at frame ``i`` as time ``i / frame_rate``. A time ``t`` belongs to the nearest frame,
``round(t * frame_rate)``, so an onset decoded at its labelled frame is at most half a hop (5 ms) from the truth.

Pedal: the notes passed in are expected to be sustain-extended already (``models.notes.read_midi(path,
sustain=True)``, the MAESTRO / Onsets and Frames convention), so ``frame`` covers the pedal-held part of a note.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI, Note

LABEL_NAMES = ("onset", "frame", "offset", "velocity")


def time_to_frame(t, frame_rate: float):
    """Nearest frame index of time(s) ``t`` [s] (the grid of the module notes)."""
    return np.rint(np.asarray(t, np.float64) * frame_rate).astype(np.int64)


def note_labels(notes: Iterable[Note], n_frames: int, frame_rate: float) -> dict[str, np.ndarray]:
    """Piano-roll labels of ``notes`` on ``n_frames`` frames.

    Parameters
    ----------
    notes : notes with times [s]; pitches outside the piano (21..108) are ignored, notes starting at or after the
        last frame's time + half a hop are ignored, later offsets are clipped to the end.
    n_frames : number of frames (the feature count of the same audio).
    frame_rate : frames per second [Hz] (``settings.audio.frame_rate``).

    Returns
    -------
    dict of ``(n_frames, 88)`` uint8 arrays (key 0 = A0 = MIDI 21):
      ``onset`` 1 at the frame of each note's onset;
      ``frame`` 1 from the onset frame up to, not including, the offset frame (at least the onset frame);
      ``offset`` 1 at the frame of each note's offset (when it falls inside the piece);
      ``velocity`` the note's MIDI velocity 1..127 at its onset frame (the larger if two onsets share one), 0
      elsewhere.
    """
    out = {name: np.zeros((n_frames, N_KEYS), np.uint8) for name in LABEL_NAMES}
    for n in notes:
        k = int(n.pitch) - PIANO_MIN_MIDI
        if not 0 <= k < N_KEYS:
            continue
        on = int(time_to_frame(n.onset, frame_rate))
        if on >= n_frames:
            continue
        on = max(on, 0)
        off = int(time_to_frame(n.offset, frame_rate))
        out["frame"][on:max(on + 1, min(off, n_frames)), k] = 1
        out["onset"][on, k] = 1
        out["velocity"][on, k] = max(int(out["velocity"][on, k]), min(127, max(1, int(n.velocity))))
        if on < off < n_frames:
            out["offset"][off, k] = 1
    return out


def label_notes(onset: np.ndarray, frame: np.ndarray, velocity: np.ndarray, frame_rate: float) -> list[Note]:
    """The notes that :func:`note_labels` labels, read back from its ``(n_frames, 88)`` onset, frame and velocity
    rolls, on the frame grid [s]: a note starts at each onset frame and ends where its key's frame run ends or at the
    key's next onset, whichever comes first (at least one frame later). The reference of training's note-level
    validation (offline/train.py), which needs no MIDI file beside a shard."""
    notes = []
    n = onset.shape[0]
    for k in range(onset.shape[1]):
        ons = np.flatnonzero(onset[:, k])
        if ons.size == 0:
            continue
        off_frames = np.flatnonzero(frame[:, k] == 0)
        for i, on in enumerate(ons):
            nxt = ons[i + 1] if i + 1 < ons.size else n
            j = np.searchsorted(off_frames, on + 1)
            end = min(off_frames[j] if j < off_frames.size else n, nxt)
            notes.append(Note(k + PIANO_MIN_MIDI, on / frame_rate, max(end, on + 1) / frame_rate,
                              max(1, int(velocity[on, k]))))
    notes.sort(key=lambda x: (x.onset, x.pitch))
    return notes


def crop_notes(notes: Iterable[Note], end: float) -> list[Note]:
    """Notes as heard in the first ``end`` seconds: notes starting at or after ``end`` dropped, offsets clipped to
    ``end`` [s]."""
    return [Note(n.pitch, n.onset, min(n.offset, end), n.velocity) for n in notes if n.onset < end]


def scale_times(notes: Iterable[Note], factor: float) -> list[Note]:
    """Notes with every time multiplied by ``factor`` (audio played ``1 / factor`` times faster, e.g. detuning by
    resampling)."""
    return [Note(n.pitch, n.onset * factor, n.offset * factor, n.velocity) for n in notes]


def piano_notes(notes: Iterable[Note]) -> list[Note]:
    """Only the notes on the 88 keys (MIDI 21..108)."""
    return [n for n in notes if PIANO_MIN_MIDI <= n.pitch < PIANO_MIN_MIDI + N_KEYS]
