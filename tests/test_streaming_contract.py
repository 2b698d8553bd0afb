"""Every streaming stage keeps the contract of ``models.stream.Stream`` (process / flush / reset):

- it is a ``Stream`` (the three methods, ``flush`` and ``reset`` taking no argument);
- any chunking of its input (empty chunks included) followed by ``flush`` gives the outputs of the whole input;
- after ``reset`` (mid-stream, or after ``flush``) it gives exactly what a new object gives.

The stages are found by looking at every class of the package that has the three methods, so a new stage cannot
be left out: it has to be listed in ``STAGES`` (with inputs to feed it) or in ``NOT_STAGES`` (with the reason).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest

from kkoma.models.audio import load_audio
from kkoma.models.settings import load_settings
from kkoma.models.stream import Stream

S = load_settings()
ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(7)


# ---- inputs: a few seconds of the bundled example, and what each stage makes of it -------------------------------
@pytest.fixture(scope="module")
def streams():
    from kkoma.models.cqt import CQT
    from kkoma.models.inference import StreamingModel

    audio = load_audio(ROOT / "examples" / "example.flac", S)[: 4 * S.audio.sample_rate]
    features = CQT(S).features(audio)
    probs = StreamingModel(S).predict(features)
    return {"audio": audio, "features": features, "probs": probs}


def _resampler():
    from kkoma.models.resample import Resampler

    return Resampler(44100, S.audio.sample_rate, S)


def _cqt():
    from kkoma.models.cqt import CQT

    return CQT(S).incremental()


def _model():
    from kkoma.models.inference import StreamingModel

    return StreamingModel(S)


def _ensemble():  # the live model and the harmonic one: both read the live transform
    from kkoma.models.inference import make_streaming_model

    return make_streaming_model(S.replace(model__ensemble='["models/weights/kkoma_harmonic.npz"]',
                                          model__ensemble_weights="[3, 1]"))


def _tracker():
    from kkoma.models.tracker import NoteTracker

    return NoteTracker(S)


def _transcriber():
    from kkoma.models.pipeline import Transcriber

    return Transcriber(S)


# name -> (factory, inputs from the fixture: a tuple of arrays chunked together along their first axis)
STAGES = {
    "kkoma.models.resample.Resampler": (_resampler, lambda s: (np.repeat(s["audio"], 2)[:44100 * 3],)),
    "kkoma.models.cqt.IncrementalCQT": (_cqt, lambda s: (s["audio"],)),
    "kkoma.models.inference.StreamingModel": (_model, lambda s: (s["features"],)),
    "kkoma.models.inference.EnsembleModel": (_ensemble, lambda s: (s["features"],)),
    "kkoma.models.tracker.NoteTracker": (_tracker, lambda s: (s["probs"]["onset"], s["probs"]["frame"],
                                                              s["probs"]["velocity"])),
    "kkoma.models.pipeline.Transcriber": (_transcriber, lambda s: (s["audio"],)),
}
# Classes with process / flush / reset that are checked elsewhere, and why.
NOT_STAGES = {
    # The same streaming code as StreamingModel run in TensorFlow: tests/test_transcribe_device.py checks it gives
    # StreamingModel's outputs (so this contract) within 1e-4; here only its interface is checked.
    "kkoma.models.tf_inference.TFStreamingModel": "interface only",
}


def _classes_with_the_three_methods():
    import kkoma.models
    import kkoma.offline
    import kkoma.realtime

    found = {}
    infos = [info for pkg in (kkoma.models, kkoma.offline, kkoma.realtime)
             for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]
    for info in infos:
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency of a driver (e.g. sounddevice without PortAudio)
            continue
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and cls.__module__ == info.name and cls is not Stream and \
                    all(callable(getattr(cls, m, None)) for m in ("process", "flush", "reset")):
                found[f"{info.name}.{name}"] = cls
    return found


def test_every_stage_is_listed_and_is_a_stream():
    found = _classes_with_the_three_methods()
    assert set(STAGES) <= set(found), set(STAGES) - set(found)
    unlisted = set(found) - set(STAGES) - set(NOT_STAGES)
    assert not unlisted, f"new streaming classes: list them in STAGES or NOT_STAGES: {sorted(unlisted)}"
    for name, cls in found.items():
        for method in ("flush", "reset"):
            params = list(inspect.signature(getattr(cls, method)).parameters)
            assert params == ["self"], f"{name}.{method} takes {params[1:]}"
        params = list(inspect.signature(cls.process).parameters.values())[1:]
        assert params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD), name


def _concat(parts):
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    assert isinstance(first, list), type(first)
    return [e for p in parts for e in p]


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    else:
        assert a == b


def _run(stage, inputs, cuts):
    """``process`` over the pieces between ``cuts`` (indices along the first axis), then ``flush``."""
    edges = [0, *cuts, len(inputs[0])]
    outs = [stage.process(*(x[a:b] for x in inputs)) for a, b in zip(edges[:-1], edges[1:])]
    return _concat(outs + [stage.flush()])


def _cuts(n, max_piece):
    cuts, i = [], 0
    while True:
        i += int(RNG.integers(0, max_piece))  # 0: an empty piece
        if i >= n:
            return cuts
        cuts.append(i)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_keeps_the_contract(name, streams):
    make, feed = STAGES[name]
    inputs = feed(streams)
    stage = make()
    assert isinstance(stage, Stream)
    whole = _run(stage, inputs, [])
    assert len(whole) if not isinstance(whole, dict) else len(whole["onset"])  # it made something to compare
    n = len(inputs[0])
    for max_piece in (max(2, n // 40), max(2, n // 3)):
        stage.reset()
        _same(_run(stage, inputs, _cuts(n, max_piece)), whole)
    # reset mid-stream: the half-fed state is forgotten
    stage.reset()
    stage.process(*(x[: n // 2] for x in inputs))
    stage.reset()
    _same(_run(stage, inputs, [n // 3]), whole)
    # a new object agrees
    _same(_run(make(), inputs, [n // 2]), whole)
