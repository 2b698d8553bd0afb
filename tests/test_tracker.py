"""Note tracker: hand-made cases for each rule, and property tests on random probability streams (docs/design.md §4)."""
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI, NoteEvent, events_to_notes
from kkoma.models.settings import load_settings
from kkoma.models.tracker import NoteTracker

# The hand-made cases below are written for these thresholds; the shipped defaults are tuned per model.
S = load_settings(overrides=["tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3",
                             "tracker.offset_hold_ms=0"])
FR = S.audio.frame_rate


def zeros(n):
    return np.zeros((n, N_KEYS), np.float32)


def run(tracker, onset, frame, velocity=None, chunks=None):
    """Feed a whole stream (optionally in the given chunk sizes) and flush."""
    velocity = np.full_like(onset, 0.5) if velocity is None else velocity
    events, i = [], 0
    for c in (chunks or [len(onset)]):
        events += tracker.process(onset[i:i + c], frame[i:i + c], velocity[i:i + c])
        i += c
    assert i == len(onset)
    return events + tracker.flush()


def ev(kind, midi, frame, velocity=0):
    return NoteEvent(kind, midi, velocity, frame, frame / FR)


# ---------------------------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------------------------
def test_single_note_times_and_velocity():
    on, fr, vel = zeros(50), zeros(50), zeros(50)
    p = 60 - PIANO_MIN_MIDI
    on[10, p] = 0.9
    on[11, p] = 0.7  # still above: the same onset, not a new one
    fr[10:30, p] = 0.8
    vel[10, p] = 0.5
    vel[11, p] = 1.0  # velocity is taken at the onset frame only
    events = run(NoteTracker(S), on, fr, vel)
    assert events == [ev("on", 60, 10, 64), ev("off", 60, 30)]
    assert events[0].time == pytest.approx(0.1) and events[1].time == pytest.approx(0.3)
    notes = events_to_notes(events)
    assert len(notes) == 1 and notes[0].pitch == 60 and notes[0].velocity == 64
    assert notes[0].onset == pytest.approx(0.1) and notes[0].offset == pytest.approx(0.3)


@pytest.mark.parametrize("v, expected", [(0.0, 1), (0.001, 1), (1 / 127, 1), (0.5, 64), (0.999, 127), (1.0, 127)])
def test_velocity_mapping(v, expected):
    on, fr, vel = zeros(5), zeros(5), zeros(5)
    on[1, 0], fr[1:3, 0], vel[1, 0] = 1.0, 1.0, v
    events = run(NoteTracker(S), on, fr, vel)
    assert events[0].kind == "on" and events[0].velocity == expected and events[0].pitch == PIANO_MIN_MIDI


def test_onset_at_first_frame_counts_as_rising_edge():
    on, fr = zeros(10), zeros(10)
    on[0, 87], fr[0:6, 87] = 0.6, 0.6
    assert run(NoteTracker(S), on, fr) == [ev("on", 108, 0, 64), ev("off", 108, 6)]


def test_onset_held_above_threshold_opens_one_note_until_it_falls_and_rises():
    on, fr = zeros(40), zeros(40)
    on[5:20, 3] = 0.9          # held high: one onset
    on[25, 3] = 0.9            # new rising edge, frame still high: re-onset
    fr[5:35, 3] = 0.9
    events = run(NoteTracker(S), on, fr)
    m = 3 + PIANO_MIN_MIDI
    assert events == [ev("on", m, 5, 64), ev("off", m, 25), ev("on", m, 25, 64), ev("off", m, 35)]


def test_reonset_within_min_ioi_is_ignored():
    ioi = 4  # 40 ms at 100 frames/s
    assert NoteTracker(S).min_ioi_frames == ioi
    on, fr = zeros(30), zeros(30)
    on[5, 0] = 0.9
    on[5 + ioi - 1, 0] = 0.9   # rising edge 30 ms later: refused (and dropped)
    fr[5:20, 0] = 0.9
    assert run(NoteTracker(S), on, fr) == [ev("on", 21, 5, 64), ev("off", 21, 20)]
    on[5 + ioi - 1, 0] = 0.0
    on[5 + ioi, 0] = 0.9       # 40 ms later: allowed
    events = run(NoteTracker(S), on, fr)
    assert [e.kind for e in events] == ["on", "off", "on", "off"] and events[1].frame == 5 + ioi


