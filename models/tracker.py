"""Streaming note tracker: the model's per-frame onset / frame / velocity probabilities -> note-on/off events.

Rules (docs/design.md §4), per pitch, with zero look-ahead (an event at frame t depends only on frames <= t):

* **Open.** A note opens at frame t when the onset probability crosses ``tracker.onset_threshold`` there (it is
  >= the threshold at t and was below it at t - 1: a rising edge; the stream starts "below"), and the last onset of
  that pitch is at least ``tracker.min_ioi_ms`` earlier. An edge refused by the minimum inter-onset interval is
  dropped, not postponed.
* **Re-onset.** On a sounding pitch the bar is higher: an onset excursion (from a rising edge until the
  probability falls below ``tracker.onset_threshold`` again) re-strikes the key at the first frame where it reaches
  ``onset_threshold + tracker.restrike_margin``, if the minimum inter-onset interval and the minimum duration allow
  it then; the note closes and a new one opens at that frame (off before on). A re-strike refused there is dropped
  for the rest of the excursion. Why: a sounding key's own partials and its decay make the onset output flicker
  at mid heights, the commonest false onset; a silent key needs no such guard (margin 0 = one rule for both).
  An excursion still under way when a note closes for another reason (Close) opens a new note.
* **Close.** A sounding note closes at the frame t where its frame probability has been < ``tracker.frame_threshold``
  for ``tracker.offset_hold_ms`` (frames t - hold + 1 .. t; hold = 1 frame closes at the first low frame), so a
  dip of the frame output shorter than the hold does not cut a note (hysteresis: the frame threshold is below the
  onset threshold). The note-off is *decided* at t but stamped at the first frame of the low run (where the note
  stopped sounding), or at onset + minimum duration if that is later: so an off can be emitted up to hold - 1
  frames after its own time, live and offline alike. A note never closes before it has lasted
  ``tracker.min_duration_ms`` (and at least one frame); it is closed at ``tracker.max_duration_s`` whatever the
  probabilities say (a stuck key is not held forever; it reopens only on a new rising edge).
* **Flush.** ``flush()`` ends the stream: every sounding note closes at the next unseen frame (or at the start of
  its current low run, as in Close), or later if needed to reach the minimum duration.

A note spans frames [on_frame, off_frame): its times are ``on_frame / frame_rate`` and ``off_frame / frame_rate``
[s]. Velocity is the velocity output at the onset frame, ``clip(round(v * 127), 1, 127)``.

Durations in milliseconds are turned into whole frames by rounding up (a 30 ms minimum at 100 frames/s is 3 frames).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI, NoteEvent

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings


def _frames(seconds: float, frame_rate: float) -> int:
    """Seconds -> whole frames, rounded up; the small tolerance keeps 0.03 s * 100 /s at 3 frames, not 4."""
    return max(0, math.ceil(seconds * frame_rate - 1e-9))


def _rising_edges(p: np.ndarray, threshold: float, above_before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(k, 88)`` probabilities -> (rising, above): ``(k, 88)`` bool, True where they reach ``threshold`` after a
    frame below it, and True where they are at or above it (its last row is the next call's ``above_before``).
    ``above_before``: ``(88,)`` bool, the same for the frame before."""
    above = p >= threshold
    rising = above.copy()
    rising[0] &= ~above_before
    rising[1:] &= ~above[:-1]
    return rising, above


