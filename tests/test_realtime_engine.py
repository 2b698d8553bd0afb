"""The live engine and the live/record/devices commands, driven by files and scripted sources (no sound card).

Most tests use ``EnergyTranscriber`` (tests/test_realtime_doubles.py: loud hops hold C4), so they check the
engine's plumbing and clocks, not the network; one test runs the real pipeline with tiny random weights.
"""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_realtime_doubles import C4, EnergyTranscriber, tone

import kkoma.realtime.engine as E
from kkoma.cli import main
from kkoma.models.errors import KkomaError
from kkoma.models.notes import events_to_notes, read_midi
from kkoma.models.settings import load_settings
from kkoma.realtime.audio_in import FileInput
from kkoma.realtime.midi_out import NullMidiOut
from kkoma.realtime.ringbuffer import RingBuffer

S = load_settings()
BURSTS = [(0.3, 0.8), (1.2, 1.5)]
HOP_S = S.audio.hop_seconds


@pytest.fixture
def double(monkeypatch):
    monkeypatch.setattr(E, "make_live_transcriber", EnergyTranscriber)
    monkeypatch.setattr(E, "make_record_transcriber", EnergyTranscriber)


@pytest.fixture
def tone_file(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(2.0, 44100, BURSTS, channels=2), 44100)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def run_engine(source, settings=S, **kw):
    midi = NullMidiOut(settings)
    events = []
    eng = E.Engine(settings, source, midi, transcriber=EnergyTranscriber(settings),
                   on_event=lambda e, t, v: events.append((e, t)), **kw)
    eng.start()
    eng.join(30)
    assert not eng.running
    if eng.error:
        raise eng.error
    return eng, events


def _example_at(rate: int, tmp_path: Path) -> Path:
    """The bundled example as a device at ``rate`` [Hz] would deliver it, written as a float WAV."""
    import soxr

    x, sr = sf.read(E.__file__.rsplit("/realtime/", 1)[0] + "/examples/example.flac", dtype="float32")
    if rate != sr:
        x = soxr.resample(x, sr, rate, quality="VHQ").astype(np.float32)  # a device's signal
    path = tmp_path / f"example_{rate}.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def test_file_through_engine_times_on_the_sample_clock(tone_file):
    eng, events = run_engine(FileInput(S, tone_file, speed="max"))
    assert eng.ended
    ons = [(e, t) for e, t in events if e.kind == "on"]
    offs = [(e, t) for e, t in events if e.kind == "off"]
    assert [e.pitch for e, _ in ons] == [C4, C4] and len(offs) == 2
    for (e, _), (a, _) in zip(ons, BURSTS):
        assert abs(e.time - a) <= HOP_S + 1e-9  # stamped at a frame boundary
    for (e, _), (_, b) in zip(offs, BURSTS):
        assert abs(e.time - b) <= 2 * HOP_S + 1e-9
    for e, t_emit in events[:-1]:
        # sent after its time, and no later than the budget (sample clock, no compute in it); a note-off may also
        # wait for the tracker's offset hold
        late = eng.budget["total_ms"] / 1000 + HOP_S
        if e.kind == "off":
            late += (eng.transcriber.tracker.offset_hold_frames - 1) * HOP_S
        assert e.time <= t_emit <= e.time + late
    assert eng.step_dev == min(eng.hop_dev, S.live.block_size)
    assert eng.hops == int(np.ceil(2.0 * 44100 / eng.step_dev))
    rep = eng.report()
    assert rep["hop_compute_ms"]["hops"] >= eng.hops and rep["overflows"]["ring_overflows"] == 0
    assert rep["input_seconds"] == pytest.approx(2.0)


def test_realtime_pace_gives_the_same_events(tone_file):
    _, fast = run_engine(FileInput(S, tone_file, speed="max"))
    _, paced = run_engine(FileInput(S, tone_file, speed="realtime"))
    assert [(e.kind, e.time) for e, _ in fast] == [(e.kind, e.time) for e, _ in paced]


class ScriptedSource:
    """A source whose producer thread runs a script: fills the ring, overflows it, waits, plays a burst."""

    is_file = True
    name = "scripted"

    def __init__(self, sr=16000, ring_s=0.5, block=160):
        self.sample_rate, self.channels, self.block_size = sr, 1, block
        self.ring = RingBuffer(int(ring_s * sr), 1)
        self.overflows = 0
        self.error = None
        self.finished = False
        self.steps = []

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for step in self.steps:
            step(self)
        self.finished = True

    def stop(self):
        self.finished = True


