"""Bad input a user can hit, each one sentence and a non-zero exit (or a warning), never a traceback: a config file
saved as UTF-16, ``kkoma cqt`` on an empty WAV, a truncated FLAC (transcribed as far as it decodes), and optional
features whose package is missing (mir_eval for ``kkoma evaluate``, matplotlib for ``--piano-roll``)."""
import sys

import numpy as np
import pytest
import soundfile as sf
from test_transcribe import EnergyTranscriber, tone_file  # the stand-in network, a tone writer

import kkoma.offline.transcribe as T
from kkoma.cli import main
from kkoma.models.audio import stream_audio
from kkoma.models.errors import KkomaError, KkomaWarning, require
from kkoma.models.notes import read_midi
from kkoma.models.settings import load_settings

S = load_settings()


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(T, "make_transcriber", EnergyTranscriber)


def one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_utf16_config_file_is_one_sentence_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "my.toml"
    cfg.write_text("[tracker]\nonset_threshold = 0.8\n", encoding="utf-16")
    assert main(["--config", str(cfg), "cqt", str(tmp_path / "x.wav")]) == 2
    line = one_sentence(capsys.readouterr().err)
    assert "not UTF-8" in line and str(cfg) in line


@pytest.mark.parametrize("stream", [False, True])
def test_cqt_on_an_empty_wav(tmp_path, capsys, stream):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    assert main(["cqt", str(empty)] + (["--stream"] if stream else [])) == 1
    assert "holds no audio samples" in one_sentence(capsys.readouterr().err)


def truncated_flac(tmp_path, seconds=6.0, keep=0.5):
    """A FLAC of tone bursts every second, cut to ``keep`` of its bytes (no end, a broken last frame)."""
    full = tone_file(tmp_path / "full.flac", seconds=seconds, sr=16000,
                     bursts=[(t + 0.1, t + 0.4) for t in range(int(seconds))])
    data = full.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


def test_truncated_flac_streams_up_to_where_it_breaks(tmp_path):
    cut = truncated_flac(tmp_path)
    warned = []
    y = np.concatenate(list(stream_audio(cut, S, block_seconds=20.0, on_warning=warned.append)))
    seconds = len(y) / S.audio.sample_rate
    assert 1.0 < seconds < 6.0  # one block of 20 s would have given nothing; the part that decodes comes out
    assert len(warned) == 1 and f"stops decoding at {seconds:.1f} s of 6.0 s" in warned[0]
    # Without a callback it is a Python warning of kkoma's own category.
    with pytest.warns(KkomaWarning, match="stops decoding"):
        assert sum(len(b) for b in stream_audio(cut, S, block_seconds=20.0)) == len(y)


def test_nothing_decodes_is_still_an_error(tmp_path):
    junk = tmp_path / "junk.flac"
    data = tone_file(tmp_path / "full.flac", seconds=1.0, sr=16000).read_bytes()
    junk.write_bytes(data[:200])  # the header only
    with pytest.raises(KkomaError):
        for _ in stream_audio(junk, S, block_seconds=20.0):
            pass


def test_truncated_flac_is_transcribed_with_a_warning(fake, tmp_path, capsys):
    cut = truncated_flac(tmp_path)
    assert main(["--set", "transcribe.jobs=1", "transcribe", str(cut), "-q"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "stops decoding at" in warning[0]
    assert not any(line.startswith("failed") for line in err.splitlines())
    notes = read_midi(tmp_path / "cut.mid")
    stop = float(warning[0].split("stops decoding at ")[1].split(" s")[0])
    assert len(notes) >= 1 and all(n.onset < stop for n in notes)
    assert [round(n.onset, 1) for n in notes] == [t + 0.1 for t in range(len(notes))]


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mir_eval", None)
    with pytest.raises(KkomaError, match=r"kkoma evaluate needs mir_eval, which is not installed: "
                                         r"pip install 'kkoma\[train\]'"):
        require("mir_eval", "kkoma evaluate")
    assert require("json", "x").dumps(1) == "1"


def test_evaluate_without_mir_eval(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mir_eval", None)
    assert main(["evaluate", "--pred", str(tmp_path), "--ref", str(tmp_path)]) == 1
    line = one_sentence(capsys.readouterr().err)
    assert "mir_eval" in line and "pip install 'kkoma[train]'" in line


def test_piano_roll_without_matplotlib_keeps_the_file_done(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    f = tone_file(tmp_path / "take.wav")
    assert main(["--set", "transcribe.jobs=1", "transcribe", str(f), "--piano-roll", "-q"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "take.mid").exists() and not (tmp_path / "take.png").exists()
    warning = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "matplotlib" in warning[0] and "pip install 'kkoma[train]'" in warning[0]
    assert not any(line.startswith("failed") for line in err.splitlines())
