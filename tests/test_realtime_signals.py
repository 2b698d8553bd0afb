"""``kkoma record`` stopped by SIGINT, SIGTERM, SIGHUP and SIGKILL: the file on disk stays a valid MIDI file.

Each test runs ``kkoma record --input TONE --no-midi --speed realtime`` in a subprocess (with the EnergyTranscriber
double, tests/test_realtime_doubles.py, so no weights are needed), waits until the recording holds a note, sends
the signal, and reads the file. Waits are bounded; the subprocess is always killed at the end.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from test_realtime_doubles import C4, tone

from kkoma.models.errors import KkomaError
from kkoma.models.notes import read_midi

RUNNER = Path(__file__).with_name("test_realtime_doubles.py")
AUTOSAVE_S = 0.2
SR = 22050
# Notes every 0.5 s for 8 s: long enough that the signal always lands mid-stream.
BURSTS = [(0.2 + 0.5 * i, 0.45 + 0.5 * i) for i in range(16)]


@pytest.fixture
def tone_file(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(8.5, SR, BURSTS), SR)
    return path


def start(tmp_path, tone_file):
    out, ev = tmp_path / "take.mid", tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), "--set", f"record.autosave_s={AUTOSAVE_S}", "record", str(out),
         "--input", str(tone_file), "--no-midi", "--speed", "realtime", "-q", "--events-jsonl", str(ev)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out, ev


def wait_for_notes(proc, out, n, timeout=30.0):
    """Until the file on disk holds n notes (reading it while it is being rewritten must always work)."""
    t_end = time.monotonic() + timeout
    reads = 0
    while time.monotonic() < t_end:
        assert proc.poll() is None, proc.communicate()
        if out.exists():
            notes = read_midi(out)  # raises if the file were ever invalid
            reads += 1
            if len(notes) >= n:
                return notes, reads
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"the recording did not reach {n} notes in {timeout} s")


def finish(proc, timeout=20.0):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("kkoma record did not exit after the signal")
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_finalises_the_recording(tmp_path, tone_file, sig):
    proc, out, ev = start(tmp_path, tone_file)
    try:
        _, reads = wait_for_notes(proc, out, 2)
        time.sleep(0.1)
        proc.send_signal(sig)
        code, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    notes = read_midi(out)
    events = [json.loads(line) for line in open(ev)]
    ons = [e for e in events if e["type"] == "note_on"]
    offs = [e for e in events if e["type"] == "note_off"]
    # every note sent is in the file, and every note-on got its note-off (the flush at the signal)
    assert len(ons) == len(offs) == len(notes) >= 2
    for n, e in zip(notes, ons):
        assert n.pitch == C4 and abs(n.onset - e["t_note"]) < 2e-3
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_sigkill_loses_at_most_the_last_autosave_interval(tmp_path, tone_file):
    proc, out, ev = start(tmp_path, tone_file)
    try:
        wait_for_notes(proc, out, 3)
        time.sleep(0.57)  # somewhere between two autosaves
        proc.kill()
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        notes = read_midi(out)
    except KkomaError as e:  # pragma: no cover - the point of the test
        pytest.fail(f"the file is not a valid MIDI file after SIGKILL: {e}")
    events = [json.loads(line) for line in open(ev) if line.endswith("\n")]
    last_emit = max(e["t_emit"] for e in events)
    # Realtime pace: the sample clock runs with the wall clock, so everything sent more than one autosave interval
    # (plus a generous margin for a loaded machine) before the kill must be on disk.
    must_have = [e for e in events if e["type"] == "note_on" and e["t_emit"] < last_emit - AUTOSAVE_S - 0.5]
    onsets = [n.onset for n in notes]
    assert len(notes) >= len(must_have) >= 1
    for e in must_have:
        assert any(abs(o - e["t_note"]) < 2e-3 for o in onsets)
    assert all(n.offset > n.onset for n in notes)
