"""Write the bundled example: a short piece of our own (scale, chords, arpeggios, pedal, soft and loud notes) as
``example.mid``, rendered through FluidSynth with FluidR3_GM (MIT licence) to ``example.flac`` at 16 kHz.

    python examples/make_example.py        # needs the fluidsynth program and fluid-soundfont-gm
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SR = 16000


def piece() -> list[tuple[float, float, int, int]]:
    """(onset [s], duration [s], pitch, velocity) notes."""
    notes = []
    t = 0.5
    for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72]):  # C major scale, crescendo
        notes.append((t, 0.22, p, 40 + 10 * i))
        t += 0.25
    t += 0.25
    for chord, vel in (([48, 55, 64, 67], 70), ([45, 57, 60, 64], 60), ([41, 53, 57, 60, 65], 85),
                       ([43, 55, 59, 62, 67], 100)):
        for p in chord:
            notes.append((t, 0.9, p, vel))
        t += 1.0
    for rep in range(2):  # arpeggios, low to high
        for i, p in enumerate([36, 43, 48, 52, 55, 60, 64, 67, 72, 76, 79, 84]):
            notes.append((t + 0.12 * i, 0.3, p, 55 + 3 * i))
        t += 1.6
    notes.append((t, 1.5, 21, 90))  # A0 and C8: the keyboard's ends
    notes.append((t, 1.5, 108, 70))
    notes.append((t + 0.5, 1.0, 69, 30))  # a soft A4
    return notes


def write_midi(notes, path: Path) -> None:
    mid = mido.MidiFile(ticks_per_beat=480)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500000))
    events = []
    for on, dur, p, v in notes:
        events.append((on, 1, mido.Message("note_on", note=p, velocity=v)))
        events.append((on + dur, 0, mido.Message("note_off", note=p, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for t, _, msg in events:
        tick = int(round(mido.second2tick(t, 480, 500000)))
        tr.append(msg.copy(time=tick - now))
        now = tick
    mid.save(path)


def main() -> None:
    notes = piece()
    mid_path = HERE / "example.mid"
    write_midi(notes, mid_path)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(SR), "-F", str(wav), SOUNDFONT,
                        str(mid_path)], check=True, capture_output=True)
        x, sr = sf.read(wav, dtype="float32", always_2d=True)
    y = x.mean(axis=1)
    end = int((max(on + d for on, d, _, _ in notes) + 1.0) * sr)
    y = y[:end]
    y = y / max(1e-9, np.abs(y).max()) * 0.7
    sf.write(HERE / "example.flac", y, sr, subtype="PCM_16")
    print(f"wrote {mid_path} ({len(notes)} notes) and example.flac ({len(y) / sr:.1f} s at {sr} Hz)")


if __name__ == "__main__":
    main()
