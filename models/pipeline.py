"""Audio -> note events: :class:`~models.cqt.IncrementalCQT` -> :class:`~models.inference.StreamingModel` ->
:class:`~models.tracker.NoteTracker`, one streaming object for live and offline alike.

Live feeds :class:`Transcriber` one audio block at a time; :func:`transcribe_audio` feeds the same objects in blocks
of ``transcribe.chunk_frames`` hops. Each stage carries its own state and is exact under any chunking, so both give
identical notes (tests/test_pipeline.py).

Latency (:meth:`Transcriber.latency_budget`): a frame at time ``t`` leaves the transform once audio up to
``t + cqt look-ahead`` has arrived, leaves the model ``model.lookahead_frames`` hops later, and the tracker adds
nothing; an onset between two frames is stamped at the next one, up to one hop later. Audio block buffering and
compute time come on top and are the live driver's to report.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.notes import Note, NoteEvent
    from kkoma.models.settings import Settings


class Transcriber:
    """Streaming transcription: audio blocks (mono float, ``audio.sample_rate``) in, note events out.

    Parameters
    ----------
    settings : kkoma settings.
    weights_path : model weights (default ``settings.model.weights_path``).
    model : a streaming model to use instead of building the NumPy one (e.g. the TensorFlow/GPU
        :class:`models.tf_inference.TFStreamingModel`; same interface, same outputs).

    Attributes
    ----------
    cqt, model, tracker : the three stages, each a :class:`models.stream.Stream` (``process``/``flush``/``reset``),
        as the Transcriber itself is.
    """

    def __init__(self, settings: "Settings", weights_path: str | Path | None = None, model=None):
        from kkoma.models.cqt import CQT
        from kkoma.models.tracker import NoteTracker

        self.settings = settings
        if model is None:
            from kkoma.models.inference import make_streaming_model

            model = make_streaming_model(settings, weights_path)
        self.model = model
        self.cqt = CQT(settings).incremental()
        self.tracker = NoteTracker(settings)

    def reset(self) -> None:
        """Start a new stream (sample 0, frame 0, no state, no sounding notes)."""
        self.cqt.reset()
        self.model.reset()
        self.tracker.reset()

    def _track(self, out: dict[str, np.ndarray]) -> list["NoteEvent"]:
        return self.tracker.process(out["onset"], out["frame"], out["velocity"])

    def process(self, block) -> list["NoteEvent"]:
        """Push ``(n,)`` audio samples (any n ≥ 0) -> the note events that became certain (time-ordered)."""
        features = self.cqt.process(block)
        if features.shape[0] == 0:
            return []
        return self._track(self.model.process(features))

    def flush(self) -> list["NoteEvent"]:
        """End of stream: emit the remaining frames and close every sounding note. :meth:`reset` before reuse."""
        events = []
        features = self.cqt.flush()
        if features.shape[0]:
            events += self._track(self.model.process(features))
        events += self._track(self.model.flush())
        events += self.tracker.flush()
        return events

    def stream(self, blocks: Iterable[np.ndarray], threaded: bool = True) -> Iterator[tuple[list, int]]:
        """Transcribe a whole stream of audio blocks: yields ``(events, n_samples)`` for each block, then
        ``(final events, 0)`` after the flush; the events are exactly those of :meth:`process` + :meth:`flush`.

        ``threaded``: three threads, each one block ahead of the next (:func:`read_ahead`): the iteration over
        ``blocks`` (for a file: decoding and resampling), the transform, and the model + tracker in the calling
        thread. The decoder, the Numba kernels and BLAS release the GIL, so one file keeps two cores busy, and the
        three stages, of similar cost, share them more evenly than two threads would (the transform thread would
        also decode). An exception in any thread ends the stream and is raised here; closing the generator early
        stops the threads.
        """
        # One BLAS thread for the model: beside the other threads, a BLAS pool competing with them was measured
        # 30-40 % slower overall (2 cores, 60 s file: ~240x vs ~340x real time); alone, it spun on the second core
        # for little (one-thread stream on 2 cores: ~10 CPU ms per s of audio against ~6.5).
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=1, user_api="blas")
        # An ensemble's members on threads of their own: else the model thread, running them in turn, is the
        # slowest stage (offline + pitch on 2 cores: 107-110x real time in turn, 125-129x so; compare_peers).
        parallel = getattr(self.model, "parallel", None)
        if threaded and parallel is not None:
            self.model.parallel = True
        try:
            if threaded:
                yield from self._threaded_stream(blocks)
            else:
                yield from plain_stream(self, blocks)
        finally:
            blas.restore_original_limits()
            if parallel is not None:
                self.model.parallel = parallel

    def _threaded_stream(self, blocks: Iterable[np.ndarray]) -> Iterator[tuple[list, int]]:
        def features():
            decoded = read_ahead(blocks, name="kkoma-decode")
            try:
                for block in decoded:
                    yield "features", self.cqt.process(block), len(block)
                yield "last", self.cqt.flush(), 0
            finally:
                decoded.close()

        ahead = read_ahead(features(), name="kkoma-features")
        try:
            for kind, feats, n in ahead:
                events = self._track(self.model.process(feats)) if feats.shape[0] else []
                if kind == "last":  # as flush(): the transform's last frames, the model's look-ahead, the tracker
                    yield events + self._track(self.model.flush()) + self.tracker.flush(), 0
                    return
                yield events, n
        finally:
            ahead.close()

    def latency_budget(self) -> dict[str, float]:
        """Algorithmic latency figures [ms]: transform look-ahead, model look-ahead, hop, and their sum."""
        hop_ms = 1000.0 * self.settings.audio.hop_seconds
        t = float(self.cqt.lookahead_ms)
        m = float(self.model.lookahead_ms)
        return {"transform_lookahead_ms": t, "model_lookahead_ms": m, "hop_ms": hop_ms, "total_ms": t + m + hop_ms}

    @property
    def note_off_delay_ms(self) -> float:
        """How much later than its own time a note-off can be emitted [ms] (``tracker.offset_hold_ms``, in whole
        frames after the first low one): the note-off counterpart of the note-on budget above."""
        return 1000.0 * (self.tracker.offset_hold_frames - 1) / self.settings.audio.frame_rate


def make_transcriber(settings: "Settings", *, live: bool = False) -> Transcriber:
    """The streaming pipeline (resampled audio -> CQT -> model -> tracker) for ``settings``, built once and ``reset()``
    between streams. The one place a pipeline is made: files, ``kkoma live`` / ``record``, the web page.

    On files the model runs where ``transcribe.device`` says (:func:`models.tf_inference.resolve_device`): the
    NumPy/Numba :class:`~models.inference.StreamingModel` on ``cpu`` (TensorFlow never imported), its TensorFlow twin
    on ``gpu``. ``live``: the NumPy model, which answers within one hop, and a model with a backward LSTM (for files:
    its notes come seconds late) is refused in one sentence.
    """
    if live or settings.transcribe.device == "cpu":
        t = Transcriber(settings)
    else:
        from kkoma.models.tf_inference import make_model

        t = Transcriber(settings, model=make_model(settings, settings.transcribe.device))
    if live and getattr(t.model, "backward_units", 0):
        from kkoma.models.errors import KkomaError

        raise KkomaError(f"the model {settings.model.name} has a backward LSTM (model.backward_units = "
                         f"{t.model.backward_units}): it is for files, its notes would come "
                         f"{t.model.lookahead_ms / 1000:.1f} s late; live needs a forward-only model (--model live).")
    return t


def read_ahead(items: Iterable, depth: int = 2, name: str = "kkoma-read-ahead") -> Iterator:
    """``items``, iterated in a background thread up to ``depth`` items ahead of the consumer.

    An exception raised while iterating ``items`` is raised here, in the consumer, after the items before it.
    Closing this generator (or leaving it by an exception) stops the thread and closes ``items``. The thread starts
    at the first ``next()``.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((None, x)):
                    return
            put((None, end))
        except BaseException as e:  # handed to the consumer, which raises it
            put((e, None))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            error, x = q.get()
            if error is not None:
                raise error
            if x is end:
                return
            yield x
    finally:
        stop.set()
        worker.join()


def plain_stream(transcriber, blocks: Iterable[np.ndarray]) -> Iterator[tuple[list, int]]:
    """:meth:`Transcriber.stream` in one thread, for any object with ``process``/``flush`` (test doubles too)."""
    for block in blocks:
        yield transcriber.process(block), len(block)
    yield transcriber.flush(), 0


def transcribe_audio(audio, settings: "Settings", weights_path: str | Path | None = None,
                     transcriber: Transcriber | None = None) -> list["Note"]:
    """Transcribe a whole signal: ``(n,)`` float mono audio at ``audio.sample_rate`` -> notes sorted by onset.

    The signal goes through a (reset) :class:`Transcriber` in blocks of ``transcribe.chunk_frames`` hops, so memory
    stays bounded and the notes are those the live path gives.
    """
    from kkoma.models.notes import events_to_notes

    t = transcriber if transcriber is not None else Transcriber(settings, weights_path)
    t.reset()
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    step = settings.transcribe.chunk_frames * settings.audio.hop_length
    events: list = []
    for i in range(0, len(x), step):
        events += t.process(x[i:i + step])
    events += t.flush()
    return events_to_notes(events)
