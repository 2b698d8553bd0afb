"""The live recorder: the MIDI file on disk is a complete, valid standard MIDI file at every moment.

Events are collected as the engine emits them (times on the sample clock, [s]). :meth:`Recorder.autosave` rewrites
the whole file through :func:`models.notes.write_midi` (temp file + fsync + atomic rename) when ``record.autosave_s``
has passed; notes still sounding are written as ending "now", so a crash (SIGKILL, power loss) loses at most the
last autosave interval. :meth:`Recorder.close` writes the final file. Optionally the input audio (mono, at the
device rate, exactly what the engine consumed) goes to a WAV/FLAC file next to it, flushed at every autosave.

Thread use: :meth:`add_audio` from the processing thread, :meth:`add` from it or (``kkoma record``'s files model)
from the files model's thread, :meth:`autosave` from the main thread; a lock keeps them apart (never taken in the
audio callback).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from kkoma.models.errors import KkomaError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from kkoma.models.notes import NoteEvent
    from kkoma.models.settings import Settings


class Recorder:
    """Collect note events and keep ``path`` a valid MIDI file.

    Parameters
    ----------
    path : the ``.mid`` to write (its folder must exist).
    settings : ``record.*`` and ``midi.channel``.
    audio_path : also write the consumed input audio here (format from the suffix, e.g. ``.wav``, ``.flac``).
    audio_rate : sample rate of that audio [Hz] (required with ``audio_path``).
    clock : wall clock for autosave scheduling only (note times come from the sample clock).
    """

    def __init__(self, path, settings: "Settings", audio_path=None, audio_rate: int | None = None,
                 clock=time.monotonic):
        from kkoma.models.notes import write_midi

        self.path = Path(path)
        self.settings = settings
        self.events: list["NoteEvent"] = []
        self.now = 0.0  # sample-clock time of the last audio consumed [s]; open notes end here in autosaves
        self.saves = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._dirty = True
        self._closed = False
        self._write_midi = write_midi
        if not self.path.parent.is_dir():
            raise KkomaError(f"cannot record to {self.path}: the folder {self.path.parent} does not exist.")
        self._audio = None
        if audio_path is not None:
            import soundfile as sf

            self.audio_path = Path(audio_path)
            try:
                self._audio = sf.SoundFile(str(self.audio_path), "w", samplerate=int(audio_rate), channels=1)
            except Exception as e:
                raise KkomaError(f"cannot write audio file {self.audio_path} ({e}).") from None
        self._save()  # an empty but valid file from the first moment
        self._last_save = self._clock()

    # ---- processing thread (and the files model's) ------------------------------------------------------------
    def add(self, events: Iterable["NoteEvent"], now: float | None = None) -> None:
        """Append events (times [s] on the sample clock); ``now`` [s] = time of the last audio consumed."""
        with self._lock:
            for e in events:
                self.events.append(e)
                self._dirty = True
            if now is not None and now > self.now:
                self.now = now
                self._dirty = True

    def add_audio(self, mono: "np.ndarray") -> None:
        if self._audio is None:
            return
        with self._lock:
            try:
                self._audio.write(mono)
            except Exception as e:
                raise KkomaError(f"cannot write audio file {self.audio_path} ({e}).") from None

    # ---- main thread ------------------------------------------------------------------------------------------
    def notes(self):
        from kkoma.models.notes import events_to_notes

        with self._lock:
            events = list(self.events)
            now = self.now
        return events_to_notes(events, close_at=now)

    def _save(self) -> None:
        notes = self.notes()
        self._write_midi(notes, self.path, self.settings)
        with self._lock:
            if self._audio is not None:
                try:
                    self._audio.flush()
                except Exception as e:
                    raise KkomaError(f"cannot write audio file {self.audio_path} ({e}).") from None
        self.saves += 1

    def autosave(self, force: bool = False) -> bool:
        """Rewrite the file if ``record.autosave_s`` has passed since the last save (or ``force``); True if saved.

        Raises KkomaError when the file cannot be written (disk full...); the previous file is left intact.
        """
        if self._closed:
            return False
        t = self._clock()
        if not force and (t - self._last_save < self.settings.record.autosave_s or not self._dirty):
            return False
        self._dirty = False
        self._last_save = t
        self._save()
        return True

    def close(self) -> None:
        """Write the final file (every note closed at its own offset, or at the last time for open ones)."""
        if self._closed:
            return
        try:
            self._save()
        finally:
            self._closed = True
            if self._audio is not None:
                try:
                    self._audio.close()
                except Exception:
                    pass

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
