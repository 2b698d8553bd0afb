"""Sample-set rendering (offline/sampler.py) and its place in `kkoma prepare` (extra training copies, valid_samples).

The sample sets here are made on the spot: decaying harmonic tones written as WAV files with 20 ms of leading
silence, named the way recorded sets are (``C4v10.wav``), so pitch, timing, loudness and damping can be checked
against known physics.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kkoma.models.errors import KkomaError
from kkoma.models.settings import load_settings
from kkoma.offline.synth import MidiEvent, SetupError

SR = 16000
LEAD_S = 0.02  # [s] silence before each recorded note


def _tone(pitch: int, sr: int = 44100, seconds: float = 3.0, level: float = 0.4) -> np.ndarray:
    f0 = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
    t = np.arange(int(seconds * sr)) / sr
    x = sum((0.5 ** k) * np.sin(2 * np.pi * f0 * (k + 1) * t) for k in range(3) if f0 * (k + 1) < 0.45 * sr)
    x = level * x * np.exp(-t / 1.5)
    return np.concatenate([np.zeros(int(LEAD_S * sr)), x]).astype(np.float32)


def make_sample_set(folder: Path, names=("C4v10", "D#4v10", "F#4v10", "A4v10"), layers=()) -> Path:
    """WAV tones at 44.1 kHz named like the Salamander set; ``layers``: extra (name, level) velocity layers."""
    from kkoma.offline.sampler import parse_sample_name

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sf.write(str(folder / f"{name}.wav"), _tone(parse_sample_name(name)[0]), 44100)
    for name, level in layers:
        sf.write(str(folder / f"{name}.wav"), _tone(parse_sample_name(name)[0], level=level), 44100)
    (folder / "README.txt").write_text("not a sample")
    return folder


def _f0(x: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return float(np.argmax(spec) * sr / (8 * len(x)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_sample_names_parse_to_midi_pitch_and_layer():
    from kkoma.offline.sampler import parse_sample_name

    assert parse_sample_name("A0v10") == (21, 10)
    assert parse_sample_name("C4") == (60, 0)
    assert parse_sample_name("D#4v3") == (63, 3)
    assert parse_sample_name("Db4") == (61, 0)
    assert parse_sample_name("C8v10") == (108, 10)
    assert parse_sample_name("README") is None
    assert parse_sample_name("H4") is None
    # University of Iowa names: the dynamic is the layer, ordered soft to loud
    assert parse_sample_name("Piano.ff.Bb1") == (34, 7)
    assert parse_sample_name("Piano.pp.C4") == (60, 2)
    assert parse_sample_name("Piano.mf.A0") == (21, 5)
    assert parse_sample_name("Piano.ff.H4") is None
    assert parse_sample_name("Piano.loud.C4") is None


def test_missing_or_empty_sample_set_is_one_clear_error(tmp_path):
    from kkoma.offline.sampler import SampleRenderer, find_samples

    with pytest.raises(SetupError, match="is not a folder"):
        find_samples(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SetupError, match="no audio file named like"):
        SampleRenderer(tmp_path / "empty", SR, 0.8)
    bad = make_sample_set(tmp_path / "bad", names=("C4v10",))
    (bad / "D4v10.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(SetupError, match="D4v10.wav cannot be read"):
        SampleRenderer(bad, SR, 0.8)


def test_notes_sound_at_their_pitch_and_time(tmp_path):
    from kkoma.offline.sampler import SampleRenderer
    from kkoma.offline.synth import audible_onset, measure_onset_offset

    r = SampleRenderer(make_sample_set(tmp_path / "set"), SR, 0.8)
    # 61 and 62 are shifted from C4 (the nearest recorded key is 60 / 63); 69 is recorded.
    for pitch in (60, 61, 62, 69, 72):
        audio = r.render([MidiEvent(0.5, "on", 0, pitch, 100), MidiEvent(1.5, "off", 0, pitch, 0)], 2.0)
        f0 = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
        assert abs(_f0(audio[int(0.6 * SR):int(1.4 * SR)]) / f0 - 1.0) < 0.005, pitch
        # Leading silence is cut at load: the note sounds within 2 ms of its note-on.
        assert abs(audible_onset(audio, SR) / SR - 0.5) < 0.002, pitch
    assert measure_onset_offset(r, n_notes=12, seed=1) < 0.002


def test_velocity_damping_pedal_and_restrike(tmp_path):
    from kkoma.offline.sampler import SampleRenderer

    r = SampleRenderer(make_sample_set(tmp_path / "set"), SR, 0.8)

    def play(events, seconds=3.0):
        return r.render(events, seconds)

    soft = play([MidiEvent(0.1, "on", 0, 60, 30), MidiEvent(1.0, "off", 0, 60, 0)])
    loud = play([MidiEvent(0.1, "on", 0, 60, 110), MidiEvent(1.0, "off", 0, 60, 0)])
    win = slice(int(0.2 * SR), int(0.9 * SR))
    assert _rms(loud[win]) > 4.0 * _rms(soft[win])
    # Key up without pedal: over 40 dB down 0.6 s later; with the pedal down it rings until the pedal lifts.
    assert _rms(loud[int(1.6 * SR):int(1.8 * SR)]) < 0.01 * _rms(loud[win])
    pedal = play([MidiEvent(0.05, "cc", 0, 64, 127), MidiEvent(0.1, "on", 0, 60, 110),
                  MidiEvent(1.0, "off", 0, 60, 0), MidiEvent(2.0, "cc", 0, 64, 0)])
    assert _rms(pedal[int(1.5 * SR):int(1.9 * SR)]) > 0.2 * _rms(pedal[win])
    assert _rms(pedal[int(2.6 * SR):int(2.8 * SR)]) < 0.01 * _rms(pedal[win])
    # A repeated key replaces its note (the first fades within tens of ms) rather than stacking two.
    twice = play([MidiEvent(0.1, "on", 0, 60, 110), MidiEvent(0.6, "on", 0, 60, 110),
                  MidiEvent(1.0, "off", 0, 60, 0)])
    after = slice(int(0.75 * SR), int(0.95 * SR))
    once = play([MidiEvent(0.6, "on", 0, 60, 110), MidiEvent(1.0, "off", 0, 60, 0)])
    assert abs(_rms(twice[after]) / _rms(once[after]) - 1.0) < 0.05
    # The top keys have no dampers: key up does not stop them.
    high = SampleRenderer(make_sample_set(tmp_path / "high", names=("C7v10",)), SR, 0.8)
    ring = high.render([MidiEvent(0.1, "on", 0, 96, 110), MidiEvent(0.5, "off", 0, 96, 0)], 2.0)
    assert _rms(ring[int(1.0 * SR):int(1.5 * SR)]) > 0.2 * _rms(ring[int(0.2 * SR):int(0.5 * SR)])


def test_velocity_layers_are_chosen_by_velocity(tmp_path):
    from kkoma.offline.sampler import SampleRenderer

    # Layer 1 is recorded 20x quieter than layer 10: soft notes must come from it.
    folder = make_sample_set(tmp_path / "set", names=("C4v10",), layers=[("C4v1", 0.02)])
    r = SampleRenderer(folder, SR, 0.8)
    soft = r.render([MidiEvent(0.1, "on", 0, 60, 20), MidiEvent(1.0, "off", 0, 60, 0)], 1.0)
    loud = r.render([MidiEvent(0.1, "on", 0, 60, 120), MidiEvent(1.0, "off", 0, 60, 0)], 1.0)
    assert _rms(loud) > 30.0 * _rms(soft)


def test_iowa_named_dynamics_are_velocity_layers(tmp_path):
    from kkoma.offline.sampler import SampleRenderer, find_samples

    # Piano.pp.C4 recorded 20x quieter than Piano.ff.C4: soft notes come from pp, as v1/v10 above.
    folder = make_sample_set(tmp_path / "iowa", names=("Piano.ff.C4",), layers=[("Piano.pp.C4", 0.02)])
    assert {p: sorted(layers) for p, layers in find_samples(folder).items()} == {60: [2, 7]}
    r = SampleRenderer(folder, SR, 0.8)
    soft = r.render([MidiEvent(0.1, "on", 0, 60, 20), MidiEvent(1.0, "off", 0, 60, 0)], 1.0)
    loud = r.render([MidiEvent(0.1, "on", 0, 60, 120), MidiEvent(1.0, "off", 0, 60, 0)], 1.0)
    assert _rms(loud) > 30.0 * _rms(soft)


def test_plan_adds_sample_copies_without_touching_the_rotation(tmp_path):
    from kkoma.offline.prepare import plan_synth
    from tests.test_prepare import write_midi_file

    root = tmp_path / "midi"
    for i in range(40):
        write_midi_file(root / f"C{i % 7}" / f"Work{i}" / f"P{i}.mid", [(60, 0.1, 0.3, 80)])
    s = load_settings(overrides=["data.holdout_piece_fraction=0.2", "data.sample_set_fraction=0.5"])
    sfs = ["/sf/a.sf2", "/sf/b.sf2"]
    plain = plan_synth(root, s, sfs, "/sf/held.sf2")
    folder = str(tmp_path / "pianos" / "grand")
    tasks = plan_synth(root, s, sfs, "/sf/held.sf2", sample_sets=[folder])
    copies = [t for t in tasks if t.soundfont == folder]
    assert [t for t in tasks if t.soundfont != folder] == plain  # existing shards stay valid
    train_ids = {t.id for t in plain if t.split == "train"}
    extra = [t for t in copies if t.split == "train"]
    assert extra and all(t.id.endswith("@grand") and t.id[:-len("@grand")] in train_ids for t in extra)
    assert all(t.augment == "train" for t in extra)
    assert 0.25 < len(extra) / len(train_ids) < 0.75
    held = {t.id for t in plain if t.split == "valid_pieces"}
    assert {t.id for t in copies if t.split == "valid_samples"} == held
    assert all(t.augment == "none" for t in copies if t.split == "valid_samples")
    with pytest.raises(KkomaError, match="both named 'grand'"):
        plan_synth(root, s, sfs, "/sf/held.sf2", sample_sets=[folder, str(tmp_path / "other" / "grand")])


@pytest.mark.skipif(not Path("/usr/share/sounds/sf2/TimGM6mb.sf2").is_file(), reason="TimGM6mb soundfont missing")
def test_prepare_with_a_sample_set_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth not installed")
    from kkoma.offline import prepare
    from kkoma.offline.prepare import prepare_synth

    # jobs=1 renders in this process: keep its renderers out of later tests (a FluidSynth renderer's output
    # was measured to depend on what it rendered before, so a shared one makes results depend on test order).
    monkeypatch.setattr(prepare, "_CACHE", {})
    from tests.test_prepare import _settings, write_midi_file

    root = tmp_path / "midi"
    for i, pitches in enumerate(([60, 64, 67], [62, 65, 69], [48, 55, 60], [57, 60, 64], [59, 62, 67])):
        write_midi_file(root / "Comp" / f"Work{i}" / f"P{i}.mid",
                        [(p, 0.2 + 0.3 * k, 0.45 + 0.3 * k, 90) for k, p in enumerate(pitches)])
    folder = make_sample_set(tmp_path / "grand")
    s = _settings("data.sample_set_fraction=1.0")
    summary = prepare_synth(root, tmp_path / "ds", s, sample_sets=[str(folder)], jobs=1, quiet=True)
    assert not summary.skipped
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    pieces = manifest["pieces"]
    copies = [p for p in pieces if p["id"].endswith("@grand")]
    assert copies and all(p["split"] == "train" and p["soundfont"] == str(folder) for p in copies)
    assert len(copies) == sum(1 for p in pieces if p["split"] == "train" and "@" not in p["id"])
    assert manifest["renderer_offsets_ms"][str(folder)] < 2.0
    valid = [p for p in pieces if p["split"] == "valid_samples"]
    assert valid and all((tmp_path / "ds" / "audio" / "valid_samples" / f"{p['id']}.flac").is_file() for p in valid)
    shard = np.load(tmp_path / "ds" / copies[0]["file"])
    assert shard["onset"].sum() == 3 and np.isfinite(shard["features"].astype(np.float32)).all()
