"""Make a sample set (one file per key and velocity layer, offline/sampler.py's layout) from a synthesiser's piano.

    kkoma note-set SOURCE OUT_DIR [--program P] [--velocities 40 70 100 127] [--rate 44100]

SOURCE is a soundfont (``.sf2`` / ``.sf3``, played by FluidSynth through :class:`offline.synth.Renderer`) or a
TiMidity++ configuration (``.cfg``, played by ``timidity``; Debian's ``freepats`` package installs
``/etc/timidity/freepats.cfg``, GUS patches no other renderer here reads). Every key A0..C8 is held
``--hold`` seconds at each velocity and written as ``<note><octave>v<velocity>.flac`` (``C4v100.flac``), so
``kkoma prepare synth --samples OUT_DIR`` plays it like a recorded piano: the velocity picks the layer, and the
sampler, not the synthesiser, applies dampers, pedals and note lengths. A piano that only a synthesiser can play
becomes an extra training voice this way, added as copies without re-rendering a prepared dataset (a new
``--soundfont`` would change the voice rotation of every training piece instead). The shipped models learnt from
three made this way (csound's GM bank, FreePats, GeneralUser GS; see the model card).

Imports only the standard library at module level (numpy and the renderer load in :func:`make_note_set`), so the
``kkoma note-set`` parser can take its defaults from here.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from kkoma.models.errors import KkomaError
from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI, note_name

if TYPE_CHECKING:
    import numpy as np

PIANO_KEYS = range(PIANO_MIN_MIDI, PIANO_MIN_MIDI + N_KEYS)  # MIDI pitches A0..C8
VELOCITIES = (40, 70, 100, 127)  # the default layers
HOLD_S, SECONDS, RATE = 9.0, 10.0, 44100  # defaults: key held [s], file length [s], sample rate [Hz]


def sample_stem(pitch: int, velocity: int) -> str:
    """(60, 100) -> ``"C4v100"`` (the sampler's file-name stem; octave 4 holds middle C)."""
    return f"{note_name(pitch)}v{velocity}"


def _midi_file(path: Path, pitch: int, velocity: int, program: int, hold: float, seconds: float) -> None:
    """One note as a MIDI file (120 bpm, 480 ticks per beat: 960 ticks per second)."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("program_change", program=program, time=0))
    track.append(mido.Message("note_on", note=pitch, velocity=velocity, time=0))
    track.append(mido.Message("note_off", note=pitch, velocity=0, time=int(round(hold * 960))))
    track.append(mido.MetaMessage("end_of_track", time=int(round((seconds - hold) * 960))))
    mid.save(path)


def _timidity(cfg: str, pitch: int, velocity: int, program: int, hold: float, seconds: float,
              rate: int) -> np.ndarray:
    """One note played by TiMidity++ with ``cfg`` -> mono float32 at ``rate`` (no reverb or chorus)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "note.mid", Path(tmp) / "note.wav"
        _midi_file(mid, pitch, velocity, program, hold, seconds)
        # -A100: no extra amplification (timidity's default is 70 %); -EF...=0: dry, as FluidSynth renders here
        cmd = ["timidity", "-c", cfg, "-Ow", "--output-mono", "-s", str(rate), "-A100", "-EFreverb=0",
               "-EFchorus=0", "-o", str(wav), str(mid)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wav.is_file():
            raise KkomaError(f"timidity could not play {cfg}: {(done.stderr or done.stdout).strip()[-300:]}")
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def make_note_set(source: str, out_dir: str, *, program: int = 0, velocities=VELOCITIES,
                  hold: float = HOLD_S, seconds: float = SECONDS, rate: int = RATE, keys=PIANO_KEYS,
                  gain: float | None = None) -> list[Path]:
    """Render every key in ``keys`` at every velocity -> the files written (see the module notes).

    ``hold`` [s]: how long each key is held; ``seconds`` [s]: length of each file (the release after it);
    ``gain``: FluidSynth's master gain (default ``data.render_gain``, as ``kkoma prepare`` renders).
    SetupError when the renderer or SOURCE is missing; KkomaError for a source that plays silence.
    """
    import numpy as np
    import soundfile as sf

    from kkoma.offline.synth import SetupError

    src = Path(source)
    if not src.is_file():
        raise SetupError(f"{source} does not exist (a .sf2/.sf3 soundfont or a timidity .cfg).")
    if not 0 < hold < seconds:
        raise KkomaError(f"--hold must be more than 0 and less than --seconds, not {hold} (--seconds {seconds}).")
    if not velocities or any(not 1 <= v <= 127 for v in velocities):
        raise KkomaError(f"--velocities must be MIDI velocities 1..127, not {list(velocities)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, v) for p in keys for v in velocities]
    if src.suffix.lower() in (".sf2", ".sf3"):
        from kkoma.offline.synth import MidiEvent, Renderer

        if gain is None:
            from kkoma.models.settings import load_settings

            gain = load_settings().data.render_gain
        with Renderer(src, rate, gain, program) as r:
            notes = [r.render([MidiEvent(0.0, "on", 0, p, v), MidiEvent(hold, "off", 0, p, 0)], seconds)
                     for p, v in jobs]
    elif src.suffix.lower() == ".cfg":
        if shutil.which("timidity") is None:
            raise SetupError("timidity is not installed: apt-get install timidity (and freepats for its pianos).")
        with ThreadPoolExecutor(4) as pool:  # one timidity process per note: they wait on the OS, not Python
            notes = list(pool.map(lambda j: _timidity(str(src), j[0], j[1], program, hold, seconds, rate), jobs))
    else:
        raise KkomaError(f"{source}: a sample set is made from a .sf2/.sf3 soundfont or a timidity .cfg, not "
                         f"{src.suffix or 'a file without a suffix'}.")
    written = []
    for (p, v), audio in zip(jobs, notes):
        if not np.abs(audio).max() > 0:
            raise KkomaError(f"{source} played silence for key {sample_stem(p, v)} (program {program}): does it "
                             "have a piano there?")
        path = out / f"{sample_stem(p, v)}.flac"
        sf.write(path, audio, rate)
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - tested through a subprocess
    from kkoma.cli import run_module_as

    run_module_as("note-set")
