"""The composed pipeline: streaming audio in random block sizes gives exactly the notes of transcribe_audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kkoma.models.inference import export_random_weights
from kkoma.models.notes import events_to_notes
from kkoma.models.pipeline import Transcriber, transcribe_audio
from kkoma.models.settings import load_settings


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # Random weights with thresholds low enough that notes happen (not a musical test).
    base = load_settings(overrides=["model.units=32", "model.input_units=48"])
    path = export_random_weights(tmp_path_factory.mktemp("w") / "w.npz", base, seed=3)
    s = load_settings(overrides=["model.units=32", "model.input_units=48", f"model.weights={path}",
                                 "tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3",
                                 "transcribe.chunk_frames=50"])
    sr = s.audio.sample_rate
    t = np.arange(int(1.3 * sr)) / sr
    rng = np.random.default_rng(0)
    audio = np.zeros_like(t)
    for f0, a, b in ((220.0, 0.1, 0.7), (440.0, 0.3, 1.0), (659.3, 0.6, 1.25)):
        env = ((t >= a) & (t < b)) * np.exp(-3 * np.clip(t - a, 0, None))
        audio += 0.3 * env * np.sin(2 * np.pi * f0 * t)
    audio += 0.01 * rng.standard_normal(len(t))
    return s, audio.astype(np.float32)


def test_streaming_random_blocks_equals_transcribe_audio(setup):
    s, audio = setup
    want = transcribe_audio(audio, s)
    assert len(want) > 0, "the random weights should produce some notes for this test to mean anything"
    tr = Transcriber(s)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tr.reset()
        events, i = [], 0
        while i < len(audio):
            n = int(rng.integers(0, 700))
            events += tr.process(audio[i:i + n])
            i += n
        events += tr.flush()
        assert events_to_notes(events) == want
        # in order per pitch; across pitches an off can be stamped up to the offset hold before an earlier event
        for p in {e.pitch for e in events}:
            times = [e.frame for e in events if e.pitch == p]
            assert times == sorted(times)
        hold = tr.tracker.offset_hold_frames
        assert all(b.frame > a.frame - hold for a, b in zip(events, events[1:]))


def test_hop_by_hop_equals_batch_probabilities(setup):
    """The model's probabilities streamed hop by hop equal those of the batch features (≤ 1e-4)."""
    from kkoma.models.cqt import CQT
    from kkoma.models.inference import StreamingModel

    s, audio = setup
    feats = CQT(s).features(audio)
    sm = StreamingModel(s)
    want = sm.predict(feats)
    inc = CQT(s).incremental()
    hop = s.audio.hop_length
    parts = [sm.process(inc.process(audio[i:i + hop])) for i in range(0, len(audio), hop)]
    parts += [sm.process(inc.flush()), sm.flush()]
    for k in ("onset", "frame", "velocity"):
        got = np.concatenate([p[k] for p in parts])
        assert got.shape == want[k].shape
        assert np.abs(got - want[k]).max() <= 1e-4


def test_transcriber_reuse_and_latency(setup):
    s, audio = setup
    tr = Transcriber(s)
    a = transcribe_audio(audio, s, transcriber=tr)
    b = transcribe_audio(audio, s, transcriber=tr)
    assert a == b
    lat = tr.latency_budget()
    assert lat["model_lookahead_ms"] == pytest.approx(s.model_lookahead_ms)
    assert lat["hop_ms"] == pytest.approx(1000 * s.audio.hop_length / s.audio.sample_rate)
    assert lat["transform_lookahead_ms"] == pytest.approx(tr.cqt.lookahead_ms)
    assert lat["total_ms"] == pytest.approx(lat["transform_lookahead_ms"] + lat["model_lookahead_ms"] + lat["hop_ms"])
    for n in a:
        assert 21 <= n.pitch <= 108 and 0 <= n.onset < n.offset and 1 <= n.velocity <= 127


def test_empty_audio_gives_no_notes(setup):
    s, _ = setup
    assert transcribe_audio(np.zeros(0, np.float32), s) == []


def test_missing_weights_error(tmp_path):
    from kkoma.models.errors import KkomaError

    s = load_settings(overrides=[f"model.weights={tmp_path / 'none.npz'}"])
    with pytest.raises(KkomaError, match="kkoma train"):
        Transcriber(s)


def test_threaded_stream_gives_the_events_of_process_and_flush(setup):
    """Transcriber.stream with decoding and the transform in their own threads == without == process()/flush(),
    block by block."""
    import threading

    s, audio = setup
    blocks = [audio[i:i + 3000] for i in range(0, len(audio), 3000)]
    tr = Transcriber(s)
    want = [(tr.process(b), len(b)) for b in blocks] + [(tr.flush(), 0)]
    assert sum(len(e) for e, _ in want) > 0
    for threaded in (False, True):
        tr.reset()
        assert list(tr.stream(iter(blocks), threaded=threaded)) == want

    # An ensemble's members run on threads of their own in the threaded stream only: the same events.
    from kkoma.models.inference import EnsembleModel

    other = export_random_weights(Path(s.model.weights).with_name("other.npz"), s, seed=4)
    ens = Transcriber(s.replace(model__ensemble=f"[{str(other)!r}]"))
    assert isinstance(ens.model, EnsembleModel)
    want_ens = [(ens.process(b), len(b)) for b in blocks] + [(ens.flush(), 0)]
    assert want_ens != want and not ens.model.parallel and ens.model._pool is None
    for threaded in (False, True):
        ens.reset()
        assert list(ens.stream(iter(blocks), threaded=threaded)) == want_ens
        assert (ens.model._pool is not None) == threaded and not ens.model.parallel

    # An error while producing blocks (e.g. a decode error) reaches the consumer; the threads are gone after.
    def failing():
        yield blocks[0]
        raise ValueError("corrupt block")

    tr.reset()
    with pytest.raises(ValueError, match="corrupt block"):
        list(tr.stream(failing(), threaded=True))
    assert not any(t.name in ("kkoma-features", "kkoma-decode") for t in threading.enumerate())
    # Stopping early (Ctrl-C between blocks) stops the feature thread too.
    tr.reset()
    g = tr.stream(iter(blocks * 20), threaded=True)
    next(g)
    g.close()
    assert not any(t.name in ("kkoma-features", "kkoma-decode") for t in threading.enumerate())


def test_read_ahead_keeps_order_raises_where_it_failed_and_stops_when_closed():
    import threading

    from kkoma.models.pipeline import read_ahead

    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield from range(5)
        raise KeyError("bad item 5")

    got = []
    with pytest.raises(KeyError, match="bad item 5"):
        for x in read_ahead(failing(), name="kkoma-test-ahead"):
            got.append(x)
    assert got == list(range(5))  # every item before the error arrives first

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    g = read_ahead(endless(), depth=2, name="kkoma-test-ahead")
    assert [next(g) for _ in range(3)] == [0, 1, 2]
    g.close()
    assert closed == [True]  # the source was closed, in its own thread, before close() returned
    assert not any(t.name == "kkoma-test-ahead" for t in threading.enumerate())