def test_ring_overflow_keeps_events_on_the_device_clock():
    """0.25 s dropped after 0.5 s of silence: a burst at device time 1.0 s is stamped 1.0 s, not 0.75 s."""
    src = ScriptedSource()
    sr = src.sample_rate
    silence = np.zeros(int(0.5 * sr), np.float32)
    burst = tone(0.5, sr, [(0.25, 0.45)])[:, 0]  # device time 0.75 + 0.25 = 1.0 s

    def fill(s):
        s.ring.write(silence)                       # fills the ring (the engine is not reading yet)
        s.ring.write(np.zeros(int(0.25 * sr), np.float32))  # dropped: the ring is full
        go.set()
        while s.ring.available:                     # the engine catches up
            time.sleep(0.001)
        s.ring.write(burst)

    go = threading.Event()
    src.steps = [fill]
    eng = E.Engine(S, src, NullMidiOut(S), transcriber=EnergyTranscriber(S))
    events = []
    eng.on_event = lambda e, t, v: events.append((e, t))
    src.start()
    go.wait(5)
    eng._thread.start()  # engine after the overflow, so the drop happens deterministically
    eng.join(30)
    assert eng.error is None and src.ring.overflows == 1 and src.ring.dropped == int(0.25 * sr)
    on = [e for e, _ in events if e.kind == "on"]
    assert len(on) == 1 and abs(on[0].time - 1.0) <= HOP_S + 1e-9
    assert eng.report()["input_seconds"] == pytest.approx(1.25)


def test_source_error_and_stall_end_the_engine():
    src = ScriptedSource()
    src.is_file = False
    src.steps = [lambda s: s.ring.write(np.zeros(1600, np.float32)),
                 lambda s: setattr(s, "error", KkomaError("the audio input 'x' stopped delivering audio."))]
    eng = E.Engine(S, src, NullMidiOut(S), transcriber=EnergyTranscriber(S))
    eng.start()
    eng.join(10)
    assert isinstance(eng.error, KkomaError)

    s = load_settings(overrides=["live.stall_s=0.2"])
    src = ScriptedSource()
    src.is_file = False
    src.steps = [lambda s_: time.sleep(5)]
    eng = E.Engine(s, src, NullMidiOut(s), transcriber=EnergyTranscriber(s))
    eng.start()
    eng.join(10)
    assert isinstance(eng.error, KkomaError) and "delivered nothing" in str(eng.error)


# ---- commands ---------------------------------------------------------------------------------------------------
def test_live_command_jsonl_and_stats(double, tone_file, tmp_path, capsys):
    ev, st = tmp_path / "ev.jsonl", tmp_path / "stats.json"
    assert main(["live", "--input", str(tone_file), "--speed", "max", "--no-midi", "--events-jsonl", str(ev),
                 "--stats-json", str(st)]) == 0
    err = capsys.readouterr().err
    assert "latency budget" in err and "hops" in err
    lines = read_jsonl(ev)
    assert [d["type"] for d in lines] == ["note_on", "note_off"] * 2
    for d, (a, b) in zip(lines[::2], BURSTS):
        assert d["pitch"] == C4 and 1 <= d["velocity"] <= 127 and abs(d["t_note"] - a) <= HOP_S + 1e-6
        assert d["t_emit"] >= d["t_note"]
    stats = json.loads(st.read_text())
    assert stats["latency_budget_ms"]["total_ms"] > 0
    for k in ("p50_ms", "p99_ms", "max_ms"):
        assert stats["hop_compute_ms"][k] >= 0
    assert stats["hops_processed"] > 0 and stats["overflows"]["ring_overflows"] == 0


def test_record_command_writes_midi_and_audio(double, tone_file, tmp_path):
    out, wav = tmp_path / "take.mid", tmp_path / "take.wav"
    assert main(["record", str(out), "--audio", str(wav), "--input", str(tone_file), "--speed", "max",
                 "--no-midi", "-q"]) == 0
    notes = read_midi(out)
    assert [n.pitch for n in notes] == [C4, C4]
    for n, (a, b) in zip(notes, BURSTS):
        assert abs(n.onset - a) <= HOP_S + 2e-3 and abs(n.offset - b) <= 2 * HOP_S + 2e-3
    info = sf.info(wav)
    assert info.samplerate == 44100 and info.channels == 1 and info.frames == 2 * 44100


