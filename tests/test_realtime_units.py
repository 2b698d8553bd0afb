"""Ring buffer, MIDI output helpers and the recorder, without audio devices."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kkoma.models.errors import KkomaError
from kkoma.models.notes import NoteEvent, read_midi
from kkoma.models.settings import load_settings
from kkoma.realtime.midi_out import NullMidiOut, find_port, velocity_curve
from kkoma.realtime.recorder import Recorder
from kkoma.realtime.ringbuffer import RingBuffer

S = load_settings()


# ---- ring buffer ------------------------------------------------------------------------------------------------
def test_ring_wraps_and_keeps_order():
    r = RingBuffer(10, 2)
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    assert r.write(x) == 7
    assert np.array_equal(r.read(5), x[:5])
    assert r.write(x) == 7  # wraps around the end
    out = np.zeros((9, 2), np.float32)
    got = r.read(9, out=out)
    assert got.base is out or got is out
    assert np.array_equal(got, np.concatenate([x[5:], x]))
    assert r.available == 0 and r.overflows == 0


def test_ring_overflow_drops_counts_and_logs_gap():
    r = RingBuffer(8, 1)
    assert r.write(np.ones(6, np.float32)) == 6
    assert r.write(np.full(5, 2, np.float32)) == 2  # 3 dropped
    assert r.write(np.full(4, 3, np.float32)) == 0  # the same gap grows
    assert (r.overflows, r.dropped) == (2, 7)
    assert r.dropped_before(0) == 0
    assert np.array_equal(r.read(8)[:, 0], [1] * 6 + [2] * 2)
    assert r.dropped_before(8) == 7
    r.write(np.zeros(3, np.float32))
    r.write(np.zeros(9, np.float32))  # a second gap at position 16
    assert r.dropped_before(8) == 7 and r.read(8).shape == (8, 1) and r.dropped_before(16) == 11


def test_ring_write_never_raises():
    r = RingBuffer(4, 2)
    assert r.write(np.zeros((3, 5), np.float32)) == 0  # wrong channel count: counted, not raised
    assert r.overflows == 1


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 13)), max_size=40))
def test_ring_matches_a_reference_queue(ops):
    """Any sequence of writes and reads gives the samples a plain list would (minus the drops), in order."""
    r = RingBuffer(9, 1)
    ref: list[float] = []
    counter = 0
    dropped = 0
    for is_write, n in ops:
        if is_write:
            block = np.arange(counter, counter + n, dtype=np.float32)
            counter += n
            took = r.write(block)
            assert took == min(n, 9 - len(ref))
            ref.extend(block[:took].tolist())
            dropped += n - took
        else:
            n = min(n, len(ref))
            assert r.read(n)[:, 0].tolist() == ref[:n]
            del ref[:n]
    assert r.available == len(ref) and r.dropped == dropped


def test_ring_threads_producer_consumer():
    """A producer thread and a consumer: everything read is the producer's ramp, gaps exactly where logged."""
    r = RingBuffer(256, 1)
    total = 200_000
    done = threading.Event()

    def produce():
        i = 0
        while i < total:
            n = min(64, total - i)
            r.write(np.arange(i, i + n, dtype=np.float64).astype(np.float32))
            i += n
            if i % 4096 == 0:
                threading.Event().wait(0.0005)
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    got = []
    while not (done.is_set() and r.available == 0):
        n = r.available
        if n:
            pos = r.read_pos
            x = r.read(n)[:, 0].astype(np.int64)
            got.append((pos, x))
    th.join()
    # The sample consumed at stream position p is the producer's sample p + (samples dropped before p).
    stream = np.concatenate([x for _, x in got])
    assert got[0][0] == 0 and len(stream) == r.read_pos
    expected = np.array([p + r.dropped_before(p) for p in range(len(stream))])
    assert np.array_equal(stream, expected)
    seen = len(stream)
    assert seen + r.dropped == total