def test_min_duration_holds_a_note_whose_frame_probability_is_low():
    tr = NoteTracker(S)
    assert tr.min_duration_frames == 3  # 30 ms at 100 frames/s
    on, fr = zeros(20), zeros(20)
    on[2, 10] = 0.9            # onset with no frame activity at all
    assert run(tr, on, fr) == [ev("on", 31, 2, 64), ev("off", 31, 5)]


def test_hysteresis_frame_probability_between_thresholds_keeps_the_note():
    on, fr = zeros(30), zeros(30)
    on[1, 40] = 0.9
    fr[1:10, 40] = 0.9
    fr[10:20, 40] = 0.35       # below the onset threshold, above the frame threshold: still sounding
    fr[20:, 40] = 0.29
    assert run(NoteTracker(S), on, fr) == [ev("on", 61, 1, 64), ev("off", 61, 20)]


def test_offset_hold_bridges_short_dips_and_stamps_the_off_when_the_hold_ends():
    s = S.replace(tracker__offset_hold_ms=30.0)
    tr = NoteTracker(s)
    assert tr.offset_hold_frames == 3
    on, fr = zeros(40), zeros(40)
    on[1, 40] = 0.9
    fr[1:40, 40] = 0.9
    fr[10:12, 40] = 0.1        # a two-frame dip: shorter than the hold, the note goes on
    fr[20:, 40] = 0.1          # low from frame 20: decided at 22, the third low frame, stamped at 20
    assert tr.process(on[:22], fr[:22], np.full_like(on[:22], 0.5)) == [ev("on", 61, 1, 64)]
    assert tr.process(on[22:23], fr[22:23], np.full_like(on[22:23], 0.5)) == [ev("off", 61, 20)]
    tr.reset()
    assert run(tr, on, fr) == [ev("on", 61, 1, 64), ev("off", 61, 20)]
    tr.reset()
    assert run(tr, on[:21], fr[:21]) == [ev("on", 61, 1, 64), ev("off", 61, 20)]  # flush: the low run's start
    assert run(NoteTracker(S), on, fr)[:2] == [ev("on", 61, 1, 64), ev("off", 61, 10)]  # no hold: cut by the dip


def test_max_duration_closes_a_stuck_note_and_it_does_not_reopen_without_a_new_edge():
    s = S.replace(tracker__max_duration_s=0.1)
    on, fr = zeros(40), zeros(40)
    on[0:30, 7] = 0.9
    fr[:, 7] = 1.0
    assert run(NoteTracker(s), on, fr) == [ev("on", 28, 0, 64), ev("off", 28, 10)]


def test_new_onset_right_after_a_close_opens_a_note():
    on, fr = zeros(30), zeros(30)
    on[0, 5] = 0.9
    fr[0:10, 5] = 0.9
    on[10, 5] = 0.9            # frame low and a rising edge at the same frame: close, then open
    fr[11:15, 5] = 0.9
    events = run(NoteTracker(S), on, fr)
    assert events == [ev("on", 26, 0, 64), ev("off", 26, 10), ev("on", 26, 10, 64), ev("off", 26, 15)]


def test_offs_before_ons_at_one_frame_and_pitches_ascending():
    on, fr = zeros(20), zeros(20)
    on[0, [9, 2]] = 0.9
    fr[0:8, [2, 9]] = 0.9
    on[8, [5, 1]] = 0.9
    fr[8:12, [1, 5]] = 0.9
    events = run(NoteTracker(S), on, fr)
    assert [(e.kind, e.pitch, e.frame) for e in events] == [
        ("on", 23, 0), ("on", 30, 0), ("off", 23, 8), ("off", 30, 8), ("on", 22, 8), ("on", 26, 8),
        ("off", 22, 12), ("off", 26, 12)]


