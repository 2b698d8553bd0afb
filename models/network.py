"""The streaming transcription network (Keras 3) and its export to the NumPy weights file.

Architecture (one model for onsets, frames and velocities; live == offline exactly)
-------------------------------------------------------------------------------------
::

    features (T, n_bins)                       log-compressed CQT frames (models.cqt), raw
      -> standardise per bin                   (x - mean) * inv_std, statistics of the training shards, frozen
      -> causal Conv1D(input_units, context_frames, relu)   frame s sees frames s-context+1 .. s
      -> LSTM(units), forward only             the only state carried between chunks
      -> onset    = sigmoid(Dense(88)(h))
      -> frame    = sigmoid(Dense(88)([h, stop_gradient(onset)]))   Onsets-and-Frames style: onsets gate lengths
      -> velocity = sigmoid(Dense(88)(h))      MIDI velocity / 127, trained on onset frames only

Look-ahead: the network is causal, and its outputs are *delayed* by ``R = model.lookahead_frames``: the output at
step ``s`` describes frame ``s - R``. Training shifts the labels by ``R`` (:func:`align`), so the LSTM sees R frames
after the frame it labels, and the streaming path (``models.inference``) emits frame ``t`` once frame ``t + R`` has
arrived. The end of a stream is ``R`` frames of raw-zero features (silence), in training and inference alike.

Why not a BiLSTM: only a forward direction can carry state across chunks (DESIGN.md §3); this model has one regime
for training, offline and live, and its latency is ``R * hop`` plus the transform's.

TensorFlow/Keras are imported inside the functions so importing this module stays cheap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.notes import N_KEYS

if TYPE_CHECKING:  # pragma: no cover
    from models.settings import Settings

WEIGHTS_FORMAT = 1
#: Output names, in the order of the model's outputs.
OUTPUTS = ("onset", "frame", "velocity")


def architecture(settings: "Settings") -> dict:
    """The settings that fix the network's shape and regime (stored in the weights file)."""
    m = settings.model
    return {"n_bins": settings.cqt.n_bins, "context_frames": m.context_frames, "input_units": m.input_units,
            "units": m.units, "lookahead_frames": m.lookahead_frames}


def align(features: np.ndarray, labels: dict[str, np.ndarray], lookahead: int) -> tuple[np.ndarray, dict]:
    """A piece in the model's regime: ``lookahead`` zero frames appended to the features, labels delayed by it.

    Parameters
    ----------
    features : (n, n_bins) raw features of a whole piece.
    labels : name -> (n, 88) arrays.
    lookahead : R [frames].

    Returns
    -------
    features (n + R, n_bins) and labels (n + R, 88): step ``s`` carries the labels of frame ``s - R`` (zeros for
    the R steps before the piece, where nothing sounds).
    """
    n = features.shape[0]
    f = np.concatenate([features, np.zeros((lookahead, features.shape[1]), features.dtype)])
    out = {k: np.concatenate([np.zeros((lookahead,) + v.shape[1:], v.dtype), v]) for k, v in labels.items()}
    assert all(v.shape[0] == n + lookahead for v in out.values())
    return f, out


def _layers():
    """Custom layers, defined once TF is imported."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    import keras

    class Standardize(keras.layers.Layer):
        """``(x - mean) * inv_std`` per bin with frozen statistics (float32 even under mixed precision)."""

        def __init__(self, n_bins, **kw):
            super().__init__(**kw)
            self.n_bins = n_bins

        def build(self, input_shape):
            self.mean = self.add_weight(shape=(self.n_bins,), initializer="zeros", trainable=False, name="mean")
            self.inv_std = self.add_weight(shape=(self.n_bins,), initializer="ones", trainable=False,
                                           name="inv_std")

        def call(self, x):
            x = keras.ops.cast(x, "float32")
            return keras.ops.cast((x - self.mean) * self.inv_std, self.compute_dtype)

    class StopGradient(keras.layers.Layer):
        """The onset probabilities as an input to the frame head, without training the onset head through it."""

        def call(self, x):
            return keras.ops.stop_gradient(keras.ops.cast(x, self.compute_dtype))

    _LAYERS = {"Standardize": Standardize, "StopGradient": StopGradient}
    return _LAYERS


_LAYERS = None


def build_model(settings: "Settings", stateful_batch: int | None = None):
    """The Keras model: ``(B, T, n_bins)`` raw features -> dict onset/frame/velocity ``(B, T, 88)`` in [0, 1].

    Parameters
    ----------
    stateful_batch : None for training (state starts at zero for every sequence); an int builds a stateful model
        with that fixed batch size (kept for experiments; the streaming path is ``models.inference``).
    """
    import keras

    L = _layers()
    a = architecture(settings)
    stateful = stateful_batch is not None
    if stateful:
        inp = keras.Input(batch_shape=(stateful_batch, None, a["n_bins"]), name="features")
    else:
        inp = keras.Input(shape=(None, a["n_bins"]), name="features")
    x = L["Standardize"](a["n_bins"], name="standardize")(inp)
    x = keras.layers.Conv1D(a["input_units"], a["context_frames"], padding="causal", activation="relu",
                            name="context")(x)
    h = keras.layers.LSTM(a["units"], return_sequences=True, stateful=stateful, name="lstm")(x)
    onset = keras.layers.Dense(N_KEYS, activation="sigmoid", dtype="float32", name="onset")(h)
    gate = L["StopGradient"](name="onset_stop")(onset)
    hf = keras.layers.Concatenate(name="frame_in")([h, gate])
    frame = keras.layers.Dense(N_KEYS, activation="sigmoid", dtype="float32", name="frame")(hf)
    velocity = keras.layers.Dense(N_KEYS, activation="sigmoid", dtype="float32", name="velocity")(h)
    return keras.Model(inp, {"onset": onset, "frame": frame, "velocity": velocity}, name="kkoma")


def set_normalization(model, mean: np.ndarray, std: np.ndarray) -> None:
    """Store the per-bin feature statistics (``(n_bins,)`` each) in the model's frozen standardisation layer."""
    layer = model.get_layer("standardize")
    inv = 1.0 / np.maximum(np.asarray(std, np.float64), 1e-3)
    layer.set_weights([np.asarray(mean, np.float32), inv.astype(np.float32)])