# ---- MIDI helpers -----------------------------------------------------------------------------------------------
def test_velocity_curve_ends_and_gamma():
    assert velocity_curve(1, S) == S.midi.velocity_min and velocity_curve(127, S) == S.midi.velocity_max
    soft = load_settings(overrides=["midi.velocity_gamma=2.0", "midi.velocity_min=10", "midi.velocity_max=100"])
    assert velocity_curve(1, soft) == 10 and velocity_curve(127, soft) == 100
    assert velocity_curve(64, soft) < velocity_curve(64, S)
    assert all(1 <= velocity_curve(v, soft) <= 127 for v in range(0, 200))


def test_find_port_exact_partial_and_errors():
    ports = ["Midi Through:Midi Through Port-0 14:0", "FLUID Synth (1234):Synth input port 128:0", "kkoma"]
    assert find_port(ports, "fluid") == 1
    assert find_port(ports, "kkoma") == 2
    with pytest.raises(KkomaError, match="available ports are: Midi Through"):
        find_port(ports, "yamaha")
    with pytest.raises(KkomaError, match="several"):
        find_port(ports, "port")
    with pytest.raises(KkomaError, match="none"):
        find_port([], "x")


def test_null_midi_tracks_sounding():
    m = NullMidiOut(S)
    with m:
        m.send_event(NoteEvent("on", 60, 100, 0, 0.0))
        assert m.sounding == {60}
    assert m.sounding == set()


def test_unavailable_midi_api_is_one_sentence():
    from kkoma.realtime.midi_out import MidiOut, compiled_apis

    if "alsa" in compiled_apis():
        import os
        if not os.path.exists("/dev/snd/seq"):
            with pytest.raises(KkomaError, match="ALSA sequencer.*--no-midi"):
                MidiOut(S, api="alsa")


# ---- recorder ---------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_recorder_file_valid_from_the_start_and_autosaves(tmp_path):
    clock = Clock()
    path = tmp_path / "r.mid"
    rec = Recorder(path, S, clock=clock)
    assert read_midi(path) == []  # valid (empty) at once
    rec.add([NoteEvent("on", 60, 90, 50, 0.5)], now=0.6)
    assert not rec.autosave()  # interval not over
    clock.t = S.record.autosave_s
    assert rec.autosave()
    notes = read_midi(path)
    assert [(n.pitch, n.velocity) for n in notes] == [(60, 90)]
    assert notes[0].onset == pytest.approx(0.5, abs=2e-3) and notes[0].offset == pytest.approx(0.6, abs=2e-3)
    rec.add([NoteEvent("off", 60, 0, 120, 1.2)], now=1.3)
    rec.close()
    notes = read_midi(path)
    assert notes[0].offset == pytest.approx(1.2, abs=2e-3)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_recorder_disk_full_keeps_previous_file(tmp_path, monkeypatch):
    import os

    clock = Clock()
    path = tmp_path / "r.mid"
    rec = Recorder(path, S, clock=clock)
    rec.add([NoteEvent("on", 62, 80, 10, 0.1), NoteEvent("off", 62, 0, 30, 0.3)], now=0.4)
    clock.t = 10
    rec.autosave()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rec.add([NoteEvent("on", 64, 80, 50, 0.5)], now=0.6)
    clock.t = 20
    with pytest.raises(KkomaError, match="No space left on device"):
        rec.autosave()
    monkeypatch.undo()
    assert [n.pitch for n in read_midi(path)] == [62]  # the last good file is intact
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_recorder_missing_folder(tmp_path):
    with pytest.raises(KkomaError, match="does not exist"):
        Recorder(tmp_path / "no" / "r.mid", S)


def test_hop_stats_are_bounded_and_accurate():
    """Per-hop statistics keep constant memory over any session and read percentiles within one bin (1.2 %)."""
    from kkoma.realtime.engine import HopStats

    h = HopStats()
    size = h.counts.nbytes
    x = np.random.default_rng(0).lognormal(-8, 0.7, 50_000)
    for v in x:
        h.add(float(v))
    assert h.counts.nbytes == size and h.hops == len(x) and h.last == x[-1]
    s = h.summary()
    for q, key in ((50, "p50_ms"), (99, "p99_ms")):
        exact = 1000 * np.percentile(x, q)
        assert exact <= s[key] <= exact * 1.012 + 1e-9
    assert s["max_ms"] == pytest.approx(1000 * x.max())
    assert s["mean_ms"] == pytest.approx(1000 * x.mean())
