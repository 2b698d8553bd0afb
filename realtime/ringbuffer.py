"""Single-producer single-consumer ring buffer between the audio callback and the processing thread.

The producer (the PortAudio callback, or the file reader thread) calls :meth:`RingBuffer.write`; the consumer (the
processing thread) calls :meth:`RingBuffer.read`. No locks: each side owns one monotonically increasing counter
(``written`` for the producer, ``read_pos`` for the consumer), and publishes it only after the data it covers has
been copied, so under CPython's GIL each side sees either the old or the new value of the other's counter, both safe.

The producer never blocks, never raises and allocates no arrays: when the block does not fit, the part that does not
fit is dropped and counted (``overflows`` events, ``dropped`` samples), and the position of the gap is logged in a
preallocated table so the consumer can keep its sample clock on the true (device) time axis (:meth:`dropped_before`).
"""
from __future__ import annotations

import numpy as np

_GAP_SLOTS = 256  # gaps remembered between two reads of the table; more are merged into the last one


class RingBuffer:
    """Ring of ``capacity`` frames of ``channels`` float32 samples.

    Attributes
    ----------
    written : total frames accepted since :meth:`reset` (producer counter) [samples].
    read_pos : total frames consumed since :meth:`reset` (consumer counter) [samples].
    overflows : number of writes that did not fit entirely (producer) [count].
    dropped : total frames dropped by those writes [samples].
    """

    def __init__(self, capacity: int, channels: int = 1):
        if capacity < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be >= 1, got {capacity}, {channels}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), np.float32)
        # Gap log: (position in accepted frames, frames dropped there). Producer appends, consumer scans.
        self._gap_pos = np.zeros(_GAP_SLOTS, np.int64)
        self._gap_len = np.zeros(_GAP_SLOTS, np.int64)
        self.reset()

    def reset(self) -> None:
        """Empty the ring and zero the counters (only while neither side is running)."""
        self.written = 0
        self.read_pos = 0
        self.overflows = 0
        self.dropped = 0
        self._n_gaps = 0
        self._gaps_seen = 0
        self._dropped_seen = 0

    # ---- producer ---------------------------------------------------------------------------------------------
    def write(self, block: np.ndarray) -> int:
        """Copy ``block`` ``(n, channels)`` (or ``(n,)`` when mono) in; returns the frames accepted. Never raises."""
        try:
            n = block.shape[0]
            free = self.capacity - (self.written - self.read_pos)
            take = n if n <= free else free
            if take > 0:
                w = self.written % self.capacity
                first = take if take <= self.capacity - w else self.capacity - w
                if block.ndim == 1:
                    self._buf[w:w + first, 0] = block[:first]
                    if take > first:
                        self._buf[:take - first, 0] = block[first:take]
                else:
                    self._buf[w:w + first] = block[:first]
                    if take > first:
                        self._buf[:take - first] = block[first:take]
                self.written += take  # publish after the copy
            if take < n:
                self._log_gap(n - take)
            return take
        except Exception:  # a callback must never raise; a malformed block counts as dropped
            self._log_gap(0)
            return 0

    def _log_gap(self, n: int) -> None:
        self.overflows += 1
        self.dropped += n
        k = self._n_gaps
        if k > self._gaps_seen and self._gap_pos[(k - 1) % _GAP_SLOTS] == self.written:
            self._gap_len[(k - 1) % _GAP_SLOTS] += n  # the same gap goes on (consumer has not caught up)
        elif k - self._gaps_seen >= _GAP_SLOTS:
            self._gap_len[(k - 1) % _GAP_SLOTS] += n  # table full: merge (the gap's position is then approximate)
        else:
            self._gap_pos[k % _GAP_SLOTS] = self.written
            self._gap_len[k % _GAP_SLOTS] = n
            self._n_gaps = k + 1

    # ---- consumer ---------------------------------------------------------------------------------------------
    @property
    def available(self) -> int:
        """Frames ready to read [samples]."""
        return self.written - self.read_pos

    def read(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Take exactly ``n`` frames (``n <= available``) -> ``(n, channels)`` float32, into ``out`` if given."""
        if n > self.available:
            raise ValueError(f"only {self.available} frames available, asked for {n}")
        if out is None:
            out = np.empty((n, self.channels), np.float32)
        r = self.read_pos % self.capacity
        first = min(n, self.capacity - r)
        out[:first] = self._buf[r:r + first]
        if n > first:
            out[first:n] = self._buf[:n - first]
        self.read_pos += n  # publish after the copy: the producer may now overwrite those frames
        return out[:n]

    def dropped_before(self, pos: int) -> int:
        """Frames dropped before the consumer position ``pos`` [samples] (gaps at positions <= pos).

        Monotonic use only (``pos`` never decreasing), as the processing thread reads.
        """
        while self._gaps_seen < self._n_gaps:
            i = self._gaps_seen % _GAP_SLOTS
            if self._gap_pos[i] > pos:
                break
            # A gap still growing (the producer may add to the newest one) is read again next time.
            if self._gaps_seen == self._n_gaps - 1 and self._gap_pos[i] == self.written:
                return self._dropped_seen + int(self._gap_len[i])
            self._dropped_seen += int(self._gap_len[i])
            self._gaps_seen += 1
        return self._dropped_seen
