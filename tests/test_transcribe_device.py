"""``kkoma transcribe --device``: the TensorFlow inference path equals the NumPy one; choosing the device.

The TF path (:mod:`models.tf_inference`) is what runs on a GPU; here it runs on the CPU (TensorFlow places it
there) with tiny random weights, which checks the plumbing and the equality, never musical accuracy.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from kkoma.cli import main
from kkoma.models.errors import KkomaError
from kkoma.models.inference import StreamingModel, export_random_weights
from kkoma.models.settings import load_settings

pytest.importorskip("tensorflow")
import kkoma.models.tf_inference as TI  # noqa: E402

# Random weights: thresholds of their own (the shipped ones are tuned for the trained model), so notes happen.
TINY = ["model.units=12", "model.input_units=20", "tracker.onset_threshold=0.5", "tracker.frame_threshold=0.3"]
KEYS = ("onset", "frame", "velocity")


def _audio(sr, seconds=3.0):
    """A few overlapping piano-range tones with decaying envelopes (the CQT sees something note-like)."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for start, midi in ((0.2, 60), (0.7, 64), (1.1, 67), (1.9, 48), (2.3, 72)):
        f = 440.0 * 2 ** ((midi - 69) / 12)
        on = t >= start
        x[on] += 0.3 * np.sin(2 * np.pi * f * (t[on] - start)) * np.exp(-3.0 * (t[on] - start))
    return x.astype(np.float32)


def _settings(tmp_path, extra=(), seed=0):
    s = load_settings(overrides=TINY + list(extra))
    path = export_random_weights(tmp_path / f"w{seed}.npz", s, seed=seed)
    return load_settings(overrides=TINY + list(extra) + [f"model.weights={path}"])


@pytest.mark.parametrize("extra", [["model.context_frames=3", "model.lookahead_frames=2", "transcribe.chunk_frames=37",
                                    "model.harmonic_units=5", "model.harmonic_features=2"],
                                   ["model.context_frames=1", "model.lookahead_frames=0", "transcribe.chunk_frames=50",
                                    "model.harmonic_units=0"],
                                   # the offline model's backward LSTM: blocks of 45 + 15 steps across chunks of 37
                                   ["model.context_frames=3", "model.lookahead_frames=2", "transcribe.chunk_frames=37",
                                    "model.harmonic_units=0", "model.backward_units=6",
                                    "model.backward_block_frames=45", "model.backward_context_frames=15"],
                                   # the pitch-shared files model: harmonic branch (octave below, fifth) + backward
                                   ["model.context_frames=3", "model.lookahead_frames=2", "transcribe.chunk_frames=37",
                                    "model.harmonic_units=5", "model.harmonic_features=3",
                                    "model.harmonics=[0.5, 1, 1.5, 2, 3, 4]", "model.backward_units=6",
                                    "model.backward_block_frames=45", "model.backward_context_frames=15"]])
def test_tf_probabilities_equal_numpy(tmp_path, extra):
    """Chunked, stateful TF inference (conv context and LSTM state carried, look-ahead flushed) == NumPy path; the
    TF model built from the weights file's architecture, not the settings' (no model.* given to it)."""
    from kkoma.models.cqt import CQT

    s = _settings(tmp_path, extra)
    f = CQT(s).features(_audio(s.audio.sample_rate))
    assert f.shape[0] > 3 * s.transcribe.chunk_frames  # several chunks, so state crosses chunk boundaries
    want = StreamingModel(s).predict(f)
    plain = load_settings(overrides=TINY + [o for o in extra if o.startswith("transcribe.")]
                          + [f"model.weights={s.model.weights}"])
    got = TI.tf_probabilities(f, plain)
    assert tuple(got) == tuple(want) == KEYS
    for k in want:
        assert got[k].shape == want[k].shape == (f.shape[0], 88)
        assert np.abs(got[k] - want[k]).max() <= 1e-4, k


def test_tf_model_in_the_pipeline_gives_identical_notes(tmp_path):
    from kkoma.models.pipeline import Transcriber, transcribe_audio

    s = _settings(tmp_path, ["transcribe.chunk_frames=64"], seed=3)
    audio = _audio(s.audio.sample_rate)
    want = transcribe_audio(audio, s)
    tf_model = TI.TFStreamingModel(s)
    got = transcribe_audio(audio, s, transcriber=Transcriber(s, model=tf_model))
    assert len(want) > 0
    assert got == want
    # Reused for a second stream after reset: no state leaks from the first.
    assert transcribe_audio(audio[: len(audio) // 2], s, transcriber=Transcriber(s, model=tf_model)) == \
        transcribe_audio(audio[: len(audio) // 2], s)


def test_cli_device_gpu_path_writes_the_cpu_notes(tmp_path, monkeypatch, capsys):
    """``--device gpu`` end to end, with TensorFlow made to believe in a GPU (it then runs on the CPU)."""
    import soundfile as sf

    s = _settings(tmp_path, seed=5)
    wav = tmp_path / "in.wav"
    sf.write(str(wav), _audio(s.audio.sample_rate), s.audio.sample_rate)
    common = [a for o in TINY for a in ("--set", o)] + [
        "--set", "transcribe.overrides=[]",  # the tiny weights' settings, not the offline model's
        "--set", f"model.weights={s.model.weights_path}", "--set", "transcribe.jobs=1",
        "transcribe", str(wav), "-f", "json", "-q"]
    assert main(common + ["-o", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    monkeypatch.setattr(TI, "tensorflow_gpus", lambda: ["/physical_device:GPU:0 (pretend)"])
    built = []
    real = TI.TFStreamingModel

    def spy(*a, **kw):
        built.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(TI, "TFStreamingModel", spy)
    assert main(common + ["-o", str(tmp_path / "gpu"), "--device", "gpu"]) == 0
    assert built, "the TensorFlow model was not used"
    cpu = json.loads((tmp_path / "cpu" / "in.json").read_text())["notes"]
    assert cpu and json.loads((tmp_path / "gpu" / "in.json").read_text())["notes"] == cpu


@pytest.mark.parametrize("gpus,why", [([], "TensorFlow sees none"), (None, "TensorFlow is not installed")])
def test_device_gpu_without_a_gpu_is_one_clear_error(monkeypatch, tmp_path, capsys, gpus, why):
    monkeypatch.setattr(TI, "tensorflow_gpus", lambda: gpus)
    with pytest.raises(KkomaError, match=why) as e:
        TI.resolve_device("gpu")
    msg = str(e.value)
    assert msg.count(". ") == 0 and msg.endswith(".") and "--device cpu" in msg
    assert TI.resolve_device("auto") == "cpu"  # auto falls back quietly
    assert main(["transcribe", str(tmp_path / "none.wav"), "--device", "gpu"]) == 1
    assert why in capsys.readouterr().err


def test_auto_without_nvidia_driver_does_not_ask_tensorflow(monkeypatch):
    def boom():
        raise AssertionError("TensorFlow consulted although no NVIDIA driver is present")

    monkeypatch.setattr(TI, "nvidia_driver_present", lambda: False)
    monkeypatch.setattr(TI, "tensorflow_gpus", boom)
    assert TI.resolve_device("auto") == "cpu"
    assert TI.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(TI, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(TI, "tensorflow_gpus", lambda: ["gpu0"])
    assert TI.resolve_device("auto") == "gpu"