def test_restrike_margin_raises_the_bar_only_for_a_sounding_key():
    tr = NoteTracker(load_settings(overrides=["tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3",
                                              "tracker.offset_hold_ms=0", "tracker.restrike_margin=0.3"]))
    assert tr.restrike_threshold == pytest.approx(0.8)
    on, fr = zeros(40), zeros(40)
    fr[2:35, 0] = 0.9
    on[2, 0] = 0.6           # opens pitch 21 (silent key: 0.5 is enough)
    on[12:15, 0] = 0.6       # sounding: an excursion under 0.8 does not re-strike
    on[20:22, 0] = 0.6       # an excursion that reaches 0.8 at frame 22 re-strikes there, once
    on[22:26, 0] = 0.9
    on[5, 1], fr[5:9, 1] = 0.6, 0.9   # a fresh note on pitch 22 needs only 0.5
    on[30, 0] = 0.9          # reaches 0.8 at frame 30, but only 8 frames after 22: fine (ioi 4 frames)
    events = run(tr, on, fr)
    assert [(e.kind, e.pitch, e.frame) for e in events] == [
        ("on", 21, 2), ("on", 22, 5), ("off", 22, 9), ("off", 21, 22), ("on", 21, 22), ("off", 21, 30),
        ("on", 21, 30), ("off", 21, 35)]
    # margin 0 restores one rule: the mid-height excursions re-strike too
    tr0 = NoteTracker(load_settings(overrides=["tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3",
                                               "tracker.offset_hold_ms=0"]))
    assert [e.frame for e in run(tr0, on, fr) if e.kind == "on" and e.pitch == 21] == [2, 12, 20, 30]


def test_keys_armed_in_one_chunk_re_strike_in_the_next():
    """Every key armed at a chunk boundary and re-struck in a one-frame chunk without a rising edge in it: 88 offs and
    88 ons from one frame (the event buffers must count armed keys, not only this chunk's edges)."""
    tr = NoteTracker(load_settings(overrides=["tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3",
                                              "tracker.offset_hold_ms=0", "tracker.restrike_margin=0.3"]))
    on, fr = zeros(9), np.full((9, N_KEYS), 0.9, np.float32)
    on[0], on[1:6], on[6:8], on[8] = 0.6, 0.2, 0.6, 0.9
    first = tr.process(on[:8], fr[:8], fr[:8])
    assert [e.kind for e in first] == ["on"] * N_KEYS and tr.armed.all()
    second = tr.process(on[8:], fr[8:], fr[8:])
    assert [(e.kind, e.frame) for e in second] == [("off", 8)] * N_KEYS + [("on", 8)] * N_KEYS


def test_flush_closes_at_next_frame_or_after_min_duration_and_reset_restarts():
    tr = NoteTracker(S)
    on, fr = zeros(10), zeros(10)
    on[2, 0] = on[9, 1] = 0.9
    fr[2:, 0] = fr[9:, 1] = 0.9
    events = tr.process(on, fr, fr)
    assert [(e.kind, e.pitch) for e in events] == [("on", 21), ("on", 22)]
    assert tr.frame_index == 10 and tr.sounding[[0, 1]].all()
    # pitch 21 ends at the next unseen frame; pitch 22 (1 frame old) is held to its minimum duration
    assert tr.flush() == [ev("off", 21, 10), ev("off", 22, 9 + tr.min_duration_frames)]
    assert not tr.sounding.any() and tr.flush() == []
    tr.reset()
    assert tr.frame_index == 0 and not tr.onset_above.any()
    assert tr.process(on, fr, fr)[0] == ev("on", 21, 2, 114)


