"""Test doubles and helpers for the realtime tests (and a runner for subprocess tests).

``EnergyTranscriber`` stands in for :class:`models.pipeline.Transcriber` where a test is about the live plumbing,
not the network: wherever a hop is loud it holds C4 (MIDI 60) down, through the real :class:`NoteTracker`, so the
events have real frame times and the tracker's invariants. Its only look-ahead is the tracker's (none).

Run as a script, it is ``kkoma`` with that double in place of the pipeline::

    python tests/test_realtime_doubles.py record out.mid --input tone.wav --no-midi
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI  # noqa: E402
from kkoma.models.tracker import NoteTracker  # noqa: E402

C4 = 60
LOUD_RMS = 0.05


class EnergyTranscriber:
    """Loud hops -> C4 held (onset + frame probability 1), velocity 0.5; hop-exact framing like the real CQT."""

    def __init__(self, settings):
        self.settings = settings
        self.hop = settings.audio.hop_length
        self.tracker = NoteTracker(settings)
        self.reset()

    def reset(self):
        self.tracker.reset()
        self.rest = np.zeros(0, np.float32)

    def process(self, block):
        x = np.concatenate([self.rest, np.asarray(block, np.float32)])
        n = len(x) // self.hop * self.hop
        self.rest = x[n:]
        if n == 0:
            return []
        rms = np.sqrt((x[:n].reshape(-1, self.hop) ** 2).mean(axis=1))
        k = len(rms)
        on = np.zeros((k, N_KEYS), np.float32)
        on[:, C4 - PIANO_MIN_MIDI] = rms > LOUD_RMS
        return self.tracker.process(on, on.copy(), np.full((k, N_KEYS), 0.5, np.float32))

    def flush(self):
        events = self.process(np.zeros(self.hop - len(self.rest), np.float32)) if len(self.rest) else []
        return events + self.tracker.flush()

    def latency_budget(self):
        return {"hop_ms": 1000.0 * self.settings.audio.hop_seconds, "total_ms": 1000.0 * self.settings.audio.hop_seconds}


def tone(seconds, sr, bursts, freq=261.63, channels=1, amp=0.5):
    """Sine bursts (on during the given [start, end) seconds), silence elsewhere -> (n, channels) float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = np.zeros_like(t)
    for a, b in bursts:
        m = (t >= a) & (t < b)
        x[m] = amp * np.sin(2 * np.pi * freq * t[m])
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def main(argv):
    import kkoma.realtime.engine as E
    from kkoma.cli import main as kkoma_main

    E.make_live_transcriber = EnergyTranscriber
    E.make_record_transcriber = EnergyTranscriber  # kkoma record's files model too
    return kkoma_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