def test_record_never_replaces_a_file_without_overwrite(double, tone_file, tmp_path, capsys):
    out, wav = tmp_path / "take.mid", tmp_path / "take.wav"
    for path in (out, wav):
        path.write_bytes(b"an earlier take")
        argv = ["record", str(out), "--audio", str(wav), "--input", str(tone_file), "--speed", "max", "--no-midi",
                "-q"]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"{path} already exists" in err and "--overwrite" in err and "Traceback" not in err
        assert path.read_bytes() == b"an earlier take"
        path.unlink()
    out.write_bytes(b"an earlier take")
    wav.write_bytes(b"an earlier take")
    assert main(argv + ["--overwrite"]) == 0
    assert [n.pitch for n in read_midi(out)] == [C4, C4] and sf.info(wav).frames == 2 * 44100


def test_duration_stops_early(double, tone_file, tmp_path):
    ev = tmp_path / "ev.jsonl"
    assert main(["live", "--input", str(tone_file), "--speed", "max", "--no-midi", "--duration", "0.5", "-q",
                 "--events-jsonl", str(ev)]) == 0
    lines = read_jsonl(ev)
    assert [d["type"] for d in lines] == ["note_on", "note_off"] and lines[1]["t_note"] <= 0.5 + 2 * HOP_S