@nb.njit(cache=True, nogil=True)
def _track(rising, above, above_strike, low, velocity, t0, sounding, armed, onset_frame, last_onset, vel_state,
           low_run, min_ioi, min_dur, max_dur, hold, reonset, ev_kind, ev_key, ev_vel, ev_frame):
    """The per-frame rules over ``k`` frames, state arrays updated in place (see :meth:`NoteTracker.process`).

    rising, above, above_strike, low : (k, 88) bool (the onset's rising edges over, and frames at or above, the
    onset threshold; frames at or above the re-strike threshold; frame below its threshold); velocity : (k, 88)
    float32; ev_* : event buffers (kind 0 = off, 1 = on; key index 0..87; MIDI velocity;
    frame), long enough for every event. Returns the number of events written.
    """
    k = rising.shape[0]
    n = 0
    n_sounding = 0
    for p in range(N_KEYS):
        if sounding[p]:
            n_sounding += 1
    for i in range(k):
        t = t0 + i
        any_rising = False
        for p in range(N_KEYS):
            if rising[i, p]:
                any_rising = True
                break
        # Nothing can change: the common case in silence (a silent key is never left armed after a frame).
        if not any_rising and n_sounding == 0:
            continue
        for p in range(N_KEYS):  # the onset excursion each key is in: armed from its rising edge until it fires
            if rising[i, p]:
                armed[p] = True
            elif not above[i, p]:
                armed[p] = False
        for p in range(N_KEYS):  # offs first, by ascending pitch
            if sounding[p]:
                dur = t - onset_frame[p]
                if low[i, p]:
                    low_run[p] += 1
                else:
                    low_run[p] = 0
                stamp = t
                strike = armed[p] and above_strike[i, p]
                if strike and dur < reonset:  # a re-onset refused is dropped, not postponed
                    armed[p] = False
                    strike = False
                if dur >= max_dur:  # a stuck key reopens only on a new excursion
                    armed[p] = False
                close = dur >= max_dur or strike
                if low_run[p] >= hold and dur >= min_dur:
                    close = True
                    stamp = max(t - low_run[p] + 1, onset_frame[p] + min_dur)
                if close:
                    ev_kind[n] = 0
                    ev_key[n] = p
                    ev_vel[n] = 0
                    ev_frame[n] = stamp
                    n += 1
                    sounding[p] = False
                    n_sounding -= 1
        for p in range(N_KEYS):  # then ons
            if not armed[p] or sounding[p]:
                continue
            armed[p] = False  # fired, or refused by the inter-onset interval: either way this excursion is spent
            if t - last_onset[p] >= min_ioi:
                v = velocity[i, p]
                if v != v:  # NaN: the quietest note rather than none
                    v = np.float32(0.0)
                q = math.floor(v * np.float32(127.0) + np.float32(0.5))
                vel = 1 if q < 1 else (127 if q > 127 else int(q))
                ev_kind[n] = 1
                ev_key[n] = p
                ev_vel[n] = vel
                ev_frame[n] = t
                n += 1
                sounding[p] = True
                n_sounding += 1
                onset_frame[p] = t
                last_onset[p] = t
                vel_state[p] = vel
                low_run[p] = 0
    return n


