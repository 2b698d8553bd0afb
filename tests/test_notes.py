"""Notes, events and MIDI files: writer round trip, atomic writes, sustain pedal, errors."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import mido
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kkoma.models.errors import KkomaError
from kkoma.models.notes import (
    Note,
    NoteEvent,
    events_to_notes,
    notes_to_arrays,
    notes_to_midifile,
    read_midi,
    write_midi,
)
from kkoma.models.settings import load_settings

S = load_settings()
REPO = Path(__file__).resolve().parent.parent


def tick_seconds(s):
    return round(60_000_000 / s.record.tempo_bpm) / 1e6 / s.record.ticks_per_beat


def test_module_imports_cheaply():
    code = "import sys, models.notes, models.tracker; print('mido' in sys.modules, 'pretty_midi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.split() == ["False", "False"]


def test_dataclasses_are_frozen():
    n = Note(60, 0.5, 1.25, 80)
    assert n.duration == pytest.approx(0.75)
    with pytest.raises(Exception):
        n.pitch = 61
    with pytest.raises(Exception):
        NoteEvent("on", 60, 80, 3, 0.03).frame = 4


# ---------------------------------------------------------------------------------------------------------------
# events_to_notes / notes_to_arrays
# ---------------------------------------------------------------------------------------------------------------
def test_events_to_notes_pairs_and_sorts():
    e = [NoteEvent("on", 64, 90, 5, 0.05), NoteEvent("on", 60, 70, 5, 0.05), NoteEvent("off", 64, 0, 20, 0.2),
         NoteEvent("off", 61, 0, 21, 0.21),                          # no note-on: ignored
         NoteEvent("on", 60, 50, 30, 0.3),                           # re-strike: ends the note-on at 0.05
         NoteEvent("off", 60, 0, 40, 0.4), NoteEvent("on", 72, 100, 50, 0.5)]
    assert events_to_notes(e) == [Note(60, 0.05, 0.3, 70), Note(64, 0.05, 0.2, 90), Note(60, 0.3, 0.4, 50)]
    assert events_to_notes(e, close_at=0.9)[-1] == Note(72, 0.5, 0.9, 100)
    with pytest.raises(ValueError):
        events_to_notes([NoteEvent("up", 60, 1, 0, 0.0)])


def test_notes_to_arrays():
    iv, hz, vel = notes_to_arrays([Note(69, 1.0, 2.0, 100), Note(81, 0.5, 0.75, 1)])
    assert iv.shape == (2, 2) and iv.dtype == np.float64
    np.testing.assert_allclose(iv, [[1.0, 2.0], [0.5, 0.75]])
    np.testing.assert_allclose(hz, [440.0, 880.0])
    np.testing.assert_array_equal(vel, [100, 1])
    iv, hz, vel = notes_to_arrays([])
    assert iv.shape == (0, 2) and hz.shape == (0,) and vel.shape == (0,)
    # a note that does not last is scored as 1 ms long (mir_eval rejects intervals that do not move forward)
    iv, _, _ = notes_to_arrays([Note(60, 1.0, 1.0, 64), Note(61, 2.0, 2.0005, 64)])
    np.testing.assert_allclose(iv, [[1.0, 1.001], [2.0, 2.001]])


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def test_midifile_layout():
    s = load_settings(overrides=["midi.channel=10", "record.tempo_bpm=100", "record.ticks_per_beat=96"])
    mid = notes_to_midifile([Note(60, 0.0, 0.6, 80), Note(60, 0.6, 1.2, 90), Note(62, 0.6, 0.9, 1)], s)
    assert mid.type == 0 and len(mid.tracks) == 1 and mid.ticks_per_beat == 96
    tempos = [m.tempo for m in mid.tracks[0] if m.type == "set_tempo"]
    assert tempos == [600_000]
    notes = [m for m in mid.tracks[0] if m.type in ("note_on", "note_off")]
    assert {m.channel for m in notes} == {9}
    # 0.6 s at 100 bpm, 96 tpb = 96 ticks; at that tick the note-off comes before both note-ons
    ticks, t = [], 0
    for m in notes:
        t += m.time
        ticks.append((t, m.type, m.note))
    assert ticks == [(0, "note_on", 60), (96, "note_off", 60), (96, "note_on", 60), (96, "note_on", 62),
                     (144, "note_off", 62), (192, "note_off", 60)]


def test_overlapping_same_pitch_notes_become_restrikes(tmp_path):
    notes = [Note(60, 0.0, 2.0, 80), Note(60, 1.0, 3.0, 90),       # overlap: the first ends at 1.0
             Note(62, 0.5, 1.0, 50), Note(62, 0.5, 1.5, 70),       # same onset: merged (longest, loudest)
             Note(64, 0.25, 0.25, 60)]                             # zero length: one tick
    path = tmp_path / "o.mid"
    write_midi(notes, path, S)
    back = read_midi(path, sustain=False)
    tick = tick_seconds(S)
    got = [(n.pitch, n.onset, n.offset, n.velocity) for n in back]
    want = [(60, 0.0, 1.0, 80), (64, 0.25, 0.25 + tick, 60), (62, 0.5, 1.5, 70), (60, 1.0, 3.0, 90)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and g[3] == w[3]
        assert g[1] == pytest.approx(w[1], abs=1e-9) and g[2] == pytest.approx(w[2], abs=1e-9)
    # never two sounding notes of one pitch: note-ons and note-offs alternate per pitch
    on = {}
    for m in mido.MidiFile(path):
        if m.type in ("note_on", "note_off"):
            is_on = m.type == "note_on" and m.velocity > 0
            assert on.get(m.note, False) != is_on
            on[m.note] = is_on


@st.composite
def note_lists(draw):
    notes = []
    for pitch in draw(st.lists(st.integers(21, 108), max_size=12, unique=True)):
        t = draw(st.floats(0.0, 5.0))
        for _ in range(draw(st.integers(1, 4))):
            dur = draw(st.floats(0.025, 3.0))
            notes.append(Note(pitch, t, t + dur, draw(st.integers(1, 127))))
            t += dur + draw(st.sampled_from([0.0, draw(st.floats(0.0, 2.0))]))
    return notes


WRITE_SETTINGS = [load_settings(overrides=o) for o in (
    [], ["record.tempo_bpm=77.7", "record.ticks_per_beat=96"], ["record.tempo_bpm=200", "record.ticks_per_beat=960"],
    ["record.tempo_bpm=60", "record.ticks_per_beat=100", "midi.channel=16"])]


@hsettings(max_examples=40, deadline=None)
@given(note_lists(), st.sampled_from(range(len(WRITE_SETTINGS))))
def test_write_then_read_round_trip_within_one_tick(tmp_path_factory, notes, which):
    s = WRITE_SETTINGS[which]
    path = tmp_path_factory.mktemp("rt") / "x.mid"
    write_midi(notes, path, s)
    back = read_midi(path, sustain=False)
    assert read_midi(path, sustain=True) == back  # no pedal in the file: the same notes
    tick = tick_seconds(s)
    assert back == sorted(back, key=lambda n: (n.onset, n.pitch, n.offset))
    # compared per pitch (within a pitch the notes do not overlap, so their order is the same on ticks)
    back = sorted(back, key=lambda n: (n.pitch, n.onset))
    want = sorted(notes, key=lambda n: (n.pitch, n.onset))
    assert len(back) == len(want)
    for b, w in zip(back, want):
        assert b.pitch == w.pitch and b.velocity == w.velocity
        assert abs(b.onset - w.onset) <= tick and abs(b.offset - w.offset) <= tick
    assert os.listdir(path.parent) == ["x.mid"], "no temporary file is left behind"


def test_write_replaces_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "take.mid"
    write_midi([Note(60, 0.0, 1.0, 64)], path, S)
    write_midi([Note(62, 0.0, 1.0, 64)], path, S)
    assert [n.pitch for n in read_midi(path)] == [62]
    before = path.read_bytes()

    def broken_save(self, filename=None, file=None):
        file.write(b"MThd\x00\x00")  # half a header, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mido.MidiFile, "save", broken_save)
    with pytest.raises(KkomaError, match="cannot write MIDI file .*take.mid: No space left on device"):
        write_midi([Note(64, 0.0, 1.0, 64)], path, S)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["take.mid"]


def test_file_is_complete_whenever_a_reader_looks(tmp_path):
    """A reader polling the file while it is rewritten again and again only ever sees complete files."""
    path = tmp_path / "live.mid"
    sets = [[Note(21 + (i + j) % 88, 0.1 * j, 0.1 * j + 0.5, 1 + j) for j in range(i % 7 + 1)] for i in range(40)]
    write_midi(sets[0], path, S)
    def key(notes):
        return tuple(sorted((n.pitch, n.velocity) for n in notes))

    valid = {key(x) for x in sets}
    done = threading.Event()
    errors = []

    def writer():
        try:
            for x in sets:
                write_midi(x, path, S)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    th = threading.Thread(target=writer)
    th.start()
    reads = 0
    while not done.is_set() or reads == 0:
        got = read_midi(path)  # raises KkomaError if it ever saw a partial file
        assert key(got) in valid
        reads += 1
    th.join()
    assert not errors and reads > 0


def test_write_into_missing_or_unwritable_folder_raises_one_sentence(tmp_path):
    with pytest.raises(KkomaError, match=r"folder .*nope does not exist\.$"):
        write_midi([], tmp_path / "nope" / "a.mid", S)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KkomaError, match="cannot write MIDI file"):
        write_midi([], blocker / "a.mid", S)  # a file where a folder should be (fails even for root)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(KkomaError, match="cannot write MIDI file"):
                write_midi([], ro / "a.mid", S)
        finally:
            ro.chmod(0o700)


def test_empty_note_list_gives_a_valid_file(tmp_path):
    path = tmp_path / "empty.mid"
    write_midi([], path, S)
    assert read_midi(path) == []


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
TPB = 480  # with the default tempo (500000 us per beat) one second is 960 ticks


def make_file(path, events, tempo=500_000, type_=0):
    """Write a file from ``(seconds, message)`` pairs at 120 bpm."""
    mid = mido.MidiFile(type=type_, ticks_per_beat=TPB)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    last = 0
    for sec, msg in sorted(events, key=lambda x: x[0]):
        tick = round(sec * 960)
        track.append(msg.copy(time=tick - last))
        last = tick
    mid.tracks.append(track)
    mid.save(path)
    return path


def on(note, vel=80, ch=0):
    return mido.Message("note_on", note=note, velocity=vel, channel=ch)


def off(note, ch=0, zero_velocity_on=False):
    if zero_velocity_on:
        return mido.Message("note_on", note=note, velocity=0, channel=ch)
    return mido.Message("note_off", note=note, velocity=64, channel=ch)


def pedal(value, ch=0):
    return mido.Message("control_change", control=64, value=value, channel=ch)


def test_sustain_pedal_extends_notes_to_the_release(tmp_path):
    path = make_file(tmp_path / "ped.mid", [
        (0.00, on(48)), (0.20, off(48)),                 # released before the pedal: not extended
        (0.10, on(60)), (0.50, off(60)),                 # released under the pedal: sounds until 2.0
        (0.25, pedal(100)),
        (0.30, on(62)), (0.40, off(62, zero_velocity_on=True)),
        (1.00, on(62, 90)), (1.20, off(62)),             # re-struck under the pedal: the first 62 ends at 1.0
        (1.50, on(64)), (2.50, off(64)),                 # still held when the pedal rises: ends at its own off
        (0.60, on(65, ch=1)), (0.70, off(65, ch=1)),     # another channel: its pedal is up
        (2.00, pedal(0)),
        (2.10, on(67)), (2.20, off(67)),                 # after the release: not extended
        (3.00, pedal(127)), (3.10, on(69)), (3.20, off(69)),  # pedal never released: ends at the end of the file
        (4.00, mido.Message("control_change", control=7, value=3)),
    ])
    want = [(48, 0.0, 0.2), (60, 0.1, 2.0), (62, 0.3, 1.0), (65, 0.6, 0.7), (62, 1.0, 2.0), (64, 1.5, 2.5),
            (67, 2.1, 2.2), (69, 3.1, 4.0)]
    got = read_midi(path)
    assert [n.pitch for n in got] == [w[0] for w in want]
    for n, (p, a, b) in zip(got, want):
        assert n.onset == pytest.approx(a) and n.offset == pytest.approx(b), (p, n)
    assert got[4].velocity == 90 and got[2].velocity == 80
    raw = read_midi(path, sustain=False)
    assert [(n.pitch, round(n.onset, 3), round(n.offset, 3)) for n in raw] == [
        (48, 0.0, 0.2), (60, 0.1, 0.5), (62, 0.3, 0.4), (65, 0.6, 0.7), (62, 1.0, 1.2), (64, 1.5, 2.5),
        (67, 2.1, 2.2), (69, 3.1, 3.2)]


def test_restrike_written_on_before_off_on_one_tick(tmp_path):
    # Some writers put the new note-on before the old note-off at the same tick; the off belongs to the old note.
    mid = mido.MidiFile(type=0, ticks_per_beat=TPB)
    mid.tracks.append(mido.MidiTrack([on(60).copy(time=0), on(60).copy(time=960), off(60).copy(time=0),
                                      off(60).copy(time=960)]))
    mid.save(tmp_path / "r.mid")
    got = [(n.pitch, n.onset, n.offset) for n in read_midi(tmp_path / "r.mid")]
    assert got == [(60, 0.0, 1.0), (60, 1.0, 2.0)]


def test_tempo_changes_across_tracks_are_honoured(tmp_path):
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    mid.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0),
                                      mido.MetaMessage("set_tempo", tempo=1_000_000, time=480)]))
    # note at beat 1 (0.5 s) lasting one beat at the new tempo (1 s)
    mid.tracks.append(mido.MidiTrack([on(70).copy(time=480), off(70).copy(time=480)]))
    mid.save(tmp_path / "t.mid")
    (n,) = read_midi(tmp_path / "t.mid")
    assert n.onset == pytest.approx(0.5) and n.offset == pytest.approx(1.5)


def test_unreadable_files_raise_kkoma_error_naming_the_file(tmp_path):
    with pytest.raises(KkomaError, match="missing.mid does not exist"):
        read_midi(tmp_path / "missing.mid")
    bad = tmp_path / "garbage.mid"
    bad.write_bytes(b"this is not a midi file at all")
    with pytest.raises(KkomaError, match="garbage.mid is not a valid MIDI file"):
        read_midi(bad)
    good = tmp_path / "good.mid"
    write_midi([Note(60, 0.0, 1.0, 64), Note(62, 1.0, 2.0, 64)], good, S)
    cut = tmp_path / "cut.mid"
    cut.write_bytes(good.read_bytes()[:30])
    with pytest.raises(KkomaError, match="cut.mid"):
        read_midi(cut)
    with pytest.raises(KkomaError, match="is a folder"):
        read_midi(tmp_path)