@pytest.mark.parametrize("argv, message", [
    (["live", "--input", "/nonexistent/x.wav", "--no-midi"], "does not exist"),
    (["live", "--midi-api", "jack", "--input", "{tone}"], "JACK"),
    (["record", "{tmp}/no/such/dir/x.mid", "--input", "{tone}", "--no-midi"], "does not exist"),
    (["record", "{tmp}/x.txt", "--input", "{tone}", "--no-midi"], ".mid"),
    (["live", "--input", "{tone}", "--no-midi", "--synth", "{tmp}/none.sf2", "-q"], "soundfont"),
    (["live", "--input", "{tone}", "--no-midi", "--synth", "-q", "--set", "synth.driver=nosuch"],
     "FluidSynth cannot open an audio output"),
])
def test_faults_are_one_sentence_exit_1(double, tone_file, tmp_path, capsys, argv, message):
    argv = [a.format(tone=tone_file, tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("kkoma ")


def test_no_input_device_is_one_sentence(double, monkeypatch):
    import kkoma.realtime.audio_in as A

    monkeypatch.setattr(A, "input_devices", lambda: [])
    with pytest.raises(KkomaError, match="no audio input device"):
        A.resolve_device("")


def test_device_lost_mid_stream_keeps_the_recording(double, tone_file, tmp_path, monkeypatch, capsys):
    """A device that dies after 1 s: exit 1, one sentence, the notes so far are in the file."""
    import kkoma.realtime.audio_in as A

    class DyingInput(FileInput):
        is_file = False

        def __init__(self, settings, device=None, channels=None, sample_rate=None):
            super().__init__(settings, tone_file, speed="max")

        def _run(self):
            super()._run()
            self.finished = False  # a live device never "finishes"; it reports an error
            self.error = KkomaError("the audio input 'fake' stopped delivering audio (unplugged?).")

    monkeypatch.setattr(A, "AudioInput", DyingInput)
    out = tmp_path / "take.mid"
    assert main(["record", str(out), "--no-midi", "-q"]) == 1
    assert "unplugged" in capsys.readouterr().err
    assert [n.pitch for n in read_midi(out)] == [C4, C4]


def test_disk_full_while_recording(double, tone_file, tmp_path, monkeypatch, capsys):
    import os

    out = tmp_path / "take.mid"
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(["--set", "record.autosave_s=0.05", "record", str(out), "--input", str(tone_file), "--speed",
                 "realtime", "--no-midi", "-q", "--duration", "1.0"])
    monkeypatch.undo()
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    read_midi(out)  # still a valid file


def test_files_model_runs_beside_the_port(tone_file, tmp_path):
    """`kkoma record`'s files model has a thread of its own: here it holds its first sound until the live engine
    has sent every note of the file (on the processing thread that would never happen: the test would fail after
    30 s), and the file still gets all its notes, in order."""
    from kkoma.realtime.recorder import Recorder

    sent_all, threads, offs = threading.Event(), set(), []

    class Held(EnergyTranscriber):
        def process(self, block):
            if np.any(block):  # (the engine's warm-up feeds silence)
                threads.add(threading.current_thread().name)
                if not sent_all.wait(30):
                    raise AssertionError("the port's notes waited for the files model")
            return super().process(block)

    def on_event(e, t, v):
        offs.append(e) if e.kind == "off" else None
        if len(offs) == len(BURSTS):
            sent_all.set()

    sent = []
    with Recorder(tmp_path / "take.mid", S) as rec:
        eng = E.Engine(S, FileInput(S, tone_file, speed="max"), NullMidiOut(S), transcriber=EnergyTranscriber(S),
                       recorder=rec, file_transcriber=Held(S),
                       on_event=lambda e, t, v: (sent.append(e), on_event(e, t, v)))
        eng.start()
        eng.join(60)
        assert not eng.running and eng.error is None
        notes = rec.notes()
    # the same model both sides here: the file's notes are the port's, to the frame
    assert threads == {"kkoma-file-model"} and notes == events_to_notes(sent) and [n.pitch for n in notes] == [C4, C4]
    assert eng.report()["file_model"]["step_compute_ms"]["hops"] > 0


def test_a_dead_files_model_never_blocks_the_live_thread():
    """The files model's queue is full and its thread has died: the next step raises its error instead of waiting
    for room forever."""
    class Failing(EnergyTranscriber):
        def process(self, block):
            raise KkomaError("the files model failed.")

    w = E.FileWorker(Failing(S), lambda events, t: None, step_s=0.01, max_s=0.01)  # a queue of one step
    w.start()
    raised = []

    def feed():
        try:
            for i in range(10):
                w.put(np.ones(160, np.float32), 0.01 * i)
        except KkomaError as e:
            raised.append(e)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive() and len(raised) == 1 and "failed" in str(raised[0])
    assert w.join(5) and w.error is raised[0]


def test_files_model_slower_than_the_drain_time_says_so(double, tone_file, tmp_path, monkeypatch, capsys):
    """A files model still busy `record.files_drain_s` after the take ended: exit 1, one sentence that says how far
    the file goes; the file is valid."""
    release = threading.Event()

    class Slow(EnergyTranscriber):
        heard = False

        def process(self, block):
            self.heard |= bool(np.any(block))  # (the engine's warm-up feeds silence, and flushes)
            return super().process(block)

        def flush(self):
            if self.heard:
                release.wait(30)
            return super().flush()

    monkeypatch.setattr(E, "make_record_transcriber", Slow)
    out = tmp_path / "take.mid"
    try:
        code = main(["--set", "record.files_drain_s=0", "record", str(out), "--input", str(tone_file), "--speed",
                     "max", "--no-midi", "-q"])
    finally:
        release.set()
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record.files_drain_s" in err[0] and "up to 2.0 s" in err[0]
    read_midi(out)


def test_files_model_failure_is_one_sentence_and_keeps_the_take(double, tone_file, tmp_path, monkeypatch, capsys):
    """A files model that fails mid-take (on its own thread): exit 1, its one sentence, a valid file."""
    class Failing(EnergyTranscriber):
        def process(self, block):
            if np.any(block):
                raise KkomaError("the files model ran out of memory.")
            return super().process(block)

    monkeypatch.setattr(E, "make_record_transcriber", Failing)
    out = tmp_path / "take.mid"
    assert main(["record", str(out), "--input", str(tone_file), "--speed", "max", "--no-midi", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran out of memory" in err[0]
    read_midi(out)  # still a valid file


def test_files_model_option(double, tone_file, tmp_path, capsys):
    """`--files-model` names the file's model; with `--notes live` (the file gets the port's notes) it is an error."""
    out = tmp_path / "take.mid"
    argv = ["record", str(out), "--input", str(tone_file), "--speed", "max", "--no-midi", "-q"]
    assert main(argv + ["--notes", "live", "--files-model", "pitch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--files-model" in err[0] and "--notes live" in err[0]
    assert main(argv + ["--files-model", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_network_keys_of_set_tune_the_live_model_not_the_files_one(tmp_path):
    """In a session with two models, model.weights / model.ensemble / model.ensemble_weights of --set or --config go
    with --model to the live one; the file's model is --files-model's (or config.toml's), with every other key."""
    import dataclasses
    from types import SimpleNamespace

    from kkoma.realtime.cli import _file_settings

    over = ["model.ensemble_weights=[0.9, 0.1]", "tracker.min_ioi_ms=40.0"]
    live = load_settings(overrides=over, model="live-ensemble")
    args = SimpleNamespace(config=None, overrides=over, model="live-ensemble", files_model=None, notes="files")
    files = _file_settings(args, live)
    assert live.model.ensemble_weights == (0.9, 0.1)
    assert files == load_settings(overrides=["tracker.min_ioi_ms=40.0"], offline=True)
    # The same from a --config file.
    cfg = tmp_path / "mine.toml"
    cfg.write_text("[model]\nensemble_weights = [0.7, 0.3]\n")
    args = SimpleNamespace(config=str(cfg), overrides=[], model="live-ensemble", files_model=None, notes="files")
    live = load_settings(cfg, model="live-ensemble")
    files, want = _file_settings(args, live), load_settings(offline=True)
    assert live.model.ensemble_weights == (0.7, 0.3) and dataclasses.replace(files, source=want.source) == want


def test_devices_command_lists_without_failing(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "Audio inputs:" in out and "MIDI outputs:" in out


def test_real_pipeline_runs_live(tmp_path, tone_file):
    """Plumbing with the real Transcriber (tiny random weights unless shipped weights exist): runs, valid events."""
    pytest.importorskip("kkoma.models.pipeline")
    over = []
    if not S.model.weights_path.exists():
        from kkoma.models.inference import export_random_weights

        export_random_weights(tmp_path / "w.npz", S)
        over = ["--set", f"model.weights={tmp_path / 'w.npz'}"]
    ev, st = tmp_path / "ev.jsonl", tmp_path / "st.json"
    assert main([*over, "live", "--input", str(tone_file), "--speed", "max", "--no-midi", "-q",
                 "--events-jsonl", str(ev), "--stats-json", str(st)]) == 0
    stats = json.loads(st.read_text())
    assert stats["latency_budget_ms"]["model_lookahead_ms"] == pytest.approx(S.model_lookahead_ms)
    sounding = set()
    for d in read_jsonl(ev):
        assert 21 <= d["pitch"] <= 108
        if d["t_emit"] < stats["input_seconds"]:  # (the final flush closes notes after the input's end)
            assert d["t_emit"] >= d["t_note"] - 1e-9
        if d["type"] == "note_on":
            sounding.add(d["pitch"])
        else:
            assert d["pitch"] in sounding
            sounding.discard(d["pitch"])
    assert not sounding


@pytest.mark.parametrize("rate, model", [(16000, None), (48000, None), (44100, None), (44100, "live-ensemble")])
def test_live_and_offline_give_identical_notes(tmp_path, rate, model):
    """The live engine (hop-sized blocks from a device at ``rate``) and `kkoma transcribe` (big blocks) run the same
    resampler, CQT, model and tracker: on the bundled piece they give the same notes, to the frame. Real weights;
    also for the opt-in live ensemble (two networks, weighted)."""
    from kkoma.models.notes import events_to_notes
    from kkoma.offline.transcribe import transcribe_file

    s = S if model is None else load_settings(model=model)
    if not s.model.weights_path.exists():
        pytest.skip("no shipped weights")
    path = _example_at(rate, tmp_path)
    offline = [(n.pitch, round(n.onset, 6), round(n.offset, 6)) for n in transcribe_file(path, s).notes]
    midi = NullMidiOut(s)
    events = []
    eng = E.Engine(s, FileInput(s, path, speed="max"), midi, on_event=lambda e, t, v: events.append(e))
    eng.start()
    eng.join(120)
    assert eng.ended and eng.error is None
    live = [(n.pitch, round(n.onset, 6), round(n.offset, 6)) for n in events_to_notes(events)]
    assert len(offline) > 20  # the piece is transcribed at all
    assert live == offline


@pytest.mark.parametrize("where", ["open", "start"])
def test_device_busy_is_one_sentence_exit_1(double, monkeypatch, capsys, tmp_path, where):
    """PortAudio refusing a device another program holds (at open or at start): one sentence naming the device and
    the likely cause, exit 1, and the recording file (empty but valid) is kept."""
    import types

    import kkoma.realtime.audio_in as A

    class PortAudioError(Exception):
        pass

    busy = PortAudioError("Device unavailable [PaErrorCode -9985]")

    opened = []

    class Stream:
        def __init__(self, **kw):
            if where == "open":
                raise busy
            self.active = False
            self.closed = False
            opened.append(self)

        def start(self):
            raise busy

        def stop(self):
            pass

        def close(self):
            self.closed = True

    fake = types.SimpleNamespace(check_input_settings=lambda **kw: None, InputStream=Stream, PortAudioError=busy)
    monkeypatch.setattr(A, "_sd", lambda: fake)
    monkeypatch.setattr(A, "resolve_device", lambda spec: {"index": 3, "name": "USB Mic", "channels": 2,
                                                           "default_rate": 48000.0})
    out = tmp_path / "take.mid"
    assert main(["record", str(out), "--no-midi", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "USB Mic" in err[0] and "another program" in err[0] and "Device unavailable" in err[0]
    if out.exists():
        assert read_midi(out) == []
    assert all(s.closed for s in opened)  # a stream that failed to start is closed, not leaked


@pytest.mark.parametrize("rate", [16000, 44100])
def test_record_file_gets_the_files_models_notes(tmp_path, rate):
    """`kkoma record` runs the files model beside the live one on the same audio: the port gets the live notes, the
    file exactly what `kkoma transcribe` writes (the files model, its transform and tracker), to the frame;
    `--notes live` writes the port's notes instead. Real weights."""
    from kkoma.models.notes import write_midi
    from kkoma.offline.transcribe import transcribe_file

    files = load_settings(offline=True)
    if not (S.model.weights_path.exists() and files.model.weights_path.exists()):
        pytest.skip("no shipped weights")
    path = _example_at(rate, tmp_path)

    def key(notes):  # as a MIDI file holds them (times on its tick grid)
        write_midi(notes, tmp_path / "k.mid", S)
        return [(n.pitch, n.onset, n.offset) for n in read_midi(tmp_path / "k.mid")]

    out, ev, st = tmp_path / "take.mid", tmp_path / "ev.jsonl", tmp_path / "st.json"
    argv = ["record", str(out), "--input", str(path), "--speed", "max", "--no-midi", "-q", "--events-jsonl", str(ev)]
    assert main(argv + ["--stats-json", str(st)]) == 0
    want = key(transcribe_file(path, files).notes)
    assert len(want) > 20 and [(n.pitch, n.onset, n.offset) for n in read_midi(out)] == want
    sent = [(d["pitch"], d["t_note"]) for d in read_jsonl(ev) if d["type"] == "note_on"]
    live = transcribe_file(path, S).notes  # the live model's notes, which the port got
    assert sent == [(n.pitch, pytest.approx(n.onset, abs=1e-5)) for n in live]
    assert key(live) != want
    assert json.loads(st.read_text())["file_model"]["latency_budget_ms"]["transform_lookahead_ms"] > 200
    assert main(argv + ["--notes", "live", "--overwrite"]) == 0
    assert [(n.pitch, n.onset, n.offset) for n in read_midi(out)] == key(live)


def test_record_file_with_files_model_pitch(tmp_path):
    """`kkoma record --files-model pitch`: the file gets what `kkoma transcribe --model pitch` writes (a backward
    LSTM, seconds behind the port), the port still the live model's notes. Real weights."""
    from kkoma.models.notes import write_midi
    from kkoma.offline.transcribe import transcribe_file

    pitch = load_settings(model="pitch")
    if not (S.model.weights_path.exists() and pitch.model.weights_path.exists()):
        pytest.skip("no shipped weights")
    path = _example_at(16000, tmp_path)
    out, ev = tmp_path / "take.mid", tmp_path / "ev.jsonl"
    assert main(["record", str(out), "--input", str(path), "--speed", "max", "--no-midi", "-q", "--events-jsonl",
                 str(ev), "--files-model", "pitch"]) == 0
    write_midi(transcribe_file(path, pitch).notes, tmp_path / "want.mid", S)
    want = [(n.pitch, n.onset, n.offset) for n in read_midi(tmp_path / "want.mid")]
    assert len(want) > 20 and [(n.pitch, n.onset, n.offset) for n in read_midi(out)] == want
    sent = [(d["pitch"], d["t_note"]) for d in read_jsonl(ev) if d["type"] == "note_on"]
    assert sent == [(n.pitch, pytest.approx(n.onset, abs=1e-5)) for n in transcribe_file(path, S).notes]
