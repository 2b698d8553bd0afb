"""The live engine: ring buffer -> mono -> resample to the model rate -> Transcriber -> events -> MIDI / file / JSON.

One processing thread (:meth:`Engine.start`) consumes the ring buffer one device block at a time (``live.block_size``
device samples, at most one model hop ``round(audio.hop_length * device_rate / model_rate)``): a feature frame is
complete as soon as the block holding its last sample (and the resampler's ~1 ms look-ahead) arrives, not a hop later.
Each step is counted in ``hops`` and timed in ``stats``. ``kkoma record``'s files model runs on a thread of its own
(:class:`FileWorker`), fed the same steps: its compute shares the CPU (and the GIL) but does not wait in line before
the port's notes. The streaming :class:`models.pipeline.Transcriber` gives the same notes for any block sizes, so live
and file transcription agree. Everything that says *when* comes
from sample counters:

* ``t_note`` of an event: the tracker's frame time (``frame / frame_rate``), moved onto the device clock by the
  samples the ring buffer had to drop before it (overflow gaps), so it is the estimated onset/offset in the input.
* ``t_emit``: the device-clock time of the last input sample consumed when the event was sent, ``t_emit -
  t_note`` is the latency the player hears (minus the sound card's own buffering and the compute time).

Wall-clock timers (``time.perf_counter``) are used only for the per-hop compute statistics.
"""
from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from kkoma.models.notes import note_name  # noqa: F401  (the display names keys with it)
from kkoma.models.pipeline import make_transcriber
from kkoma.models.resample import Resampler
from kkoma.realtime.audio_in import InputLost

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings



def make_live_transcriber(settings: "Settings"):
    """The live pipeline (:func:`models.pipeline.make_transcriber` with ``live``); a module-level hook so tests can
    substitute a double."""
    return make_transcriber(settings, live=True)


def make_record_transcriber(settings: "Settings"):
    """The files model's pipeline for ``kkoma record``'s file (``settings``: the offline ones, with their own
    transform and look-ahead); a module-level hook so tests can substitute a double. Any model may write a file, a
    backward LSTM's too: its notes come seconds late, which a file does not mind. On the CPU whatever
    ``transcribe.device`` says: it runs on a thread beside the live processing thread (:class:`FileWorker`)."""
    return make_transcriber(settings.replace(transcribe__device="cpu"))


def _budget_of(transcriber) -> dict | None:
    fn = getattr(transcriber, "latency_budget", None)
    return fn() if callable(fn) else None


