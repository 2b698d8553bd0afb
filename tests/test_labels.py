"""Frame labels from notes: onset frame, sustain-extended frames, offsets, velocity (offline/labels.py)."""
from __future__ import annotations

import mido
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kkoma.models.notes import Note, read_midi
from kkoma.offline.labels import crop_notes, note_labels, piano_notes, scale_times, time_to_frame

FR = 100.0  # frames per second of the default settings (16 kHz, hop 160)


def test_default_frame_rate_is_what_these_tests_assume():
    from kkoma.models.settings import load_settings

    assert load_settings().audio.frame_rate == FR


def test_onset_frame_offset_and_velocity():
    lab = note_labels([Note(60, 1.004, 1.5, 80)], 300, FR)
    k = 60 - 21
    assert set(lab) == {"onset", "frame", "offset", "velocity"}
    assert all(v.shape == (300, 88) and v.dtype == np.uint8 for v in lab.values())
    assert np.flatnonzero(lab["onset"][:, k]).tolist() == [100]  # 1.004 s -> nearest frame 100
    assert np.flatnonzero(lab["frame"][:, k]).tolist() == list(range(100, 150))
    assert np.flatnonzero(lab["offset"][:, k]).tolist() == [150]
    assert lab["velocity"][100, k] == 80 and lab["velocity"].sum() == 80
    assert lab["onset"].sum() == 1 and lab["frame"][:, np.arange(88) != k].sum() == 0


def test_frame_is_nearest_frame_on_the_i_times_hop_grid():
    assert time_to_frame(0.0149, FR) == 1 and time_to_frame(0.0151, FR) == 2
    lab = note_labels([Note(21, 0.0151, 0.02, 10), Note(108, 0.0, 0.001, 127)], 10, FR)
    assert lab["onset"][2, 0] == 1 and lab["onset"][0, 87] == 1
    # a note shorter than a frame still has its onset frame marked as sounding
    assert lab["frame"][0, 87] == 1 and lab["frame"][:, 87].sum() == 1


def test_pedal_extension_from_a_midi_file(tmp_path):
    # key held 0.5-0.7 s, pedal down at 0.6 s and up at 1.2 s: the note sounds (and is labelled) until 1.2 s
    mid = mido.MidiFile(ticks_per_beat=1000)  # 120 bpm default tempo: 1 tick = 0.5 ms
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr += [mido.Message("note_on", note=64, velocity=90, time=1000),
           mido.Message("control_change", control=64, value=127, time=200),
           mido.Message("note_off", note=64, velocity=0, time=200),
           mido.Message("control_change", control=64, value=0, time=1000)]
    path = tmp_path / "pedal.mid"
    mid.save(path)
    notes = read_midi(path, sustain=True)
    assert len(notes) == 1 and notes[0].offset == pytest.approx(1.2)
    lab = note_labels(notes, 200, FR)
    k = 64 - 21
    assert np.flatnonzero(lab["frame"][:, k]).tolist() == list(range(50, 120))
    assert np.flatnonzero(lab["offset"][:, k]).tolist() == [120]
    dry = note_labels(read_midi(path, sustain=False), 200, FR)
    assert np.flatnonzero(dry["frame"][:, k]).tolist() == list(range(50, 70))


def test_two_onsets_in_one_frame_keep_the_louder_velocity_and_restrike_is_contiguous():
    lab = note_labels([Note(60, 0.100, 0.3, 40), Note(60, 0.102, 0.3, 100)], 50, FR)
    assert lab["onset"][10, 39] == 1 and lab["velocity"][10, 39] == 100
    lab = note_labels([Note(60, 0.1, 0.2, 50), Note(60, 0.2, 0.3, 60)], 50, FR)
    assert np.flatnonzero(lab["onset"][:, 39]).tolist() == [10, 20]
    assert np.flatnonzero(lab["frame"][:, 39]).tolist() == list(range(10, 30))


def test_out_of_range_pitches_and_late_notes_are_ignored_and_offsets_clipped():
    notes = [Note(20, 0.1, 0.2, 50), Note(109, 0.1, 0.2, 50), Note(60, 0.5, 9.0, 50), Note(61, 0.999, 2.0, 50)]
    lab = note_labels(notes, 100, FR)  # frames 0..99: 0.995 s rounds to frame 100, outside
    assert lab["onset"].sum() == 1
    assert lab["frame"][:, 39].sum() == 50 and lab["offset"].sum() == 0
    assert note_labels([], 0, FR)["frame"].shape == (0, 88)


def test_crop_scale_and_piano_notes():
    notes = [Note(60, 0.0, 5.0, 50), Note(62, 2.0, 2.5, 60), Note(10, 0.0, 1.0, 5)]
    assert crop_notes(notes, 2.0) == [Note(60, 0.0, 2.0, 50), Note(10, 0.0, 1.0, 5)]
    assert scale_times(notes[:1], 0.5) == [Note(60, 0.0, 2.5, 50)]
    assert piano_notes(notes) == notes[:2]



@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(21, 108), st.integers(1, 60), st.integers(1, 40), st.integers(1, 127)),
                max_size=40))
def test_label_notes_reads_back_notes_that_do_not_overlap_on_their_key(raw):
    """label_notes(note_labels(notes)) == the notes on the frame grid, when no two notes of a key overlap or touch
    (each key's notes laid end to end with gaps)."""
    from kkoma.offline.labels import label_notes

    n = 2000
    cursor: dict[int, int] = {}
    notes = []
    for pitch, gap, dur, vel in raw:
        on = cursor.get(pitch, 0) + gap
        if on + dur >= n:
            continue
        notes.append(Note(pitch, on / FR, (on + dur) / FR, vel))
        cursor[pitch] = on + dur
    lab = note_labels(notes, n, FR)
    got = label_notes(lab["onset"], lab["frame"], lab["velocity"], FR)
    want = sorted(notes, key=lambda x: (x.onset, x.pitch))
    assert [(g.pitch, round(g.onset * FR), round(g.offset * FR), g.velocity) for g in got] == \
        [(w.pitch, round(w.onset * FR), round(w.offset * FR), w.velocity) for w in want]


def test_label_notes_cuts_a_note_at_the_next_onset_of_its_key():
    """A key struck again while its first note still sounds (the pedal): the labels show one frame run with two
    onsets, read back as two notes, the first ending at the second's onset; a run ending at the piece's end ends
    there."""
    from kkoma.offline.labels import label_notes

    notes = [Note(60, 0.10, 0.80, 70), Note(60, 0.40, 1.00, 90), Note(64, 0.50, 5.0, 50)]
    lab = note_labels(notes, 150, FR)
    got = label_notes(lab["onset"], lab["frame"], lab["velocity"], FR)
    assert [(g.pitch, round(g.onset * FR), round(g.offset * FR), g.velocity) for g in got] == \
        [(60, 10, 40, 70), (60, 40, 100, 90), (64, 50, 150, 50)]
