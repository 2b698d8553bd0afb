"""offline/note_set.py (``kkoma note-set``): a synthesiser's piano rendered as a sample set the sampler reads (names,
pitch, layers)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kkoma.cli import main
from kkoma.offline.note_set import make_note_set, sample_stem
from kkoma.offline.sampler import find_samples

TIM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
FREEPATS = "/etc/timidity/freepats.cfg"
pytest.importorskip("fluidsynth", reason="pyfluidsynth / libfluidsynth not installed")


def _strongest_hz(audio: np.ndarray, rate: int) -> float:
    """Frequency [Hz] of the strongest spectral peak in the first 0.5 s after the onset."""
    seg = audio[: rate // 2] * np.hanning(rate // 2)
    spec = np.abs(np.fft.rfft(seg))
    return float(np.fft.rfftfreq(len(seg), 1 / rate)[np.argmax(spec)])


def _check(out: Path, keys, velocities, rate):
    found = find_samples(out)
    assert sorted(found) == sorted(keys) and all(sorted(found[k]) == sorted(velocities) for k in keys)
    for k in keys:
        quiet, loud = (sf.read(found[k][v], dtype="float32")[0] for v in (min(velocities), max(velocities)))
        assert np.sqrt(np.mean(loud ** 2)) > 1.5 * np.sqrt(np.mean(quiet ** 2)) > 0  # layers grow with velocity
        f0 = 440.0 * 2 ** ((k - 69) / 12)
        h = _strongest_hz(loud, rate) / f0
        assert abs(h - round(h)) < 0.03 and round(h) >= 1, (k, h)  # a harmonic of the key, not another pitch


def test_names_are_what_the_sampler_parses():
    from kkoma.offline.sampler import parse_sample_name

    for p in (21, 60, 61, 108):
        assert parse_sample_name(sample_stem(p, 100)) == (p, 100)


@pytest.mark.skipif(not Path(TIM).is_file(), reason="timgm6mb-soundfont not installed")
def test_soundfont_piano_becomes_a_sample_set(tmp_path):
    files = make_note_set(TIM, tmp_path, velocities=[40, 127], hold=0.5, seconds=1.0, rate=16000, keys=[33, 60, 84])
    assert len(files) == 6 and {f.name for f in files} >= {"C4v40.flac", "A1v127.flac"}
    _check(tmp_path, [33, 60, 84], [40, 127], 16000)
    audio, rate = sf.read(tmp_path / "C4v127.flac")
    assert rate == 16000 and len(audio) == 16000
    assert np.abs(audio[9000:]).max() < 0.5 * np.abs(audio[:8000]).max()  # released at 0.5 s


@pytest.mark.skipif(shutil.which("timidity") is None or not Path(FREEPATS).is_file(),
                    reason="timidity / freepats not installed (apt-get install timidity freepats)")
def test_gus_patches_through_timidity(tmp_path):
    make_note_set(FREEPATS, tmp_path, velocities=[40, 127], hold=0.5, seconds=1.0, rate=16000, keys=[48, 72])
    _check(tmp_path, [48, 72], [40, 127], 16000)


def test_bad_input_is_one_sentence(tmp_path, capsys):
    assert main(["note-set", str(tmp_path / "nowhere.sf2"), str(tmp_path / "out")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["note-set", str(tmp_path / "notes.txt"), str(tmp_path / "out")]) == 1
    assert "not .txt" in capsys.readouterr().err
    assert main(["note-set", TIM, str(tmp_path / "out"), "--hold", "12"]) == 1
    assert "--hold" in capsys.readouterr().err