def test_empty_chunk_and_bad_shapes():
    tr = NoteTracker(S)
    assert tr.process(zeros(0), zeros(0), zeros(0)) == [] and tr.frame_index == 0
    with pytest.raises(ValueError):
        tr.process(np.zeros((3, 87)), np.zeros((3, 87)), np.zeros((3, 87)))
    with pytest.raises(ValueError):
        tr.process(zeros(3), zeros(2), zeros(3))
    with pytest.raises(ValueError):
        tr.process(np.zeros(88), np.zeros(88), np.zeros(88))


def test_durations_in_frames_follow_the_frame_rate():
    s = load_settings(overrides=["audio.hop_length=320", "tracker.min_ioi_ms=40", "tracker.min_duration_ms=30",
                                 "tracker.max_duration_s=1.0", "tracker.offset_hold_ms=0"])
    tr = NoteTracker(s)  # 50 frames/s: 20 ms per frame
    assert (tr.min_ioi_frames, tr.min_duration_frames, tr.max_duration_frames) == (2, 2, 50)
    on, fr = zeros(10), zeros(10)
    on[4, 0], fr[4:7, 0] = 0.9, 0.9
    assert run(tr, on, fr)[1].time == pytest.approx(7 * 0.02)


# ---------------------------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------------------------
def reference_events(onset, frame, velocity, tracker):
    """A plain scalar re-statement of the rules, one pitch and one frame at a time."""
    on_thr, fr_thr = tracker.onset_threshold, tracker.frame_threshold
    strike_thr = tracker.restrike_threshold
    ioi, dmin, dmax = tracker.min_ioi_frames, tracker.min_duration_frames, tracker.max_duration_frames
    hold = tracker.offset_hold_frames
    n = len(onset)
    per_frame = [([], []) for _ in range(n)]
    flushed = []
    for p in range(N_KEYS):
        # armed: inside an onset excursion (from its rising edge while >= on_thr) that has not fired or been refused
        sounding, start, last, low_since, armed = False, 0, None, None, False
        for t in range(n):
            rising = onset[t, p] >= on_thr and (t == 0 or onset[t - 1, p] < on_thr)
            armed = rising or (armed and onset[t, p] >= on_thr)
            ioi_ok = last is None or t - last >= ioi
            if sounding:
                d = t - start
                if frame[t, p] >= fr_thr:
                    low_since = None
                elif low_since is None:
                    low_since = t
                held_low = low_since is not None and t - low_since + 1 >= hold
                strike = armed and onset[t, p] >= strike_thr
                if strike and not (ioi_ok and d >= dmin):
                    armed = strike = False
                if d >= dmax:
                    armed = False
                if (held_low and d >= dmin) or d >= dmax or strike:
                    end = max(low_since, start + dmin) if held_low and d >= dmin else t
                    per_frame[t][0].append(NoteEvent("off", p + 21, 0, end, end / FR))
                    sounding = False
            if not sounding and armed:
                armed = False
                if ioi_ok:
                    v = int(min(127, max(1, np.floor(velocity[t, p] * 127.0 + 0.5))))
                    per_frame[t][1].append(NoteEvent("on", p + 21, v, t, t / FR))
                    sounding, start, last, low_since = True, t, t, None
        if sounding:
            end = max(n if low_since is None else low_since, start + dmin)
            flushed.append(NoteEvent("off", p + 21, 0, end, end / FR))
    out = [e for offs, ons in per_frame for e in offs + ons]
    return out + sorted(flushed, key=lambda e: (e.frame, e.pitch))


LEVELS = np.array([0.0, 0.1, 0.29, 0.3, 0.31, 0.45, 0.5, 0.55, 0.8, 1.0], np.float32)

