"""``kkoma evaluate`` and offline.evaluate: known scores on hand-made MIDI pairs."""
import json

import pytest

from kkoma.cli import main
from kkoma.models.notes import Note, write_midi
from kkoma.models.settings import load_settings
from kkoma.offline.evaluate import piano_roll, score_notes

S = load_settings()
FR = S.audio.frame_rate

NOTES = [Note(60, 0.50, 1.00, 80), Note(64, 0.50, 1.00, 60), Note(67, 1.20, 2.00, 100), Note(72, 2.50, 2.70, 40)]


def shifted(notes, dt, which=None):
    return [Note(n.pitch, n.onset + dt, n.offset + dt, n.velocity) if which is None or i in which else n
            for i, n in enumerate(notes)]


def test_identical_is_perfect():
    s = score_notes(NOTES, NOTES, FR)
    for m in ("onset", "onset_offset", "velocity", "frame"):
        assert s[f"{m}_f1"] == pytest.approx(1.0)
    assert s["n_ref"] == s["n_est"] == 4


def test_onset_shift_of_100ms_is_a_miss_and_40ms_a_hit():
    s = score_notes(NOTES, shifted(NOTES, 0.1, {0}), FR)
    assert s["onset_recall"] == pytest.approx(0.75) and s["onset_precision"] == pytest.approx(0.75)
    assert s["onset_f1"] == pytest.approx(0.75)
    s = score_notes(NOTES, shifted(NOTES, 0.04), FR)
    assert s["onset_f1"] == pytest.approx(1.0)


def test_offset_tolerance_is_20_percent_of_length():
    # Note 0 lasts 0.5 s: 20 % = 0.1 s. An offset 0.15 s late misses onset+offset but keeps the onset.
    est = [Note(60, 0.5, 1.15, 80)] + NOTES[1:]
    s = score_notes(NOTES, est, FR)
    assert s["onset_f1"] == pytest.approx(1.0)
    assert s["onset_offset_f1"] == pytest.approx(0.75)
    est = [Note(60, 0.5, 1.08, 80)] + NOTES[1:]
    assert score_notes(NOTES, est, FR)["onset_offset_f1"] == pytest.approx(1.0)


def test_wrong_pitch_and_extra_note():
    est = [Note(61, 0.5, 1.0, 80)] + NOTES[1:] + [Note(90, 3.0, 3.5, 64)]
    s = score_notes(NOTES, est, FR)
    assert s["onset_precision"] == pytest.approx(3 / 5)
    assert s["onset_recall"] == pytest.approx(3 / 4)


