"""MIDI output through python-rtmidi: a virtual port named after the program, or an existing port by name.

:class:`MidiOut` is a context manager: whatever ends the ``with`` block (normal exit, an exception, Ctrl-C, SIGTERM
turned into an exception by the command) every sounding note gets its note-off and the channel gets "all notes
off" before the port closes (mido's ``autoreset`` / ``panic()`` pattern). The channel (``midi.channel``) and the
velocity curve (``midi.velocity_min`` / ``velocity_max`` / ``velocity_gamma``) are applied here, so the notes,
files and JSON the rest of kkoma writes keep the model's own velocities.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from kkoma.models.errors import KkomaError

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.notes import NoteEvent
    from kkoma.models.settings import Settings

API_CHOICES = ("auto", "alsa", "jack", "coremidi", "winmm")
_NOTE_ON, _NOTE_OFF, _CC = 0x90, 0x80, 0xB0
_CC_SUSTAIN, _CC_ALL_NOTES_OFF = 64, 123
# rtmidi's JACK backend hands messages to the JACK process thread through a ring buffer: give it a few periods to
# send the last note-offs before the client goes away (measured: 20 ms was enough at a 10 ms period; 100 ms margin).
_JACK_DRAIN_S = 0.1
_CLOSE_TIMEOUT_S = 2.0  # [s] longest wait for the MIDI backend to close


def _rtmidi():
    try:
        import rtmidi
    except ImportError:  # pragma: no cover - a core dependency
        raise KkomaError("python-rtmidi is not installed; install it or use --no-midi.") from None
    return rtmidi


def _api_ids() -> dict[str, int]:
    r = _rtmidi()
    return {"alsa": r.API_LINUX_ALSA, "jack": r.API_UNIX_JACK, "coremidi": r.API_MACOSX_CORE,
            "winmm": r.API_WINDOWS_MM}


def compiled_apis() -> list[str]:
    """The MIDI APIs this python-rtmidi was built with, as kkoma names them."""
    ids = _api_ids()
    have = set(_rtmidi().get_compiled_api())
    return [name for name, i in ids.items() if i in have]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C libraries (libjack, alsa-lib) that print to fd 2 while an API is probed."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        sys.stderr.flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_api(api: str, client_name: str, quiet: bool = False):
    """An ``rtmidi.MidiOut`` on ``api``; KkomaError (one sentence) when the API cannot be used here."""
    r = _rtmidi()
    if api not in compiled_apis():
        raise KkomaError(f"this python-rtmidi has no {api} MIDI support (it has: "
                         f"{', '.join(compiled_apis()) or 'none'}); choose another --midi-api or use --no-midi.")
    try:
        with _quiet_stderr() if quiet else contextlib.nullcontext():
            return r.MidiOut(_api_ids()[api], name=client_name)
    except Exception as e:
        if api == "alsa":
            why = ("the ALSA sequencer cannot be opened (no /dev/snd/seq)" if not os.path.exists("/dev/snd/seq")
                   else f"the ALSA sequencer cannot be opened ({e})")
        elif api == "jack":
            why = "no JACK server is running"
        else:
            why = f"the {api} MIDI system cannot be opened ({e})"
        raise KkomaError(f"{why}; choose another --midi-api or use --no-midi.") from None


def _auto_order() -> list[str]:
    if sys.platform == "darwin":
        return ["coremidi", "jack"]
    if sys.platform.startswith("win"):
        return ["winmm"]
    return ["alsa", "jack"]


def open_backend(api: str, client_name: str):
    """Resolve ``api`` ('auto' tries the platform's APIs in order) -> (api name, rtmidi.MidiOut)."""
    if api != "auto":
        return api, _open_api(api, client_name)
    tried = []
    for name in _auto_order():
        if name not in compiled_apis():
            continue
        if name == "alsa" and not os.path.exists("/dev/snd/seq"):
            tried.append("ALSA (no /dev/snd/seq)")
            continue
        try:
            return name, _open_api(name, client_name, quiet=True)
        except KkomaError:
            tried.append({"jack": "JACK (no server running)"}.get(name, name))
    raise KkomaError(f"no MIDI system is available (tried {', '.join(tried) or 'nothing'}); start a JACK server "
                     "and use --midi-api jack, or use --no-midi.")


def find_port(ports: list[str], wanted: str) -> int:
    """Index of the port matching ``wanted`` (exact, else case-insensitive substring); KkomaError listing the ports."""
    for i, p in enumerate(ports):
        if p == wanted:
            return i
    hits = [i for i, p in enumerate(ports) if wanted.lower() in p.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(ports) if ports else "none"
    if hits:
        raise KkomaError(f"MIDI port name {wanted!r} matches several ports ({'; '.join(ports[i] for i in hits)}); "
                         "give more of the name.")
    raise KkomaError(f"no MIDI output port matches {wanted!r}; the available ports are: {listing}.")


def velocity_curve(velocity: int, settings: "Settings") -> int:
    """Model velocity 1..127 -> sent velocity in ``velocity_min..velocity_max`` via ``x ** velocity_gamma``."""
    m = settings.midi
    x = min(1.0, max(0.0, (int(velocity) - 1) / 126.0))
    v = m.velocity_min + (m.velocity_max - m.velocity_min) * x ** m.velocity_gamma
    return int(min(127, max(1, round(v))))


class MidiOut:
    """A MIDI output port that silences itself on close.

    Parameters
    ----------
    settings : uses ``midi.*``.
    port : connect to the existing output port matching this name (see :func:`find_port`); None opens a virtual
        port named ``midi.port_name``.
    api : 'auto' | 'alsa' | 'jack' | 'coremidi' | 'winmm'; None takes ``midi.api``.

    State: ``sounding`` the pitches whose note-on was sent and note-off was not; ``sent`` messages sent.
    """

    def __init__(self, settings: "Settings", port: str | None = None, api: str | None = None):
        self.settings = settings
        self.channel = settings.midi.channel - 1
        self.sounding: set[int] = set()
        self.sent = 0
        self.api, self._out = open_backend(api or settings.midi.api, settings.midi.port_name)
        try:
            if port:
                ports = self._out.get_ports()
                i = find_port(ports, port)
                self.port_name = ports[i]
                self._out.open_port(i, settings.midi.port_name)
            else:
                self.port_name = settings.midi.port_name
                self._out.open_virtual_port(settings.midi.port_name)
        except KkomaError:
            self._out.delete()
            raise
        except Exception as e:
            self._out.delete()
            what = f"MIDI port {port!r}" if port else f"a virtual MIDI port on {self.api}"
            extra = " (this API has no virtual ports: pick one with --midi-port)" if not port else ""
            raise KkomaError(f"cannot open {what}{extra}: {e}.") from None

    # ---- sending ----------------------------------------------------------------------------------------------
    def _send(self, msg: list[int]) -> None:
        try:
            self._out.send_message(msg)
        except Exception as e:
            raise KkomaError(f"the MIDI port {self.port_name!r} stopped accepting messages ({e}).") from None
        self.sent += 1

    def note_on(self, pitch: int, velocity: int) -> int:
        """Send note-on (velocity curve applied; a sounding pitch is re-struck: off first). Returns the velocity sent."""
        if pitch in self.sounding:
            self.note_off(pitch)
        v = velocity_curve(velocity, self.settings)
        self._send([_NOTE_ON | self.channel, int(pitch), v])
        self.sounding.add(int(pitch))
        return v

    def note_off(self, pitch: int) -> None:
        self._send([_NOTE_OFF | self.channel, int(pitch), 0])
        self.sounding.discard(int(pitch))

    def send_event(self, event: "NoteEvent") -> int:
        """Send a tracker event; returns the velocity sent (0 for a note-off)."""
        if event.kind == "on":
            return self.note_on(event.pitch, event.velocity)
        if event.pitch in self.sounding:
            self.note_off(event.pitch)
        return 0

    def all_notes_off(self) -> None:
        """Note-off for every sounding pitch, then sustain up and 'all notes off' on the channel. Never raises."""
        for p in sorted(self.sounding):
            try:
                self._out.send_message([_NOTE_OFF | self.channel, p, 0])
            except Exception:
                pass
        self.sounding.clear()
        for msg in ([_CC | self.channel, _CC_SUSTAIN, 0], [_CC | self.channel, _CC_ALL_NOTES_OFF, 0]):
            try:
                self._out.send_message(msg)
            except Exception:
                pass

    def close(self) -> None:
        if self._out is None:
            return
        self.all_notes_off()
        if self.api == "jack":
            time.sleep(_JACK_DRAIN_S)
        out, self._out = self._out, None

        def close():
            try:
                out.close_port()
                out.delete()
            except Exception:
                pass

        # libjack can wait forever on a server that died; never let closing the port hang the exit.
        th = threading.Thread(target=close, name="kkoma-midi-close", daemon=True)
        th.start()
        th.join(_CLOSE_TIMEOUT_S)

    def __enter__(self) -> "MidiOut":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullMidiOut:
    """``--no-midi``: same interface, sends nothing (still tracks what would sound, for the display)."""

    api = "none"
    port_name = "(no MIDI)"

    def __init__(self, settings: "Settings" | None = None):
        self.settings = settings
        self.sounding: set[int] = set()
        self.sent = 0

    def send_event(self, event: "NoteEvent") -> int:
        if event.kind == "on":
            self.sounding.add(event.pitch)
            return velocity_curve(event.velocity, self.settings) if self.settings is not None else event.velocity
        self.sounding.discard(event.pitch)
        return 0

    def all_notes_off(self) -> None:
        self.sounding.clear()

    def close(self) -> None:
        self.sounding.clear()

    def __enter__(self) -> "NullMidiOut":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_outputs() -> dict[str, list[str] | str]:
    """MIDI output ports per compiled API: {api: [port names]} or {api: 'unavailable: reason'}."""
    out: dict[str, list[str] | str] = {}
    for api in compiled_apis():
        if api == "alsa" and not os.path.exists("/dev/snd/seq"):
            out[api] = "unavailable: no /dev/snd/seq"
            continue
        try:
            m = _open_api(api, "kkoma-devices", quiet=True)
        except KkomaError as e:
            out[api] = f"unavailable: {str(e).split(';')[0]}"
            continue
        try:
            out[api] = list(m.get_ports())
        finally:
            m.delete()
    return out
