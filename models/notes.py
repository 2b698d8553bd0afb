"""Notes and note events, and MIDI files in and out.

A :class:`Note` is a finished note (onset and offset in seconds); a :class:`NoteEvent` is one half of it as the
streaming :class:`models.tracker.NoteTracker` emits it (the live MIDI output sends events as they come, files are
written from notes). Times are always seconds from the start of the stream or file, never ticks or frames.

MIDI files are handled with ``mido`` (a core dependency), imported inside the functions so that importing this
module stays cheap (``kkoma --help`` must be instant).

Conventions
-----------
* Writing: one track, the tempo of ``record.tempo_bpm``, ``record.ticks_per_beat`` ticks per beat, channel
  ``midi.channel``. Seconds are placed on the nearest tick of the tempo actually written (MIDI stores an integer
  number of microseconds per beat), so a file read back gives the times within half a tick. At equal ticks note-offs
  come before note-ons. MIDI cannot hold two sounding notes of one pitch on one channel, so a note overlapped by a
  later note of the same pitch ends where that one starts (a re-strike), and every note lasts at least one tick.
* Reading: all channels and tracks, tempo changes honoured. The same re-strike rule applies (a note-on of a sounding
  pitch ends the sounding note there). With ``sustain=True`` the sustain pedal (CC64 >= 64 = down) holds released
  keys until the pedal comes up, the convention of MAESTRO and Onsets and Frames; a key struck again under the pedal
  ends its previous note at the new onset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from kkoma.models.errors import KkomaError

if TYPE_CHECKING:  # pragma: no cover
    import mido
    import numpy as np

    from kkoma.models.settings import Settings

PIANO_MIN_MIDI = 21   # A0, the lowest key of the piano and pitch index 0 of the models' 88 outputs
N_KEYS = 88           # A0..C8
SUSTAIN_CC = 64       # damper pedal controller; values >= 64 mean down (General MIDI)


NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(pitch: int) -> str:
    """MIDI note number -> name with octave, e.g. 69 -> 'A4', 21 -> 'A0'."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


@dataclass(frozen=True)
class Note:
    """One note.

    Attributes
    ----------
    pitch : MIDI note number (21..108 on a piano; files read from disk may hold any of 0..127).
    onset : start [s] from the start of the stream or file.
    offset : end [s] (>= onset).
    velocity : MIDI velocity 1..127.
    """
    pitch: int
    onset: float
    offset: float
    velocity: int

    @property
    def duration(self) -> float:
        """offset - onset [s]."""
        return self.offset - self.onset


@dataclass(frozen=True)
class NoteEvent:
    """One note-on or note-off as the tracker emits it.

    Attributes
    ----------
    kind : ``"on"`` or ``"off"``.
    pitch : MIDI note number (21..108).
    velocity : MIDI velocity 1..127 for ``"on"``; 0 for ``"off"``.
    frame : feature frame index at which the event happens [frames] (counted from 0 at the start of the stream).
    time : ``frame / audio.frame_rate`` [s].
    """
    kind: str
    pitch: int
    velocity: int
    frame: int
    time: float


# ---------------------------------------------------------------------------------------------------------------
# Events -> notes, notes -> arrays
# ---------------------------------------------------------------------------------------------------------------
def events_to_notes(events: Iterable[NoteEvent], close_at: float | None = None) -> list[Note]:
    """Pair note-ons with note-offs into notes.

    Parameters
    ----------
    events : in the order emitted (times non-decreasing per pitch; the tracker can stamp an off before an event of
        another pitch emitted earlier, see models.tracker).
    close_at : end [s] given to notes still sounding at the end of ``events`` (e.g. a recording saved while keys are
        down); None drops them. The tracker's ``flush()`` closes every note, so after it nothing is left open.

    Returns
    -------
    Notes sorted by (onset, pitch). A note-on of a pitch already sounding ends the sounding note at its time; a
    note-off with no sounding note is ignored.
    """
    open_: dict[int, NoteEvent] = {}
    notes: list[Note] = []
    for e in events:
        if e.kind == "on":
            prev = open_.pop(e.pitch, None)
            if prev is not None:
                notes.append(Note(prev.pitch, prev.time, e.time, prev.velocity))
            open_[e.pitch] = e
        elif e.kind == "off":
            prev = open_.pop(e.pitch, None)
            if prev is not None:
                notes.append(Note(prev.pitch, prev.time, max(e.time, prev.time), prev.velocity))
        else:
            raise ValueError(f"unknown NoteEvent kind {e.kind!r}")
    if close_at is not None:
        for prev in open_.values():
            notes.append(Note(prev.pitch, prev.time, max(close_at, prev.time), prev.velocity))
    notes.sort(key=lambda n: (n.onset, n.pitch, n.offset))
    return notes