def model_arrays(model) -> dict[str, np.ndarray]:
    """The model's weights as the named float32 arrays of the ``.npz`` format (see ``models.inference``)."""
    g = model.get_layer
    mean, inv_std = g("standardize").get_weights()
    ck, cb = g("context").get_weights()
    lk, lr, lb = g("lstm").get_weights()
    ok, ob = g("onset").get_weights()
    fk, fb = g("frame").get_weights()
    vk, vb = g("velocity").get_weights()
    arrays = dict(norm_mean=mean, norm_inv_std=inv_std, context_kernel=ck, context_bias=cb, lstm_kernel=lk,
                  lstm_recurrent=lr, lstm_bias=lb, onset_kernel=ok, onset_bias=ob, frame_kernel=fk,
                  frame_bias=fb, velocity_kernel=vk, velocity_bias=vb)
    return {k: np.asarray(v, np.float32) for k, v in arrays.items()}


def set_model_arrays(model, arrays: dict[str, np.ndarray]) -> None:
    """The inverse of :func:`model_arrays`: load the named ``.npz`` arrays into the model's layers (shapes must
    match the model's architecture; Keras raises ValueError otherwise)."""
    a = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    g = model.get_layer
    g("standardize").set_weights([a["norm_mean"], a["norm_inv_std"]])
    g("context").set_weights([a["context_kernel"], a["context_bias"]])
    g("lstm").set_weights([a["lstm_kernel"], a["lstm_recurrent"], a["lstm_bias"]])
    g("onset").set_weights([a["onset_kernel"], a["onset_bias"]])
    g("frame").set_weights([a["frame_kernel"], a["frame_bias"]])
    g("velocity").set_weights([a["velocity_kernel"], a["velocity_bias"]])


def settings_record(settings: "Settings") -> dict:
    """What the weights file stores about the settings it was trained with (checked on load).

    The ``audio.resample_*`` keys are left out: they shape only inputs at other rates on their way to
    ``audio.sample_rate``, not the features the network was trained on, so a new filter does not void trained weights.
    """
    import dataclasses

    audio = {k: v for k, v in dataclasses.asdict(settings.audio).items() if not k.startswith("resample_")}
    return {"audio": audio, "cqt": dataclasses.asdict(settings.cqt), "model": architecture(settings)}


def save_weights_npz(path: str | Path, arrays: dict[str, np.ndarray], settings: "Settings",
                     summary: dict[str, Any] | None = None) -> Path:
    """Write the NumPy weights file atomically: ``arrays`` + a JSON ``meta`` record (format, settings, summary)."""
    from models.atomic import atomic_write

    path = Path(path)
    meta = {"format": WEIGHTS_FORMAT, "settings": settings_record(settings), "summary": summary or {}}
    atomic_write(path, lambda tmp: np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays))
    return path


def export_npz(model, path: str | Path, settings: "Settings", summary: dict[str, Any] | None = None) -> Path:
    """Export a trained Keras model to the ``.npz`` read by :class:`models.inference.StreamingModel`."""
    return save_weights_npz(path, model_arrays(model), settings, summary)


def count_params(arrays: dict[str, np.ndarray]) -> int:
    """Trainable parameters in an exported weight set (the frozen standardisation statistics excluded)."""
    return int(sum(v.size for k, v in arrays.items() if not k.startswith("norm_")))
