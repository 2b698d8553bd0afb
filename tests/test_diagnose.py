"""kkoma.offline.diagnose: per-register recall / precision and the kinds of false notes, on hand-made notes; the
``kkoma diagnose`` command."""
from __future__ import annotations

from pathlib import Path

import pytest

from kkoma.cli import main
from kkoma.models.notes import Note
from kkoma.offline.diagnose import KINDS, Diagnosis

pytest.importorskip("mir_eval")
ROOT = Path(__file__).resolve().parents[1]


def test_registers_and_false_note_kinds():
    ref = [Note(60, 1.0, 1.5, 80), Note(45, 2.0, 4.0, 80), Note(64, 3.0, 3.5, 80)]
    est = [Note(60, 1.01, 1.5, 80),   # found, 10 ms late
           Note(48, 1.0, 1.5, 80),    # an octave below the played C4
           Note(72, 1.0, 1.5, 80),    # an octave above it
           Note(45, 2.0, 4.0, 80),    # found
           Note(45, 2.5, 3.0, 80),    # the held A2 struck again
           Note(66, 5.0, 5.5, 80)]    # nothing near
    d = Diagnosis()
    d.add(ref, est)
    rows = {keys.split(" ")[0]: (n, rec, prec, err) for keys, n, rec, prec, err in d.register_rows()}
    assert rows["A2-G#3"][:3] == (1, 1.0, pytest.approx(1 / 3))
    assert rows["A3-G#4"][:3] == (2, 0.5, 0.5)
    assert rows["A3-G#4"][3] == pytest.approx(10.0, abs=0.01)
    assert rows["A4-G#5"][:3] == (0, pytest.approx(float("nan"), nan_ok=True), 0.0)
    assert d.false_kinds["low"] == {KINDS[0]: 1, KINDS[5]: 1}
    assert d.false_kinds["high"] == {KINDS[1]: 1, KINDS[8]: 1}


def test_empty_transcription_counts_every_reference_as_missed():
    d = Diagnosis()
    d.add([Note(60, 1.0, 1.5, 80)], [])
    (_, n, rec, _, _), = d.register_rows()
    assert n == 1 and rec == 0.0


def test_cli_on_the_bundled_example(capsys):
    assert main(["diagnose", str(ROOT / "examples")]) == 0
    out = capsys.readouterr().out
    assert "| keys | reference notes | onset recall |" in out and "1 files" in out


def test_cli_folder_without_references(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 1
    assert "no .flac file with a reference .mid" in capsys.readouterr().err


def test_header_names_every_file_of_an_ensemble(monkeypatch, capsys):
    """The report's title names the model's files: both of `--model ensemble`'s, not model.weights alone."""
    from kkoma.offline import diagnose

    monkeypatch.setattr(diagnose, "diagnose", lambda settings, audio_dir, **kw: (Diagnosis(), 1))  # no transcribing
    assert main(["diagnose", str(ROOT / "examples"), "--model", "ensemble"]) == 0
    assert "(1 files, kkoma_offline.npz + kkoma_pitch.npz)" in capsys.readouterr().out


def test_python_m_runs_the_diagnose_command(tmp_path):
    """`python -m kkoma.offline.diagnose DIR` is `kkoma diagnose DIR` (it used to print nothing and exit 0)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "kkoma.offline.diagnose", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "no .flac file with a reference .mid" in r.stderr


def test_cli_reads_transcriptions_made_already(tmp_path, capsys):
    """--pred DIR scores DIR/X.mid (what `kkoma evaluate --out` keeps) instead of transcribing: a perfect
    transcription (the reference itself) gives 100 % recall and precision; a missing one is an error."""
    import shutil

    audio = tmp_path / "audio"
    pred = tmp_path / "pred"
    audio.mkdir()
    pred.mkdir()
    shutil.copy(ROOT / "examples" / "example.flac", audio / "a.flac")
    from kkoma.models.notes import read_midi, write_midi
    from kkoma.models.settings import load_settings

    ref = read_midi(ROOT / "examples" / "example.mid", sustain=True)
    write_midi(ref, audio / "a.mid", load_settings())
    assert main(["diagnose", str(audio), "--pred", str(pred)]) == 1
    assert "has no transcription a.mid" in capsys.readouterr().err
    write_midi(ref, pred / "a.mid", load_settings())
    assert main(["diagnose", str(audio), "--pred", str(pred)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert rows and all(line.split("|")[3].strip() == line.split("|")[4].strip() == "100.0 %" for line in rows)
    assert f"transcriptions in {pred}" in out