MIN_SCORED_LENGTH = 1e-3  # [s] length given to a note that does not last, when it is scored (notes_to_arrays)


def notes_to_arrays(notes: Sequence[Note]) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Notes in the form ``mir_eval.transcription`` takes.

    Returns
    -------
    intervals : (n, 2) float64 [s] onset, offset; a note that does not last gets 1 ms (``MIN_SCORED_LENGTH``), since
        mir_eval rejects intervals that do not move forward (a MIDI file may hold such notes).
    pitches_hz : (n,) float64 [Hz] (A4 = 440 Hz, equal temperament).
    velocities : (n,) float64 MIDI velocity 1..127.
    """
    import numpy as np

    n = len(notes)
    intervals = np.empty((n, 2), np.float64)
    pitch = np.empty(n, np.float64)
    vel = np.empty(n, np.float64)
    for i, note in enumerate(notes):
        intervals[i, 0] = note.onset
        intervals[i, 1] = max(note.offset, note.onset + MIN_SCORED_LENGTH)
        pitch[i] = note.pitch
        vel[i] = note.velocity
    return intervals, 440.0 * 2.0 ** ((pitch - 69.0) / 12.0), vel


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def _tempo_us(settings: "Settings") -> int:
    """Microseconds per beat as written to the file (MIDI stores an integer)."""
    return max(1, int(round(60_000_000 / settings.record.tempo_bpm)))


def _placed(notes: Iterable[Note], ticks_per_second: float) -> list[tuple[int, int, int, int]]:
    """Notes on ticks as ``(on_tick, off_tick, pitch, velocity)``, made writable to one MIDI channel.

    Per pitch, in onset order: notes starting on the same tick merge (longest end, loudest velocity); every note
    lasts at least one tick; a note ends no later than the next note of its pitch starts.
    """
    by_pitch: dict[int, list[list[int]]] = {}
    for n in notes:
        pitch = int(n.pitch)
        if not 0 <= pitch <= 127:
            raise ValueError(f"pitch {pitch} is outside MIDI 0..127")
        on = max(0, int(round(float(n.onset) * ticks_per_second)))
        off = max(0, int(round(float(n.offset) * ticks_per_second)))
        vel = min(127, max(1, int(n.velocity)))
        by_pitch.setdefault(pitch, []).append([on, off, vel])
    out = []
    for pitch, items in by_pitch.items():
        items.sort()
        merged: list[list[int]] = []
        for on, off, vel in items:
            if merged and merged[-1][0] == on:
                merged[-1][1] = max(merged[-1][1], off)
                merged[-1][2] = max(merged[-1][2], vel)
            else:
                merged.append([on, off, vel])
        for i, (on, off, vel) in enumerate(merged):
            off = max(off, on + 1)
            if i + 1 < len(merged):
                off = min(off, merged[i + 1][0])
            out.append((on, off, pitch, vel))
    return out


def notes_to_midifile(notes: Iterable[Note], settings: "Settings") -> "mido.MidiFile":
    """A type-0 MIDI file holding ``notes`` (see the module notes for tick placement and overlaps).

    Parameters
    ----------
    notes : any order; times [s] >= 0 (negative times are placed at 0).
    settings : uses ``record.tempo_bpm``, ``record.ticks_per_beat`` and ``midi.channel`` (1..16).
    """
    import mido

    tpb = settings.record.ticks_per_beat
    tempo = _tempo_us(settings)
    ticks_per_second = tpb * 1_000_000 / tempo
    channel = settings.midi.channel - 1
    # (tick, 0 = off before 1 = on, pitch, velocity)
    timeline = []
    for on, off, pitch, vel in _placed(notes, ticks_per_second):
        timeline.append((on, 1, pitch, vel))
        timeline.append((off, 0, pitch, 0))
    timeline.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name="kkoma", time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    last = 0
    for tick, is_on, pitch, vel in timeline:
        kind = "note_on" if is_on else "note_off"
        track.append(mido.Message(kind, channel=channel, note=pitch, velocity=vel, time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    mid = mido.MidiFile(type=0, ticks_per_beat=tpb)
    mid.tracks.append(track)
    return mid


def write_midi(notes: Iterable[Note], path: str | os.PathLike, settings: "Settings") -> None:
    """Write ``notes`` to the MIDI file ``path`` atomically.

    The file is written to a temporary file in the same folder, flushed and fsync'ed, then renamed over ``path``
    (``os.replace``), so ``path`` always holds either the previous complete file or the new complete file — also
    when the process is killed mid-write (the live recorder rewrites its file every ``record.autosave_s``).

    Raises
    ------
    KkomaError : the folder does not exist or cannot be written (one sentence naming the path).
    """
    from kkoma.models.atomic import atomic_write

    mid = notes_to_midifile(notes, settings)
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise KkomaError(f"cannot write MIDI file {path}: the folder {folder} does not exist.")
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            mid.save(file=fh)

    try:
        atomic_write(path, save)
    except OSError as e:
        raise KkomaError(f"cannot write MIDI file {path}: {e.strerror or e}.") from None


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
def _open_midi(path: Path) -> "mido.MidiFile":
    import mido

    if not path.exists():
        raise KkomaError(f"MIDI file {path} does not exist.")
    if path.is_dir():
        raise KkomaError(f"{path} is a folder, not a MIDI file.")
    try:
        mid = mido.MidiFile(path)
    except OSError as e:
        if e.errno is not None:  # a real I/O error (permissions, device); mido raises errno-less ones for bad data
            raise KkomaError(f"MIDI file {path} cannot be read ({e.strerror or e}).") from None
        raise KkomaError(f"{path} is not a valid MIDI file ({e}).") from None
    except Exception as e:  # mido raises EOFError, ValueError, KeyError, IndexError... on damaged data
        raise KkomaError(f"{path} is not a valid MIDI file ({type(e).__name__}: {e}).") from None
    if mid.type == 2:
        raise KkomaError(f"{path} is a type-2 MIDI file (independent sequences), which kkoma does not read.")
    return mid


def read_midi(path: str | os.PathLike, sustain: bool = True) -> list[Note]:
    """The notes of a MIDI file.

    Parameters
    ----------
    path : a standard MIDI file (type 0 or 1; every track and channel is read, tempo changes honoured).
    sustain : apply the sustain pedal (CC64 >= 64 = down): a key released while the pedal is down sounds until the
        pedal is released, or until the same key is struck again (MAESTRO / Onsets and Frames labels). False gives
        the notes as the keys were held.

    Returns
    -------
    Notes sorted by (onset, pitch), times [s]. Notes that would last zero time (on and off on one tick, no pedal)
    are dropped; notes still sounding at the end of the file end at its last event.

    Raises
    ------
    KkomaError : missing, unreadable or corrupt file (the message names the file).
    """
    path = Path(path)
    mid = _open_midi(path)
    try:
        messages = list(mid)  # merged tracks; msg.time = seconds since the previous message
    except Exception as e:
        raise KkomaError(f"{path} is not a valid MIDI file ({type(e).__name__}: {e}).") from None

    notes: list[Note] = []
    # (channel, pitch) -> [onset, velocity, key_released]; one sounding note per key (the re-strike rule)
    sounding: dict[tuple[int, int], list] = {}
    # (channel, pitch) -> time a note-on re-struck a sounding key, whose own note-off may follow on the same tick
    restruck_at: dict[tuple[int, int], float] = {}
    pedal = [False] * 16

    def end(key, t):
        onset, vel, _ = sounding.pop(key)
        if t > onset:
            notes.append(Note(key[1], onset, t, vel))

    t = 0.0
    for msg in messages:
        t += msg.time
        kind = msg.type
        if kind == "note_on" and msg.velocity > 0:
            key = (msg.channel, msg.note)
            if key in sounding:
                end(key, t)
                restruck_at[key] = t
            sounding[key] = [t, msg.velocity, False]
        elif kind == "note_off" or kind == "note_on":
            key = (msg.channel, msg.note)
            note = sounding.get(key)
            if note is None:
                continue
            if note[0] == t and restruck_at.get(key) == t:
                # The note-off of the note this note-on just ended, written after the note-on on the same tick.
                del restruck_at[key]
                continue
            if sustain and pedal[msg.channel]:
                note[2] = True
            else:
                end(key, t)
        elif kind == "control_change" and msg.control == SUSTAIN_CC and sustain:
            down = msg.value >= 64
            if pedal[msg.channel] and not down:
                for key in [k for k, v in sounding.items() if k[0] == msg.channel and v[2]]:
                    end(key, t)
            pedal[msg.channel] = down
    for key in list(sounding):
        end(key, t)
    notes.sort(key=lambda n: (n.onset, n.pitch, n.offset))
    return notes