VARIANTS = [
    [],
    ["tracker.offset_hold_ms=0"],
    ["tracker.offset_hold_ms=50", "tracker.min_duration_ms=20"],
    ["tracker.max_duration_s=0.12", "tracker.min_duration_ms=50"],
    ["tracker.min_ioi_ms=0", "tracker.min_duration_ms=0"],
    ["tracker.min_ioi_ms=100", "tracker.onset_threshold=0.3", "tracker.frame_threshold=0.3"],
    ["tracker.offset_hold_ms=30"],
    ["tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3", "tracker.restrike_margin=0.3"],
    ["tracker.onset_threshold=0.3", "tracker.frame_threshold=0.3", "tracker.restrike_margin=0.25",
     "tracker.offset_hold_ms=30", "tracker.max_duration_s=0.12"],
]
TRACKER_SETTINGS = [load_settings(overrides=v) for v in VARIANTS]


@st.composite
def streams(draw):
    n = draw(st.integers(0, 120))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    variant = draw(st.sampled_from(range(len(VARIANTS))))
    rng = np.random.default_rng(seed)
    # Piecewise-constant levels around the thresholds on a few pitches (events on every kind of boundary), random
    # noise elsewhere now and then.
    onset, frame = zeros(n), zeros(n)
    pitches = rng.choice(N_KEYS, size=rng.integers(1, 6), replace=False)
    for target in (onset, frame):
        for p in pitches:
            t = 0
            while t < n:
                run_len = int(rng.integers(1, 12))
                target[t:t + run_len, p] = LEVELS[rng.integers(len(LEVELS))]
                t += run_len
    if rng.random() < 0.3:
        onset = np.maximum(onset, rng.random((n, N_KEYS), np.float32) ** 8)
        frame = np.maximum(frame, rng.random((n, N_KEYS), np.float32) ** 4)
    velocity = rng.random((n, N_KEYS), np.float32)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    chunks = np.diff([0, *cuts, n]).tolist()
    return onset, frame, velocity, chunks, TRACKER_SETTINGS[variant]


@hsettings(max_examples=250, deadline=None)
@given(streams())
def test_random_streams_keep_the_invariants(case):
    onset, frame, velocity, chunks, s = case
    tracker = NoteTracker(s)
    events = run(tracker, onset, frame, velocity, chunks)

    # chunked feeding == one-shot feeding == the scalar restatement of the rules
    assert run(NoteTracker(s), onset, frame, velocity) == events
    assert reference_events(onset, frame, velocity, tracker) == events

    # zero look-ahead: a prefix of the stream gives the start of the full run's events, and only offs held back by
    # the offset hold (stamped at most hold - 1 frames before the cut) are decided after it
    cut = len(onset) // 2
    prefix = NoteTracker(s).process(onset[:cut], frame[:cut], velocity[:cut])
    assert events[:len(prefix)] == prefix
    hold = tracker.offset_hold_frames
    assert all(e.frame >= (cut if e.kind == "on" else cut - hold + 1) for e in events[len(prefix):])

    # times never go backwards per pitch, and across pitches by less than the hold
    for p in {e.pitch for e in events}:
        mine = [e.frame for e in events if e.pitch == p]
        assert mine == sorted(mine)
    assert all(b.frame >= a.frame - hold + 1 for a, b in zip(events, events[1:]))
    assert all(e.time == e.frame / s.audio.frame_rate for e in events)

    open_at = {}
    last_on = {}
    for e in events:
        assert PIANO_MIN_MIDI <= e.pitch < PIANO_MIN_MIDI + N_KEYS
        if e.kind == "on":
            assert e.pitch not in open_at, "double note-on for a sounding pitch"
            assert 1 <= e.velocity <= 127
            if e.pitch in last_on:
                assert e.frame - last_on[e.pitch] >= tracker.min_ioi_frames
            open_at[e.pitch] = last_on[e.pitch] = e.frame
        else:
            assert e.kind == "off" and e.velocity == 0
            start = open_at.pop(e.pitch)  # KeyError = a note-off without its note-on
            assert tracker.min_duration_frames <= e.frame - start <= tracker.max_duration_frames
    assert open_at == {}, "every note-on gets exactly one note-off after flush"
    assert not tracker.sounding.any()
    assert len(events_to_notes(events)) == len(events) // 2
