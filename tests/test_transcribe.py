"""``kkoma transcribe``: inputs (files, folders, globs), formats, overwrite rule, bad input, interruption.

Most tests drive the file machinery with ``EnergyTranscriber``, a stand-in for the network that opens a note on C4
wherever the signal is loud (real NoteTracker, real decoding/streaming/writing), so they run in milliseconds and do
not depend on trained weights. The tests at the end run the real pipeline (``models.pipeline.Transcriber``) with
tiny random weights, checking plumbing and imports, never musical accuracy.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import kkoma.offline.transcribe as T
from kkoma.cli import main
from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI, read_midi
from kkoma.models.settings import load_settings
from kkoma.models.tracker import NoteTracker

S = load_settings()
SR = 22050


class EnergyTranscriber:
    """Test double for models.pipeline.Transcriber: loud hops -> a C4 note (through the real NoteTracker)."""

    def __init__(self, settings, raise_after_blocks=None):
        self.hop = settings.audio.hop_length
        self.tracker = NoteTracker(settings)
        self.raise_after_blocks = raise_after_blocks
        self.blocks = []
        self.reset()

    def reset(self):
        self.tracker.reset()
        self.rest = np.zeros(0, np.float32)
        self.blocks = []

    def process(self, block):
        self.blocks.append(len(block))
        if self.raise_after_blocks is not None and len(self.blocks) > self.raise_after_blocks:
            raise KeyboardInterrupt
        x = np.concatenate([self.rest, block])
        n = len(x) // self.hop * self.hop
        self.rest = x[n:]
        rms = np.sqrt((x[:n].reshape(-1, self.hop) ** 2).mean(axis=1)) if n else np.zeros(0)
        k = len(rms)
        on = np.zeros((k, N_KEYS), np.float32)
        on[:, 60 - PIANO_MIN_MIDI] = rms > 0.05
        return self.tracker.process(on, on.copy(), np.full((k, N_KEYS), 0.5, np.float32))

    def flush(self):
        return self.tracker.flush()


@pytest.fixture
def fake(monkeypatch):
    made = []

    def make(settings):
        t = EnergyTranscriber(settings)
        made.append(t)
        return t

    monkeypatch.setattr(T, "make_transcriber", make)
    return made


def tone_file(path, seconds=1.0, sr=SR, channels=1, bursts=((0.2, 0.5),), **kw):
    """Sine bursts at 262 Hz (on between the given [start, end) seconds), silence elsewhere."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for a, b in bursts:
        x[(t >= a) & (t < b)] = 0.5 * np.sin(2 * np.pi * 262 * t[(t >= a) & (t < b)])
    sf.write(str(path), np.repeat(x[:, None], channels, axis=1).astype(np.float32), sr, **kw)
    return path


def run(args, **kw):
    return main(["--set", "transcribe.jobs=1", "transcribe", *args], **kw)


# ---------------------------------------------------------------------------------------------------------------
def test_one_file_next_to_input(fake, tmp_path, capsys):
    f = tone_file(tmp_path / "take.wav", bursts=((0.2, 0.5), (0.7, 0.9)))
    assert run([str(f)]) == 0
    notes = read_midi(tmp_path / "take.mid")
    assert [n.pitch for n in notes] == [60, 60]
    assert notes[0].onset == pytest.approx(0.2, abs=0.02) and notes[1].offset == pytest.approx(0.9, abs=0.02)
    err = capsys.readouterr().err
    assert "1 transcribed, 0 skipped, 0 failed" in err


def test_a_run_removes_temps_a_killed_writer_left_beside_its_outputs(fake, tmp_path):
    """A worker killed mid-write (SIGKILL) leaves models.atomic's hidden temp file; once every file of the run has
    ended it is stale, and the run removes it. Another file's temp is left alone."""
    f = tone_file(tmp_path / "take.wav")
    stale = tmp_path / ".take.4242.0badf00d.tmp.mid"
    other = tmp_path / ".other.4242.0badf00d.tmp.mid"
    stale.write_bytes(b"half a file")
    other.write_bytes(b"someone else's")
    assert run([str(f)]) == 0
    assert read_midi(tmp_path / "take.mid") and not stale.exists() and other.exists()