def test_velocity_metric_needs_consistent_velocities():
    # A global rescale of velocities is forgiven (mir_eval fits a linear map); swapped loud/soft is not.
    scaled = [Note(n.pitch, n.onset, n.offset, max(1, n.velocity // 2)) for n in NOTES]
    assert score_notes(NOTES, scaled, FR)["velocity_f1"] == pytest.approx(1.0)
    swapped = [Note(n.pitch, n.onset, n.offset, v) for n, v in zip(NOTES, (40, 100, 60, 80))]
    assert score_notes(NOTES, swapped, FR)["velocity_f1"] < 1.0


def test_frame_f1_half_overlap():
    ref = [Note(60, 0.0, 1.0, 80)]
    est = [Note(60, 0.5, 1.5, 80)]
    s = score_notes(ref, est, FR)
    assert s["frame_precision"] == pytest.approx(0.5, abs=0.02)
    assert s["frame_recall"] == pytest.approx(0.5, abs=0.02)
    roll = piano_roll(ref, FR)
    assert roll.shape == (round(FR), 128) and roll[:, 60].all()


def test_empty_cases():
    assert score_notes([], [], FR)["onset_f1"] == 1.0
    assert score_notes(NOTES, [], FR)["onset_f1"] == 0.0
    assert score_notes([], NOTES, FR)["frame_f1"] == 0.0


def _write(folder, name, notes):
    folder.mkdir(parents=True, exist_ok=True)
    write_midi(notes, folder / f"{name}.mid", S)


def test_cli_pairs_by_name_and_writes_json(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _write(ref, "a", NOTES)
    _write(pred, "a", NOTES)
    _write(ref, "b", NOTES)
    _write(pred, "b", shifted(NOTES, 0.1, {0}))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| a |" in text and "| b |" in text and "mean all" in text
    data = json.loads(out.read_text())
    files = {f["name"]: f for f in data["groups"]["all"]["files"]}
    assert files["a"]["onset_f1"] == pytest.approx(1.0)
    assert files["b"]["onset_f1"] == pytest.approx(0.75)
    assert data["groups"]["all"]["mean"]["onset_f1"] == pytest.approx(0.875)


def test_cli_reference_uses_sustain_pedal(tmp_path):
    import mido

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    # Key held 0.25 s, pedal keeps it sounding until 1.0 s.
    mid = mido.MidiFile(ticks_per_beat=480)  # 120 bpm default: 960 ticks per second
    tr = mido.MidiTrack()
    tr += [mido.Message("control_change", control=64, value=127, time=0),
           mido.Message("note_on", note=60, velocity=80, time=0),
           mido.Message("note_off", note=60, velocity=0, time=240),
           mido.Message("control_change", control=64, value=0, time=720)]
    mid.tracks.append(tr)
    mid.save(ref / "p.mid")
    _write(pred, "p", [Note(60, 0.0, 1.0, 80)])
    out = tmp_path / "s.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json", str(out)]) == 0
    f = json.loads(out.read_text())["groups"]["all"]["files"][0]
    assert f["onset_offset_f1"] == pytest.approx(1.0)


def test_cli_missing_prediction_and_bad_midi_fail_clearly(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _write(ref, "a", NOTES)
    _write(pred, "a", NOTES)
    _write(ref, "gone", NOTES)
    (ref / "junk.mid").write_bytes(b"not a midi file")
    (pred / "junk.mid").write_bytes(b"MThd")
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref)]) == 1
    captured = capsys.readouterr()
    assert "| a |" in captured.out
    assert "gone" in captured.err and "no prediction" in captured.err
    assert "junk" in captured.err


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path)]) == 1
    assert "--ref" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(tmp_path)]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", str(tmp_path)]) == 1
    assert "audio" in capsys.readouterr().err


def test_cli_dataset_runs_the_file_pipeline(tmp_path, monkeypatch, capsys):
    """--dataset transcribes DATASET/audio/<split>/*.flac and scores against the .mid beside (model stubbed by the
    energy detector of test_transcribe, so the expected score is known)."""
    import numpy as np
    import soundfile as sf
    from test_transcribe import EnergyTranscriber, tone_file

    import kkoma.offline.transcribe as T

    monkeypatch.setattr(T, "make_transcriber", EnergyTranscriber)
    for split in ("valid_soundfont", "valid_room"):
        d = tmp_path / "data" / "audio" / split
        d.mkdir(parents=True)
        tone_file(d / "p1.flac", seconds=1.0, bursts=((0.2, 0.5),))
        write_midi([Note(60, 0.2, 0.5, 64)], d / "p1.mid", S)
        sf.write(str(d / "p2.flac"), np.zeros(16000, np.float32), 16000)  # silence, but the reference has a note
        write_midi([Note(60, 0.2, 0.5, 64)], d / "p2.mid", S)
    out = tmp_path / "scores.json"
    code = main(["--set", "transcribe.jobs=1", "evaluate", "--dataset", str(tmp_path / "data"), "--split",
                 "valid_room", "--json", str(out), "-q", "--out", str(tmp_path / "pred")])
    assert code == 0
    data = json.loads(out.read_text())
    assert list(data["groups"]) == ["valid_room"]
    files = {f["name"]: f for f in data["groups"]["valid_room"]["files"]}
    assert files["p1"]["onset_f1"] == pytest.approx(1.0) and files["p2"]["onset_f1"] == 0.0
    assert (tmp_path / "pred" / "valid_room" / "p1.mid").exists()
    assert main(["evaluate", "--dataset", str(tmp_path / "data"), "--split", "valid_nope"]) == 1
    assert "valid_nope" in capsys.readouterr().err
