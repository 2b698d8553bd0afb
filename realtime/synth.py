"""The built-in synth: ``kkoma live --synth`` plays the notes it sends through FluidSynth on an audio output.

:class:`SynthOut` wraps the MIDI output (:class:`realtime.midi_out.MidiOut` or ``NullMidiOut``): every event goes to
the port as before, and the same note, with the velocity sent, to libfluidsynth (through pyfluidsynth), whose own
audio driver thread renders it to the sound card (ALSA, PulseAudio/PipeWire, JACK...). Nothing is rendered on
kkoma's threads: a note-on is one call into the synth, and the driver plays it in its next period.

The synth path's latency is FluidSynth's output buffer, ``synth.periods x synth.period_size`` frames at the output
rate (JACK: the server's period x its periods), plus what the sound card and the sound server add;
:attr:`SynthOut.latency_ms` gives the part kkoma knows, printed at start.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kkoma.models.errors import KkomaError

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.notes import NoteEvent
    from kkoma.models.settings import Settings

#: FluidSynth audio drivers tried, in order, by ``synth.driver = "auto"`` (a JACK server only if one runs).
AUTO_DRIVERS = {"linux": ("jack", "pulseaudio", "alsa"), "darwin": ("coreaudio", "jack"),
                "win32": ("wasapi", "dsound")}
_INSTALL_HINT = ("install the synth extra (pip install 'kkoma[synth]', which brings pyfluidsynth) and "
                 "libfluidsynth (Debian: apt install libfluidsynth3 fluid-soundfont-gm)")


def _fluidsynth():
    try:
        import fluidsynth
    except ImportError:
        raise KkomaError(f"the built-in synth needs FluidSynth: {_INSTALL_HINT}.") from None
    except OSError as e:  # pyfluidsynth without the C library
        raise KkomaError(f"the FluidSynth library cannot be loaded ({e}); {_INSTALL_HINT}.") from None
    if not hasattr(fluidsynth, "Synth"):  # another package named fluidsynth
        raise KkomaError(f"the fluidsynth module found is not pyfluidsynth; {_INSTALL_HINT}.")
    return fluidsynth


def find_soundfont(settings: "Settings", wanted: str | None = None) -> Path:
    """The soundfont to play: ``wanted`` (``--synth FILE``), else the first of ``synth.soundfonts`` on this system."""
    if wanted:
        p = Path(wanted).expanduser()
        if not p.is_file():
            raise KkomaError(f"soundfont {p} does not exist.")
        return p
    for f in settings.synth.soundfonts:
        p = Path(f).expanduser()
        if p.is_file():
            return p
    raise KkomaError("no soundfont found (looked for " + ", ".join(settings.synth.soundfonts) + "); give one with "
                     "--synth FILE.sf2, or install one (Debian: apt install fluid-soundfont-gm).")


def _platform() -> str:
    import sys

    return "linux" if sys.platform.startswith("linux") else sys.platform


def _drivers(settings: "Settings") -> tuple[str, ...]:
    d = settings.synth.driver
    return AUTO_DRIVERS.get(_platform(), ("jack", "pulseaudio", "alsa")) if d == "auto" else (d,)


def _jack_period() -> tuple[int, int] | None:
    """(period [frames], rate [Hz]) of the running JACK server, if the JACK-Client package can tell."""
    try:
        import jack

        c = jack.Client("kkoma-synth-probe", no_start_server=True)
    except Exception:
        return None
    try:
        return int(c.blocksize), int(c.samplerate)
    finally:
        c.close()


class SynthOut:
    """A MIDI sink that also plays the notes through FluidSynth. Same interface as ``MidiOut`` (``send_event``,
    ``all_notes_off``, ``close``, ``sounding``, ``port_name``, ``api``).

    Parameters
    ----------
    settings : ``synth.*`` (driver, device, buffer, gain, program) and ``midi.channel``.
    midi : the MIDI output every event still goes to (``NullMidiOut`` with ``--no-midi``).
    soundfont : a .sf2/.sf3 file; None: the first of ``synth.soundfonts`` found.
    device : the driver's output device (``--synth-device``); None: ``synth.device`` ("" = the driver's default).

    Attributes: ``driver`` (the FluidSynth audio driver opened), ``soundfont``, ``rate`` [Hz], ``latency_ms`` (the
    output buffer; None when unknown), ``notes_played``.
    """

    def __init__(self, settings: "Settings", midi, soundfont: str | None = None, device: str | None = None):
        fs = _fluidsynth()
        self.settings = settings
        self.midi = midi
        self.channel = settings.midi.channel - 1
        self.soundfont = find_soundfont(settings, soundfont)
        self.notes_played = 0
        st = settings.synth
        device = st.device if device is None else device
        self._synth = fs.Synth(gain=float(st.gain), samplerate=float(st.sample_rate))
        self._closed = False
        for key, value in (("audio.period-size", int(st.period_size)), ("audio.periods", int(st.periods)),
                           ("synth.reverb.active", int(st.reverb)), ("synth.chorus.active", 0),
                           ("audio.jack.id", f"{settings.midi.port_name}-synth"), ("audio.jack.autoconnect", 1)):
            self._synth.setting(key, value)
        try:
            sfid = self._synth.sfload(str(self.soundfont))
            if sfid < 0:
                raise KkomaError(f"FluidSynth cannot read the soundfont {self.soundfont}.")
            self._synth.program_select(self.channel, sfid, 0, int(st.program))
            self.driver = self._start(fs, device)
        except BaseException:
            self._delete()
            raise
        self.rate = int(round(float(self._synth.get_setting("synth.sample-rate") or st.sample_rate)))
        self.latency_ms = self._latency_ms()

    def _start(self, fs, device: str) -> str:
        from kkoma.realtime.midi_out import _quiet_stderr

        tried = []
        drivers = _drivers(self.settings)
        for name in drivers:
            self._synth.setting("audio.driver", name)
            if device:
                self._synth.setting("audio.jack.server" if name == "jack" else f"audio.{name}.device", device)
            # a JACK server is used if one runs, never started for us (probing 'auto' must not spawn jackd)
            saved = os.environ.get("JACK_NO_START_SERVER")
            os.environ["JACK_NO_START_SERVER"] = "1"
            try:
                with _quiet_stderr():
                    drv = fs.new_fluid_audio_driver(self._synth.settings, self._synth.synth)
            finally:
                if saved is None:
                    os.environ.pop("JACK_NO_START_SERVER", None)
                else:
                    os.environ["JACK_NO_START_SERVER"] = saved
            if drv:
                self._synth.audio_driver = drv
                return name
            tried.append(name)
        where = f" device {device!r}" if device else ""
        raise KkomaError(f"FluidSynth cannot open an audio output{where} (tried {', '.join(tried)}); start the "
                         "sound server (PulseAudio/PipeWire or JACK), pick one with --set synth.driver=NAME or "
                         "--synth-device, or play the MIDI port with a synth of your own.")

    def _latency_ms(self) -> float | None:
        st = self.settings.synth
        if self.driver == "jack":
            jp = _jack_period()
            return None if jp is None else 1000.0 * 2 * jp[0] / jp[1]  # JACK's default 2 periods of playback
        return 1000.0 * st.periods * st.period_size / self.rate

    def describe(self) -> str:
        """One line for the start-up message: what plays, where, and the synth path's own latency."""
        lat = (f"output buffer {self.latency_ms:.1f} ms" if self.latency_ms is not None
               else "output buffer: the JACK server's period x periods")
        return (f"synth: FluidSynth via {self.driver} at {self.rate} Hz, {self.soundfont.name} program "
                f"{self.settings.synth.program}; {lat} (+ the sound card's own) after each note is sent")

    # ---- the MidiOut interface --------------------------------------------------------------------------------
    def __getattr__(self, name):  # sounding, port_name, api, sent ... are the MIDI output's
        if name == "midi":
            raise AttributeError(name)
        return getattr(self.midi, name)

    def send_event(self, event: "NoteEvent") -> int:
        v = self.midi.send_event(event)
        if self._closed:
            return v
        if event.kind == "on":
            self._synth.noteoff(self.channel, int(event.pitch))  # a re-struck key: its old voice ends first
            self._synth.noteon(self.channel, int(event.pitch), int(v))
            self.notes_played += 1
        else:
            self._synth.noteoff(self.channel, int(event.pitch))
        return v

    def all_notes_off(self) -> None:
        self.midi.all_notes_off()
        if not self._closed:
            self._synth.all_notes_off(self.channel)

    def close(self) -> None:
        """All notes off on the port and in the synth, then the audio output closes. Never raises."""
        try:
            self.midi.close()
        finally:
            if not self._closed:
                try:
                    self._synth.all_notes_off(self.channel)
                except Exception:
                    pass
                self._delete()

    def _delete(self) -> None:
        self._closed = True
        try:
            self._synth.delete()
        except Exception:
            pass

    def __enter__(self) -> "SynthOut":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