def test_formats_csv_json_and_piano_roll(fake, tmp_path):
    f = tone_file(tmp_path / "a.flac", sr=44100, channels=2)
    out = tmp_path / "out"
    assert run([str(f), "-o", str(out), "--format", "mid,csv,json", "--piano-roll", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.json", "a.mid", "a.png"]
    lines = (out / "a.csv").read_text().splitlines()
    assert lines[0] == "onset,offset,pitch,velocity" and len(lines) == 2
    onset, offset, pitch, vel = lines[1].split(",")
    assert float(onset) == pytest.approx(0.2, abs=0.02) and int(pitch) == 60 and 1 <= int(vel) <= 127
    data = json.loads((out / "a.json").read_text())
    assert data["audio"] == "a.flac" and data["seconds"] == pytest.approx(1.0, abs=0.01)
    assert [n["pitch"] for n in data["notes"]] == [60]
    assert (out / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_format_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        run([str(tmp_path / "x.wav"), "--format", "mid,xml"])
    assert e.value.code == 2


def test_existing_outputs_are_skipped_unless_overwrite(fake, tmp_path, capsys):
    f = tone_file(tmp_path / "a.wav")
    (tmp_path / "a.mid").write_bytes(b"keep me")
    assert run([str(f)]) == 0
    assert (tmp_path / "a.mid").read_bytes() == b"keep me"
    err = capsys.readouterr().err
    assert "skipped" in err and "--overwrite" in err and "0 transcribed, 1 skipped" in err
    assert run([str(f), "--overwrite"]) == 0
    assert len(read_midi(tmp_path / "a.mid")) == 1


def test_folders_recursive_and_globs(fake, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    tone_file(src / "one.wav")
    tone_file(src / "sub" / "two.ogg", format="OGG", subtype="VORBIS")
    tone_file(src / "sub" / "one.flac")  # same stem, other folder: must not collide under -o
    (src / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    assert run([str(src), "-o", str(out), "-q"]) == 0
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*.mid"))
    assert got == ["one.mid", "sub/one.mid", "sub/two.mid"]
    out2 = tmp_path / "out2"
    assert run([str(src / "**" / "*.wav"), str(src / "sub" / "t*.ogg"), "-o", str(out2), "-q"]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["one.mid", "two.mid"]


def test_same_output_twice_is_refused(fake, tmp_path, capsys):
    tone_file(tmp_path / "a.wav")
    tone_file(tmp_path / "a.flac")
    assert run([str(tmp_path / "a.wav"), str(tmp_path / "a.flac")]) == 1
    err = capsys.readouterr().err
    assert "failed" in err and "a.flac" in err and "same name" in err
    assert (tmp_path / "a.mid").exists()


def test_streams_in_chunks_of_chunk_frames(fake, tmp_path):
    f = tone_file(tmp_path / "long.wav", seconds=3.0, sr=48000)
    assert main(["--set", "transcribe.jobs=1", "--set", "transcribe.chunk_frames=50", "transcribe", str(f),
                 "-q"]) == 0
    blocks = fake[0].blocks
    hop = S.audio.hop_length
    assert max(blocks) <= 50 * hop and len(blocks) >= 3 * S.audio.sample_rate // (50 * hop)
    assert sum(blocks) == pytest.approx(3.0 * S.audio.sample_rate, abs=hop)


def test_many_channels_high_rate(fake, tmp_path):
    f = tone_file(tmp_path / "multi.wav", sr=96000, channels=8)
    assert run([str(f), "-q"]) == 0
    assert [n.pitch for n in read_midi(tmp_path / "multi.mid")] == [60]


def test_empty_and_silent_audio_give_valid_empty_midi(fake, tmp_path):
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), np.float32), SR)
    sf.write(str(tmp_path / "silent.flac"), np.zeros(SR, np.float32), SR)
    assert run([str(tmp_path / "empty.wav"), str(tmp_path / "silent.flac"), "-f", "mid,json", "-q"]) == 0
    for stem in ("empty", "silent"):
        assert read_midi(tmp_path / f"{stem}.mid") == []
        assert json.loads((tmp_path / f"{stem}.json").read_text())["notes"] == []


def test_bad_inputs_fail_one_line_each_and_the_rest_is_done(fake, tmp_path, capsys):
    good = tone_file(tmp_path / "good.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(2000))
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(os.urandom(3000))
    nan = tmp_path / "nan.wav"
    x = np.zeros(SR, np.float32)
    x[1000] = np.nan
    sf.write(str(nan), x, SR, subtype="FLOAT")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    (empty_dir / "readme.txt").write_text("hi")
    args = [str(tmp_path / "missing.wav"), str(corrupt), str(noise), str(nan), str(empty_dir),
            str(tmp_path / "*.nomatch"), str(good)]
    assert run(args) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 6, err
    for name in ("missing.wav", "corrupt.wav", "noise.mp3", "nan.wav", "nothing", "*.nomatch"):
        assert sum(name in line for line in failed) == 1, (name, failed)
    assert "NaN" in next(line for line in failed if "nan.wav" in line)
    assert "1 transcribed, 0 skipped, 6 failed" in err
    assert (tmp_path / "good.mid").exists()
    assert not any((tmp_path / f"{s}.mid").exists() for s in ("corrupt", "noise", "nan"))


def test_truncated_file(fake, tmp_path, capsys):
    f = tone_file(tmp_path / "full.flac", seconds=2.0)
    data = f.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    wav = tone_file(tmp_path / "full.wav", seconds=2.0)
    cutw = tmp_path / "cutw.wav"
    cutw.write_bytes(wav.read_bytes()[: len(wav.read_bytes()) // 2])
    code = run([str(cut), str(cutw)])
    err = capsys.readouterr().err
    # Either decoded up to the damage (a valid MIDI file) or a one-line failure naming the file: never a crash.
    for stem in ("cut", "cutw"):
        assert (tmp_path / f"{stem}.mid").exists() or any(
            line.startswith("failed") and f"{stem}." in line for line in err.splitlines())
    assert code in (0, 1)
    assert "Traceback" not in err


def test_unwritable_output_folder(fake, tmp_path, capsys):
    f = tone_file(tmp_path / "a.wav")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert run([str(f), "-o", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("failed"))
    assert "a.wav" in line and "cannot write" in line


def test_interrupt_leaves_no_partial_output(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(T, "make_transcriber", lambda s: EnergyTranscriber(s, raise_after_blocks=1))
    f = tone_file(tmp_path / "a.wav", seconds=3.0)
    (tmp_path / "b.mid").write_bytes(b"old")
    code = main(["--set", "transcribe.jobs=1", "--set", "transcribe.chunk_frames=20", "transcribe", str(f),
                 "-f", "mid,csv,json", "--piano-roll"])
    assert code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.mid"]


def test_atomic_write_cleans_up_on_interrupt(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("previous")

    def boom(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T._atomic_write(target, boom)
    assert target.read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_negative_jobs_is_an_error(tmp_path, capsys):
    assert main(["transcribe", str(tmp_path), "--jobs", "-1"]) == 1
    assert "--jobs" in capsys.readouterr().err


def test_find_inputs_order_and_dedup(tmp_path):
    for name in ("b.wav", "a.wav", "c.FLAC", ".hidden.wav"):
        (tmp_path / name).write_bytes(b"")
    inputs, failures = T.find_inputs([str(tmp_path), str(tmp_path / "a.wav")])
    assert [p.name for p, _ in inputs] == ["a.wav", "b.wav", "c.FLAC"] and failures == []


# ---------------------------------------------------------------------------------------------------------------
# The real pipeline (tiny random weights)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Settings overrides pointing model.weights at tiny random weights (shipped weights if they exist)."""
    pipeline = pytest.importorskip("kkoma.models.pipeline")
    if S.model.weights_path.exists():
        return []
    inference = pytest.importorskip("kkoma.models.inference")
    export = getattr(inference, "export_random_weights", None)
    if export is None:
        pytest.skip("kkoma.models.inference has no export_random_weights yet")
    path = tmp_path_factory.mktemp("w") / "random.npz"
    export(path, S)
    del pipeline
    return ["--set", f"model.weights={path}"]


def test_real_pipeline_one_and_many_files(random_weights, tmp_path):
    for i in range(3):
        tone_file(tmp_path / f"t{i}.wav", seconds=1.0 + i, sr=44100, channels=2)
    out = tmp_path / "out"
    assert main([*random_weights, "--set", "transcribe.jobs=2", "transcribe", str(tmp_path), "-o", str(out),
                 "-f", "mid,json", "-q"]) == 0
    for i in range(3):
        read_midi(out / f"t{i}.mid")
        data = json.loads((out / f"t{i}.json").read_text())
        assert data["seconds"] == pytest.approx(1.0 + i, abs=0.01)
        for n in data["notes"]:
            assert 21 <= n["pitch"] <= 108 and 0 <= n["onset"] < n["offset"] <= 1.0 + i + 0.1


def test_real_pipeline_file_equals_transcribe_audio(random_weights, tmp_path):
    """The streamed file path (small chunks) gives the notes of models.pipeline.transcribe_audio on the whole."""
    from kkoma.models.audio import load_audio
    from kkoma.models.pipeline import transcribe_audio

    s = load_settings(overrides=[a for a in random_weights if a != "--set"] + ["transcribe.chunk_frames=37"])
    f = tone_file(tmp_path / "x.wav", seconds=2.0, bursts=((0.1, 0.6), (0.9, 1.5)))
    got = T.transcribe_file(f, s).notes
    want = transcribe_audio(load_audio(f, s), s)
    assert got == want


def _no_nvidia_driver() -> bool:
    from kkoma.models.tf_inference import nvidia_driver_present

    return not nvidia_driver_present()


# auto is the default: on a machine without an NVIDIA driver it must settle on cpu without loading TensorFlow.
@pytest.mark.parametrize("device", [["--device", "cpu"], pytest.param([], marks=pytest.mark.skipif(
    "not _no_nvidia_driver()", reason="an NVIDIA driver is present: auto may rightly load TensorFlow"))])
def test_transcribe_imports_no_tensorflow_or_librosa(random_weights, tmp_path, device):
    f = tone_file(tmp_path / "x.flac", seconds=1.0)
    code = ("import sys\nfrom kkoma.cli import main\n"
            f"rc = main({random_weights!r} + ['transcribe', {str(f)!r}, '-q', '-f', 'mid,csv,json'] + {device!r})\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'librosa', 'matplotlib') if m in sys.modules]\n"
            "print('RC', rc, 'HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RC 0 HEAVY []" in out.stdout, out.stdout + out.stderr


def test_process_pool_over_files(tmp_path):
    """Two workers, each file streamed whole by one of them; same notes as one worker."""
    for i in range(4):
        tone_file(tmp_path / f"f{i}.wav", seconds=1.0, bursts=((0.1 * (i + 1), 0.6),))
    out1, out2 = tmp_path / "one", tmp_path / "two"
    s1 = T.transcribe_paths([str(tmp_path)], S, out_dir=out1, formats=("json",), quiet=True, n_jobs=1,
                            factory=EnergyTranscriber)
    s2 = T.transcribe_paths([str(tmp_path)], S, out_dir=out2, formats=("json",), quiet=True, n_jobs=2,
                            factory=EnergyTranscriber)
    assert len(s1.done) == len(s2.done) == 4 and not s1.failed and not s2.failed
    for i in range(4):
        a = json.loads((out1 / f"f{i}.json").read_text())["notes"]
        assert a == json.loads((out2 / f"f{i}.json").read_text())["notes"]
        assert a[0]["onset"] == pytest.approx(0.1 * (i + 1), abs=0.02)


def test_weights_of_another_network_need_no_settings(tmp_path):
    """`kkoma transcribe` with a weights file of another architecture than config.toml's (the pitch-shared files
    network in small: harmonic branch with the octave below and the fifth, backward LSTM over blocks) and only
    --set model.weights: the file's network is used, giving the notes that its own settings give."""
    from kkoma.models.audio import load_audio
    from kkoma.models.inference import export_random_weights
    from kkoma.models.pipeline import transcribe_audio

    arch = ["model.units=12", "model.input_units=20", "model.harmonic_units=5", "model.harmonic_features=3",
            "model.harmonics=[0.5, 1, 1.5, 2, 3]", "model.backward_units=6", "model.backward_block_frames=40",
            "model.backward_context_frames=20", "tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3"]
    w = export_random_weights(tmp_path / "w.npz", load_settings(overrides=arch), seed=2)
    f = tone_file(tmp_path / "x.wav", seconds=2.0, bursts=((0.1, 0.6), (0.9, 1.5)))
    out = tmp_path / "out"
    assert main(["--set", f"model.weights={w}", "--set", "transcribe.overrides=[]", "--set",
                 "tracker.onset_threshold=0.5", "--set", "tracker.frame_threshold=0.3", "--set", "transcribe.jobs=1",
                 "transcribe", str(f), "-o", str(out), "-f", "json", "-q"]) == 0
    s = load_settings(overrides=arch + [f"model.weights={w}"])
    want = transcribe_audio(load_audio(f, s), s)
    got = json.loads((out / "x.json").read_text())["notes"]
    assert len(got) == len(want) > 0
    assert [n["pitch"] for n in got] == [n.pitch for n in want]