class HopStats:
    """Compute times [s] per processing step (one device block: resample + transcriber + dispatch) in a fixed
    log-spaced histogram.

    Memory stays constant however long the session (a list of every hop grew ~0.8 MB per 10 minutes); percentiles
    are read from the histogram, within one bin (1.2 %) of the exact value. ``last`` is the latest hop's time.
    """

    _PER_DECADE = 200
    _LO = -7.0  # log10 of the smallest bin edge [s]: 0.1 µs
    _DECADES = 8  # up to 10 s

    def __init__(self):
        self.counts = np.zeros(self._PER_DECADE * self._DECADES + 1, np.int64)
        self.hops = 0
        self.total = 0.0
        self.max = 0.0
        self.last = None

    def add(self, dt: float) -> None:
        i = int((math.log10(max(dt, 1e-12)) - self._LO) * self._PER_DECADE)
        self.counts[min(max(i, 0), len(self.counts) - 1)] += 1
        self.hops += 1
        self.total += dt
        self.max = max(self.max, dt)
        self.last = dt

    def percentile(self, q: float) -> float:
        """The q-th percentile [s] (upper edge of the bin that holds it, capped at the maximum)."""
        rank = np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.hops, side="left")
        return float(min(10.0 ** (self._LO + (rank + 1) / self._PER_DECADE), self.max))

    def summary(self) -> dict:
        if not self.hops:
            return {"hops": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
        return {"hops": self.hops, "p50_ms": 1000.0 * self.percentile(50), "p99_ms": 1000.0 * self.percentile(99),
                "max_ms": 1000.0 * self.max, "mean_ms": 1000.0 * self.total / self.hops}


class FileWorker:
    """``kkoma record``'s files model on a thread of its own: the processing thread hands it each step's resampled
    audio (:meth:`put`) right after the live events went out, and it feeds its transcriber in the same order, so the
    file gets exactly the notes ``kkoma transcribe`` writes. A model with a backward LSTM computes a whole block
    (1 s) at once; on the processing thread that burst would delay the port's next notes, here the two threads share
    the CPU (and the GIL).

    ``transcriber``: a streaming pipeline (:func:`make_record_transcriber`); ``record(events, t_emit)``: where its
    notes go (the recorder); ``step_s`` [s]: audio per step. The queue holds at most ``max_s`` [s] of audio
    (``record.files_queue_s``): a files model that cannot keep up then slows the processing thread (and the ring
    buffer drops audio, as for a slow live model) instead of growing memory. ``stats``: its compute per step;
    ``error``: what it raised (the processing thread raises it at its next step, :meth:`Engine.join` after the end);
    ``done_s``: how far it got.
    """

    def __init__(self, transcriber, record: Callable, step_s: float, max_s: float):
        self.transcriber = transcriber
        self._record = record
        self.step_s = step_s
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_s / step_s)))
        self.stats = HopStats()
        self.error: BaseException | None = None
        self.done_s = 0.0  # device-clock time [s] of the last audio the files model has transcribed
        self._thread = threading.Thread(target=self._run, name="kkoma-file-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, y: np.ndarray, t_emit: float) -> None:
        """One step's audio at the model rate (copied) and the device-clock time [s] of its last sample."""
        self._put((y.copy(), t_emit))

    def end(self, t_emit: float) -> None:
        """End of the stream: the worker flushes its transcriber (its events stamped ``t_emit`` [s]) and stops. Does
        not wait for it (:meth:`join` does)."""
        if self._thread.is_alive():
            self._put((None, t_emit))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the last notes to be written; True when the worker has ended."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def backlog_s(self) -> float:
        """Audio waiting for the files model [s]."""
        return self._queue.qsize() * self.step_s

    def _put(self, item) -> None:
        while True:  # a full queue waits for the worker, unless the worker has died
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        ft = self.transcriber
        try:
            while True:
                y, t_emit = self._queue.get()
                t0 = time.perf_counter()
                events = (ft.process(y) if len(y) else []) if y is not None else ft.flush()
                if events:
                    self._record(events, t_emit)
                self.done_s = t_emit
                if y is None:
                    return
                self.stats.add(time.perf_counter() - t0)
        except BaseException as e:  # handed to the processing thread, which raises it
            self.error = e


class Engine:
    """Source -> Transcriber -> sinks, on one processing thread (and ``kkoma record``'s files model on a second).

    Parameters
    ----------
    settings : kkoma settings.
    source : an :mod:`realtime.audio_in` source (``AudioInput`` or ``FileInput``), not started yet.
    midi : a ``MidiOut`` / ``NullMidiOut`` (``send_event(e) -> velocity sent``).
    transcriber : streaming pipeline; None builds one with :func:`make_live_transcriber`.
    recorder : a :class:`realtime.recorder.Recorder` or None.
    events_jsonl : an open text file receiving one JSON line per MIDI event sent, or None.
    duration : stop (as at the end of a file) after this much input [s], or None.
    on_event : called as ``on_event(event, t_emit, velocity_sent)`` on the processing thread.
    file_transcriber : a second streaming pipeline (the files model, :func:`make_record_transcriber`) fed the same
        resampled audio as the live one, on its own thread (:class:`FileWorker`), each step once the live events are
        sent; the recorder then gets its notes instead of the live ones (they come its look-ahead and compute
        later, which a file does not mind). None: the recorder gets the notes sent.

    Attributes (read by the display): ``t_emit`` [s], ``level_db`` [dBFS], ``hops``, ``events_sent``,
    ``budget`` (ms figures), ``stats`` (:class:`HopStats`), ``error``.
    """

    def __init__(self, settings: "Settings", source, midi, transcriber=None, recorder=None, events_jsonl=None,
                 duration: float | None = None, on_event: Callable | None = None, file_transcriber=None):
        self.settings = settings
        self.source = source
        self.midi = midi
        self.transcriber = transcriber if transcriber is not None else make_live_transcriber(settings)
        self.file_transcriber = file_transcriber
        self.recorder = recorder
        self.events_jsonl = events_jsonl
        self.duration = duration
        self.on_event = on_event
        sr_model = settings.audio.sample_rate
        self.hop_dev = max(1, int(round(settings.audio.hop_length * source.sample_rate / sr_model)))
        self.step_dev = max(1, min(self.hop_dev, int(source.block_size)))  # device samples per processing step
        self.file_worker = None if file_transcriber is None else \
            FileWorker(file_transcriber, self._record, self.step_dev / source.sample_rate,
                       settings.record.files_queue_s)
        # The file pipeline's resampler: live and offline features are the same at every device rate.
        self.resampler = Resampler(source.sample_rate, sr_model, settings)
        self.budget = self._latency_budget()
        self.stats = HopStats()
        self.t_emit = 0.0
        self.level_db = -math.inf
        self.hops = 0
        self.events_sent = 0
        self.error: BaseException | None = None
        self.ended = False          # the input ended (file end or duration) and everything was flushed
        self._gaps: list[tuple[float, float]] = []  # (stream time [s], offset [s]) where ring drops happened
        self._offset = 0.0
        self._dropped_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kkoma-engine", daemon=True)

    # ---- latency ----------------------------------------------------------------------------------------------
    def _latency_budget(self) -> dict:
        """Latency figures [ms]: what the design costs before any compute, from the settings and the source."""
        s = self.settings
        b = {"audio_block_ms": 1000.0 * self.source.block_size / self.source.sample_rate,
             "resampler_ms": self.resampler.lookahead_ms}
        theirs = None
        fn = getattr(self.transcriber, "latency_budget", None)
        if callable(fn):
            try:
                theirs = fn()
            except Exception:
                theirs = None
        if isinstance(theirs, dict) and theirs:
            for k, v in theirs.items():
                if isinstance(v, (int, float)) and "total" not in k and math.isfinite(v):
                    b[k if k.endswith("_ms") else f"{k}_ms"] = float(v)
        else:
            # A note starting inside a hop is seen at the next frame boundary (up to one hop late).
            b["hop_ms"] = 1000.0 * s.audio.hop_seconds
            if math.isfinite(s.cqt.lookahead_ms):
                b["cqt_lookahead_ms"] = float(s.cqt.lookahead_ms)
            else:
                from kkoma.models.cqt import CQT

                b["cqt_lookahead_ms"] = float(CQT(s).lookahead_ms)
            b["model_lookahead_ms"] = s.model_lookahead_ms
        b["total_ms"] = float(sum(v for k, v in b.items() if k != "total_ms"))
        return b

    # ---- control ----------------------------------------------------------------------------------------------
    @property
    def _transcribers(self) -> list:
        return [t for t in (self.transcriber, self.file_transcriber) if t is not None]

    def warm_up(self, seconds: float = 0.1) -> None:
        """Run the transcribers on a little silence and reset them, so the first live hop pays no JIT/caching cost."""
        for t in self._transcribers:
            reset = getattr(t, "reset", None)
            if not callable(reset):
                continue
            n = max(1, int(seconds * self.settings.audio.sample_rate))
            t.process(np.zeros(n, np.float32))
            t.flush()
            reset()

    def start(self) -> None:
        # The audio callback needs the GIL, and the processing thread too while the files model's thread computes:
        # switch threads every 1 ms (Python's default is 5) so a long step elsewhere cannot starve them.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self.warm_up()
        self.source.start()  # (first: a source that cannot start leaves no thread behind)
        if self.file_worker is not None:
            self.file_worker.start()
        self._thread.start()

    def stop(self) -> None:
        """Ask the processing thread to end (it flushes the transcriber and sends the last note-offs)."""
        self._stop.set()

    def join(self, timeout: float | None = None, file: bool = True) -> None:
        """Wait for the processing thread (then every note has gone to the port) and, with ``file``, for the files
        model's thread too (then the file has all its notes; what that thread raised becomes ``error``, unless
        there is one already). ``timeout`` [s] covers both."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread.ident is not None:  # never started (the source failed to start): nothing to wait for
            self._thread.join(timeout)
        w = self.file_worker
        if not file or w is None or self._thread.is_alive():
            return
        w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if w.error is not None and self.error is None:
            self.error = w.error

    @property
    def running(self) -> bool:
        """The processing thread runs (the files model's thread may still be writing the file: :meth:`join`)."""
        return self._thread.is_alive()

    # ---- processing thread ------------------------------------------------------------------------------------
    def _clock(self) -> float:
        """Device-clock time [s] of the last sample consumed (drops included)."""
        ring = self.source.ring
        return (ring.read_pos + ring.dropped_before(ring.read_pos)) / self.source.sample_rate

    def _true_time(self, t: float) -> float:
        """Stream time (what the transcriber saw) -> device-clock time, adding the drops that came before it."""
        off = 0.0
        for at, o in self._gaps:
            if at <= t:
                off = o
            else:
                break
        return t + off

    def _dispatch(self, events: list, t_emit: float) -> None:
        for e in events:
            t_note = self._true_time(e.time)
            if t_note != e.time:
                e = replace(e, time=t_note)
            v = self.midi.send_event(e)
            self.events_sent += 1
            if self.events_jsonl is not None:
                self.events_jsonl.write(json.dumps({
                    "type": "note_on" if e.kind == "on" else "note_off", "pitch": int(e.pitch),
                    "velocity": int(v), "t_emit": round(t_emit, 6), "t_note": round(t_note, 6)}) + "\n")
            if self.on_event is not None:
                self.on_event(e, t_emit, v)
        if self.file_transcriber is None:
            self._record(events, t_emit)

    def _record(self, events: list, t_emit: float) -> None:
        """The recorder's share of a step: its notes (the live ones, or the files model's) and the clock."""
        if self.recorder is not None:
            self.recorder.add(events if not self._gaps else [replace(e, time=self._true_time(e.time))
                                                             for e in events], now=t_emit)

    def _file_step(self, y: np.ndarray | None, t_emit: float) -> None:
        """The files model's share of a step, after the live events went out: handed to its thread (``y`` None: end
        of stream, not waited for: :meth:`join`)."""
        w = self.file_worker
        if w is None:
            return
        if y is None:
            w.end(t_emit)
        else:
            w.put(y, t_emit)

    def _note_drops(self) -> None:
        ring = self.source.ring
        d = ring.dropped_before(ring.read_pos)
        if d != self._dropped_seen:
            self._dropped_seen = d
            self._offset = d / self.source.sample_rate
            self._gaps.append((ring.read_pos / self.source.sample_rate, self._offset))

    def _process(self, mono: np.ndarray, t0: float) -> None:
        if self.recorder is not None:
            self.recorder.add_audio(mono)
        y = self.resampler.process(mono)
        events = self.transcriber.process(y) if len(y) else []
        self.t_emit = self._clock()
        if events:
            self._dispatch(events, self.t_emit)
        self._file_step(y, self.t_emit)
        self.stats.add(time.perf_counter() - t0)
        self.hops += 1

    def _run(self) -> None:
        src = self.source
        ring = src.ring
        ch = src.channels
        step = self.step_dev
        buf = np.zeros((step, ch), np.float32)
        poll = self.settings.live.poll_ms / 1000.0
        stall = self.settings.live.stall_s
        limit = None if self.duration is None else int(round(self.duration * src.sample_rate))
        last_data = time.monotonic()
        try:
            while not self._stop.is_set():
                failed = src.error  # a failed source has written all it ever will: drain the ring, then raise
                finished = src.finished or failed is not None  # read before `available` (see above)
                n_avail = ring.available
                if limit is not None and ring.read_pos >= limit:
                    self._end_of_input()
                    return
                if n_avail >= step:
                    n = step if limit is None else min(step, limit - ring.read_pos)
                elif finished:
                    if n_avail:
                        n = n_avail
                    else:
                        self._end_of_input()
                        if failed is not None:
                            raise failed
                        return
                else:
                    if not src.is_file and time.monotonic() - last_data > stall:
                        raise InputLost(f"the audio input {src.name!r} delivered nothing for {stall:g} s "
                                         "(unplugged or taken by another program?).")
                    time.sleep(poll)
                    continue
                last_data = time.monotonic()
                t0 = time.perf_counter()
                block = ring.read(n, out=buf)
                self._note_drops()
                mono = block[:, 0].copy() if ch == 1 else block.mean(axis=1, dtype=np.float32)
                peak = float(np.abs(mono).max()) if n else 0.0
                self.level_db = 20.0 * math.log10(peak) if peak > 0 else -math.inf
                self._process(mono, t0)
            # Stopped (Ctrl-C, SIGTERM, error elsewhere): close the sounding notes at the current time.
            self._dispatch(self.transcriber.flush(), self._clock())
            self._file_step(None, self._clock())
        except BaseException as e:  # handed to the main thread, which reports it
            self.error = e
            if self.file_worker is not None:  # the file keeps every note its model has heard so far
                try:
                    self.file_worker.end(self._clock())
                except BaseException:  # the worker's own error: it has ended already
                    pass
        finally:
            if self.events_jsonl is not None:
                try:
                    self.events_jsonl.flush()
                except Exception:
                    pass

    def _end_of_input(self) -> None:
        t0 = time.perf_counter()
        tail = self.resampler.flush()
        events = list(self.transcriber.process(tail)) if len(tail) else []
        events += list(self.transcriber.flush())
        self.t_emit = self._clock()
        if events:
            self._dispatch(events, self.t_emit)
        self.stats.add(time.perf_counter() - t0)
        if self.file_worker is not None:
            self._file_step(tail, self.t_emit)
            self._file_step(None, self.t_emit)
        self.ended = True

    # ---- reporting --------------------------------------------------------------------------------------------
    def report(self) -> dict:
        """Figures for ``--stats-json``: latency budget [ms], per-hop compute [ms], hops, overflows."""
        fm = getattr(getattr(self.file_transcriber, "settings", None), "model", None)  # (a test double has none)
        ring = self.source.ring
        return {
            "model": self.settings.model.name,
            "latency_budget_ms": self.budget,
            "hop_compute_ms": self.stats.summary(),
            "hops_processed": self.hops,
            "overflows": {"ring_overflows": int(ring.overflows), "ring_dropped_samples": int(ring.dropped),
                          "input_overflows": int(getattr(self.source, "overflows", 0))},
            "device_rate": self.source.sample_rate,
            "model_rate": self.settings.audio.sample_rate,
            "input_seconds": round(self._clock(), 6),
            "events_sent": self.events_sent,
            "source": self.source.name,
            # the files model writing kkoma record's file, on its own thread (FileWorker): its compute per step
            "file_model": None if self.file_worker is None else {
                "weights": str(fm and fm.weights_path),
                "ensemble": [str(p) for p in fm.ensemble_paths] if fm else [],
                "ensemble_weights": list(fm.ensemble_weights) if fm else [],
                "latency_budget_ms": _budget_of(self.file_transcriber),
                "step_compute_ms": self.file_worker.stats.summary()},
        }