class NoteTracker:
    """Streaming note tracker (see the module notes for the rules).

    Attributes (state; all per-pitch arrays are (88,), index 0 = MIDI 21)
    ----------
    frame_index : index of the next frame to be processed [frames]; 0 at the start of the stream.
    sounding : bool, a note of this pitch is open.
    onset_frame : int64, onset frame of the open note (meaningless where not sounding) [frames].
    velocity : int64, MIDI velocity of the open note.
    last_onset_frame : int64, frame of the pitch's most recent onset, a large negative number before any [frames].
    onset_above : bool, the onset probability of the last frame was >= onset_threshold (for the rising edge).
    armed : bool, the key is in an onset excursion (from a rising edge over onset_threshold until the probability
        falls below it again) that has not yet opened a note or been refused; only a sounding key stays armed
        between frames (waiting for onset_threshold + restrike_margin).
    low_run : int64, consecutive frames (up to the last one processed) that the open note's frame probability has
        been below frame_threshold [frames].

    Settings used: ``tracker.*`` and ``audio.frame_rate``.
    """

    def __init__(self, settings: "Settings"):
        t = settings.tracker
        self.frame_rate = settings.audio.frame_rate
        self.onset_threshold = float(t.onset_threshold)
        self.restrike_threshold = float(t.onset_threshold + t.restrike_margin)
        self.frame_threshold = float(t.frame_threshold)
        self.min_ioi_frames = _frames(t.min_ioi_ms / 1000.0, self.frame_rate)
        # A note lasts at least one frame, so its offset is always after its onset.
        self.min_duration_frames = max(1, _frames(t.min_duration_ms / 1000.0, self.frame_rate))
        self.max_duration_frames = max(self.min_duration_frames, _frames(t.max_duration_s, self.frame_rate))
        self.offset_hold_frames = max(1, _frames(t.offset_hold_ms / 1000.0, self.frame_rate))
        # Re-onset closes the open note, so it must respect both the inter-onset interval and the minimum duration.
        self._reonset_frames = max(self.min_ioi_frames, self.min_duration_frames)
        self._never = -(1 << 40)
        self.reset()

    def reset(self) -> None:
        """Forget everything: no note sounding, frame counter back to 0."""
        self.frame_index = 0
        self.sounding = np.zeros(N_KEYS, bool)
        self.onset_frame = np.zeros(N_KEYS, np.int64)
        self.velocity = np.zeros(N_KEYS, np.int64)
        self.last_onset_frame = np.full(N_KEYS, self._never, np.int64)
        self.onset_above = np.zeros(N_KEYS, bool)
        self.armed = np.zeros(N_KEYS, bool)
        self.low_run = np.zeros(N_KEYS, np.int64)

    # -------------------------------------------------------------------------------------------------------------
    def process(self, onset: np.ndarray, frame: np.ndarray, velocity: np.ndarray) -> list[NoteEvent]:
        """Track ``k`` consecutive frames.

        Parameters
        ----------
        onset, frame, velocity : (k, 88) probabilities in [0, 1] (k may be 0), frames ``frame_index ..
            frame_index + k - 1``.

        Returns
        -------
        The note events decided at these frames, in the order decided: frame by frame, offs before ons, each by
        ascending pitch. An event's time is that of its note boundary; an off's time can be up to ``hold - 1``
        frames before the frame that decided it (see Close), so times are in order per pitch, not across pitches.
        """
        onset = np.asarray(onset)
        frame = np.asarray(frame)
        velocity = np.asarray(velocity)
        k = onset.shape[0] if onset.ndim == 2 else -1
        shapes = [a.shape for a in (onset, frame, velocity)]
        if any(s != (k, N_KEYS) for s in shapes):
            raise ValueError(f"onset, frame, velocity must all be (k, {N_KEYS}); got "
                             + ", ".join(map(str, shapes)))
        if k == 0:
            return []

        rising, above = _rising_edges(onset, self.onset_threshold, self.onset_above)   # (k, 88) each
        self.onset_above = above[-1].copy()
        above_strike = onset >= self.restrike_threshold          # (k, 88)
        low = frame < self.frame_threshold                       # (k, 88)

        # Every on comes from a rising edge in this call or a key armed before it; every off closes a note sounding
        # before this call or opened in it: at most 88 + 2 x (rising edges + armed keys) events.
        cap = N_KEYS + 2 * (int(np.count_nonzero(rising)) + int(np.count_nonzero(self.armed)))
        kind = np.empty(cap, np.int8)
        key = np.empty(cap, np.int64)
        vel = np.empty(cap, np.int64)
        at = np.empty(cap, np.int64)
        t0 = self.frame_index
        n = _track(rising, above, above_strike, low, np.ascontiguousarray(velocity, np.float32), t0,
                   self.sounding, self.armed, self.onset_frame, self.last_onset_frame, self.velocity, self.low_run,
                   self.min_ioi_frames, self.min_duration_frames, self.max_duration_frames, self.offset_hold_frames,
                   self._reonset_frames, kind, key, vel, at)
        fr = self.frame_rate
        events = [NoteEvent("on" if kind[j] else "off", int(key[j]) + PIANO_MIN_MIDI, int(vel[j]), int(at[j]),
                            int(at[j]) / fr) for j in range(n)]
        self.frame_index = t0 + k
        return events

    def flush(self) -> list[NoteEvent]:
        """End of stream: close every sounding note at ``frame_index`` (or at the start of its low run), or at
        ``onset + min duration`` if later.

        Events are in time order. Call :meth:`reset` before starting another stream.
        """
        events = []
        idx = np.flatnonzero(self.sounding)
        ends = np.maximum(self.frame_index - self.low_run[idx], self.onset_frame[idx] + self.min_duration_frames)
        for p, end in sorted(zip(idx.tolist(), ends.tolist()), key=lambda x: (x[1], x[0])):
            events.append(NoteEvent("off", p + PIANO_MIN_MIDI, 0, int(end), end / self.frame_rate))
        self.sounding[:] = False
        return events
