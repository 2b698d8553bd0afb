"""Render performance MIDI to audio with FluidSynth (through pyfluidsynth's ctypes binding, no audio driver).

Why the library and not the ``fluidsynth -F`` command: we dispatch every MIDI event ourselves at its exact sample
(the synth is rendered up to the event, the event sent, rendering goes on), get float samples (no int16 clipping or
dither), switch off the synth's own reverb and chorus (rooms are our augmentation's job), force the piano preset on
every channel, and keep a loaded soundfont between pieces (FluidR3_GM takes 0.4 s to load, MuseScore_General.sf3
10 s).

Renderer latency. A note does not sound at the sample its note-on is sent: FluidSynth applies events per internal
block of 64 samples, and a sampled piano's attack adds its own delay. :func:`measure_onset_offset` renders isolated
notes at random pitches, velocities and sample positions, finds each audible onset (first sample reaching 2 % of the
note's peak, see :func:`audible_onset`) and returns the median delay. Measured here (FluidSynth 2.3.1, 16 kHz, 48
notes, three seeds): FluidR3_GM 3.0-3.9 ms, TimGM6mb 3.2-4.1 ms, MuseScore_General 3.1-3.8 ms; single notes spread
over about 1.3-4.8 ms (20-76 samples), i.e. +-2 ms around the median, well inside a 10 ms frame. ``kkoma prepare``
measures it for every soundfont it uses (seed ``data.seed``), stores it in the manifest (``renderer_offsets_ms``)
and removes it by dropping the first ``offset`` of every rendering, so audio and MIDI times agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kkoma.models.errors import KkomaError

INSTALL_HINT = "install FluidSynth and the General MIDI soundfonts (apt-get install fluidsynth fluid-soundfont-gm)"
# Controllers passed to the synth; everything else (volume, expression, modulation, programs, pitch bend) is left
# out so every file plays the same acoustic piano and loudness follows key velocity only.
PEDAL_CCS = (64, 66, 67)  # sustain, sostenuto, soft
N_MIDI_CHANNELS = 16


class SetupError(KkomaError):
    """FluidSynth or a soundfont is missing or unusable: a problem of the installation, not of one input file."""


@dataclass(frozen=True)
class MidiEvent:
    """One event to play. ``kind``: "on" (a=pitch, b=velocity), "off" (a=pitch), "cc" (a=controller, b=value)."""
    time: float  # [s]
    kind: str
    channel: int
    a: int
    b: int


def midi_events(path: str | os.PathLike, max_seconds: float | None = None) -> list[MidiEvent]:
    """The note and pedal events of a MIDI file, times [s] (tempo changes honoured), up to ``max_seconds``.

    Raises KkomaError naming the file when it is missing or not a valid MIDI file.
    """
    import mido

    path = Path(path)
    if not path.is_file():
        raise KkomaError(f"MIDI file {path} does not exist.")
    try:
        messages = list(mido.MidiFile(path))
    except Exception as e:  # mido raises OSError, EOFError, ValueError, KeyError... on damaged data
        raise KkomaError(f"{path} is not a valid MIDI file ({type(e).__name__}: {e}).") from None
    events = []
    t = 0.0
    for msg in messages:
        t += msg.time
        if max_seconds is not None and t >= max_seconds:
            break
        if msg.type == "note_on" and msg.velocity > 0:
            events.append(MidiEvent(t, "on", msg.channel, msg.note, msg.velocity))
        elif msg.type in ("note_on", "note_off"):
            events.append(MidiEvent(t, "off", msg.channel, msg.note, 0))
        elif msg.type == "control_change" and msg.control in PEDAL_CCS:
            events.append(MidiEvent(t, "cc", msg.channel, msg.control, msg.value))
    return events


def _fluidsynth():
    """The pyfluidsynth module plus a binding of ``fluid_synth_write_float``; KkomaError if FluidSynth is missing."""
    try:
        import fluidsynth
    except ImportError:
        raise SetupError(f"FluidSynth is not available: {INSTALL_HINT}.") from None
    except OSError as e:
        raise SetupError(f"the FluidSynth library cannot be loaded ({e}): {INSTALL_HINT}.") from None
    from ctypes import c_int, c_void_p

    write_float = fluidsynth.cfunc("fluid_synth_write_float", c_int, ("synth", c_void_p, 1), ("len", c_int, 1),
                                   ("lbuf", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
                                   ("rbuf", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1))
    if write_float is None:  # pragma: no cover - every FluidSynth since 1.0 has it
        raise SetupError(f"the FluidSynth library lacks fluid_synth_write_float: {INSTALL_HINT}.")
    return fluidsynth, write_float


FLUID_BLOCK = 64  # [samples] FluidSynth's fixed rendering block (FLUID_BUFSIZE)


class Renderer:
    """One FluidSynth instance with one soundfont loaded, playing one piano preset (bank 0, ``program``).

    Parameters
    ----------
    soundfont : .sf2 / .sf3 file.
    sample_rate : output rate [Hz] (the model rate: no resampling afterwards).
    gain : FluidSynth master gain (linear); output is float, so loud passages are never clipped here.
    program : General MIDI program of bank 0 played on every channel (0 Acoustic Grand, 1 Bright Acoustic,
        2 Electric Grand).

    Raises KkomaError when FluidSynth is missing or the soundfont does not exist / cannot be loaded.
    """

    def __init__(self, soundfont: str | os.PathLike, sample_rate: int, gain: float, program: int = 0):
        self.soundfont = str(soundfont)
        self.sample_rate = int(sample_rate)
        self.program = int(program)
        if not Path(self.soundfont).is_file():
            raise SetupError(f"soundfont {self.soundfont} does not exist: {INSTALL_HINT}, or point data.soundfonts "
                             "at your own .sf2 files.")
        fluidsynth, self._write = _fluidsynth()
        self._samples = 0  # [samples] rendered since the synth was made (FluidSynth's block phase is this mod 64)
        self._synth = fluidsynth.Synth(gain=float(gain), samplerate=self.sample_rate,
                                       **{"synth.reverb.active": 0, "synth.chorus.active": 0})
        self._sfid = self._synth.sfload(self.soundfont)
        if self._sfid < 0:
            self._synth.delete()
            self._synth = None
            raise SetupError(f"FluidSynth cannot load the soundfont {self.soundfont}.")
        self.reset()

    def reset(self) -> None:
        """Silence everything and return every controller to its default; piano on all channels."""
        s = self._synth
        # all_sounds_off silences at once; fluid_synth_system_reset was measured to leave voices ringing for over
        # 100 ms (FluidSynth 2.3), which would leak into the next piece.
        for ch in range(N_MIDI_CHANNELS):
            s.all_sounds_off(ch)
            s.cc(ch, 121, 0)  # reset all controllers (pedals up)
            for cc in PEDAL_CCS:
                s.cc(ch, cc, 0)
            s.program_select(ch, self._sfid, 0, self.program)
        self._pull(self.sample_rate // 100)
        # FluidSynth renders in blocks of FLUID_BLOCK samples and starts events at block boundaries, so a piece's
        # audio depends on where in a block it starts. Start every piece on a boundary, so a piece renders the same
        # whatever was rendered before it (measured on a real performance: max difference 0.17 -> 0.002-0.005; on
        # the test's chord, 1.3 -> 0.01 of its RMS). The remainder, in the first ~20 ms of notes, is a FluidSynth
        # voice-reuse effect not removed here.
        self._pull(-self._samples % FLUID_BLOCK)

    def _pull(self, n: int, out: np.ndarray | None = None, at: int = 0) -> None:
        """Render ``n`` samples, mixed to mono into ``out[at:at+n]`` (discarded when ``out`` is None)."""
        if n <= 0:
            return
        self._samples += n
        left = np.empty(n, np.float32)
        right = np.empty(n, np.float32)
        self._write(self._synth.synth, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)
        if out is not None:
            out[at:at + n] = 0.5 * (left + right)

    def render(self, events: list[MidiEvent], seconds: float) -> np.ndarray:
        """Play ``events`` (sorted by time) from a reset synth -> ``(round(seconds * sr),)`` float32 mono.

        Every event is sent at its own sample (round(time * sr)); events after ``seconds`` are ignored.
        """
        self.reset()
        sr = self.sample_rate
        n = int(round(seconds * sr))
        out = np.zeros(n, np.float32)
        pos = 0
        s = self._synth
        for e in events:
            at = min(n, max(pos, int(round(e.time * sr))))
            if at >= n:
                break
            self._pull(at - pos, out, pos)
            pos = at
            if e.kind == "on":
                s.noteon(e.channel, e.a, e.b)
            elif e.kind == "off":
                s.noteoff(e.channel, e.a)
            else:
                s.cc(e.channel, e.a, e.b)
        self._pull(n - pos, out, pos)
        return out

    def close(self) -> None:
        if self._synth is not None:
            self._synth.delete()
            self._synth = None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def audible_onset(audio: np.ndarray, sample_rate: int, fraction: float = 0.02) -> int:
    """Index [samples] of the first sample of one isolated note whose magnitude reaches ``fraction`` of the note's
    peak magnitude (-1 for silence).

    A low threshold on the raw waveform (-34 dB) is phase-robust: a tone reaches 2 % of its amplitude within 0.3 %
    of a period of its start, where a 10 % threshold was measured to jump by half a period with the waveform's
    phase, and a Hilbert envelope rings several ms *before* an abrupt start (non-causal).
    """
    x = np.abs(np.asarray(audio, np.float64))
    if not x.size or not np.any(x):
        return -1
    return int(np.argmax(x >= fraction * x.max()))


def measure_onset_offset(renderer: Renderer, n_notes: int = 48, seed: int = 0) -> float:
    """Median delay [s] from note-on to audible onset for ``renderer`` (see the module notes).

    Plays ``n_notes`` isolated notes (random piano pitch 21..108, velocity 30..126, start at a random sample) and
    compares each audible onset with its note-on time.
    """
    rng = np.random.default_rng(seed)
    sr = renderer.sample_rate
    note_s = 0.4
    delays = []
    for _ in range(n_notes):
        pitch = int(rng.integers(21, 109))
        vel = int(rng.integers(30, 127))
        start = 0.05 + float(rng.integers(0, 256)) / sr
        audio = renderer.render([MidiEvent(start, "on", 0, pitch, vel), MidiEvent(start + note_s, "off", 0, pitch, 0)],
                                start + note_s)
        i = audible_onset(audio, sr)
        if i >= 0:
            delays.append(i / sr - start)
    if not delays:
        raise SetupError(f"the soundfont {renderer.soundfont} plays no sound for the piano preset "
                         f"(bank 0, program {renderer.program}).")
    return float(np.median(delays))
