"""The streaming transcription network (Keras 3) and its export to the NumPy weights file.

Architecture (one model for onsets, frames and velocities; live == offline exactly)
-------------------------------------------------------------------------------------
::

    features (T, n_bins)                       log-compressed CQT frames (models.cqt), raw
      -> standardise per bin                   (x - mean) * inv_std, statistics of the training shards, frozen
      -> causal Conv1D(input_units, context_frames, relu)   frame s sees frames s-context+1 .. s
      (+ harmonic branch, when model.harmonic_units > 0, joined to the conv's output:)
         for each key, the bins within half a semitone of each of model.harmonics x its frequency, over the same
         context_frames frames: (88, context * H * bins_per_semitone) -> a small network shared by all keys,
         Dense(harmonic_units, relu) -> Dense(harmonic_features, relu) -> g (88, harmonic_features)
         (its features also reach the onset and frame heads per key: + g @ w, w shared by all keys)
      -> LSTM(units), forward                  the only state carried between chunks
      (+ backward LSTM(backward_units), when > 0, on the same input read backwards in time; h = [forward, backward])
      -> onset    = sigmoid(Dense(88)(h))
      -> frame    = sigmoid(Dense(88)([h, stop_gradient(onset)]))   Onsets-and-Frames style: onsets gate lengths
      -> velocity = sigmoid(Dense(88)(h))      MIDI velocity / 127, trained on onset frames only

Look-ahead: the network is causal, and its outputs are *delayed* by ``R = model.lookahead_frames``: the output at
step ``s`` describes frame ``s - R``. Training shifts the labels by ``R`` (:func:`align`), so the LSTM sees R frames
after the frame it labels, and the streaming path (``models.inference``) emits frame ``t`` once frame ``t + R`` has
arrived. The end of a stream is ``R`` frames of raw-zero features (silence), in training and inference alike.

Why the harmonic branch: a dense input layer sees every bin, but it learns each key on its own, and bass keys are
rare in piano music; their recall was 20 % (A1-G#2) where the treble's was 85-93 %, and most false notes were an
octave from a played note. A detector shared by all keys is trained by every note, and it reads a key's partials
and the octave below it side by side, which is what tells a note from its octave neighbour. Its features reach the
onset and frame heads directly as well as through the LSTM, whose 128 units must otherwise carry every key's
evidence.

Why no BiLSTM live: only a forward direction can carry state across chunks (docs/design.md §3). The live model is
forward only (``model.backward_units = 0``): one regime for training, files and live, and a latency of ``R * hop``
plus the transform's. Files need no answer within milliseconds, so the offline model may add the backward direction
of a *latency-controlled* BiLSTM (as in streaming speech recognition): training runs it over each
``window_frames`` crop from a zero state at the crop's end; inference (``models.inference``) runs it over blocks of
``backward_block_frames`` plus ``backward_context_frames`` frames from a zero state at their end, keeping the
block's outputs, so every frame but the last of a piece has at least the context's frames after it, as in training.

TensorFlow/Keras are imported inside the functions so importing this module stays cheap.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kkoma.models.notes import N_KEYS, PIANO_MIN_MIDI

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings

WEIGHTS_FORMAT = 1
#: Output names, in the order of the model's outputs.
OUTPUTS = ("onset", "frame", "velocity")


def architecture(settings: "Settings") -> dict:
    """The settings that fix the network's shape and regime (stored in the weights file). The harmonic branch's
    other keys are recorded only when it is on (``harmonic_units > 0``)."""
    m = settings.model
    a = {"n_bins": settings.cqt.n_bins, "context_frames": m.context_frames, "input_units": m.input_units,
         "units": m.units, "lookahead_frames": m.lookahead_frames, "harmonic_units": m.harmonic_units,
         "backward_units": m.backward_units}
    if m.harmonic_units:
        a["harmonic_features"] = m.harmonic_features
        a["harmonics"] = [float(h) for h in m.harmonics]
    if m.backward_units:
        a["backward_block_frames"] = m.backward_block_frames
        a["backward_context_frames"] = m.backward_context_frames
    return a


def head_input_size(arch: dict) -> int:
    """Width of what the heads read: the forward LSTM's units, plus the backward one's when there is one."""
    return arch["units"] + arch["backward_units"]


def lstm_input_size(arch: dict) -> int:
    """Width of the LSTM's input: the conv's units, plus 88 x harmonic_features with the harmonic branch."""
    return arch["input_units"] + (N_KEYS * arch["harmonic_features"] if arch["harmonic_units"] else 0)


def harmonic_index(settings: "Settings", off: int = -1) -> np.ndarray:
    """Which feature bins the harmonic branch reads for each key: ``(88, H * w)`` int, ``w`` = bins per semitone
    (the bins within half a semitone of each harmonic, harmonic-major); ``off`` (default -1) marks a bin off either
    end of the transform, read as a standardised 0 (the Keras and NumPy paths pass ``n_bins``: a zero column they
    append)."""
    c, m = settings.cqt, settings.model
    bps = c.bins_per_octave / 12.0
    w = max(1, int(round(bps)))
    offsets = np.arange(w) - w // 2
    centres = np.round((np.arange(N_KEYS) + PIANO_MIN_MIDI - c.fmin_midi) * bps).astype(np.int64)  # A0 .. C8
    shifts = np.round(c.bins_per_octave * np.log2(np.asarray(m.harmonics, np.float64))).astype(np.int64)
    idx = centres[:, None, None] + shifts[None, :, None] + offsets[None, None, :]
    idx[(idx < 0) | (idx >= c.n_bins)] = off
    return idx.reshape(N_KEYS, -1)


def array_shapes(settings: "Settings") -> dict[str, tuple]:
    """Name -> shape of every array of the ``.npz`` weights format for these settings."""
    a = architecture(settings)
    u, nb_, ctx, hin = a["units"], a["n_bins"], a["context_frames"], a["input_units"]
    hh = head_input_size(a)
    shapes = {"norm_mean": (nb_,), "norm_inv_std": (nb_,), "context_kernel": (ctx, nb_, hin),
              "context_bias": (hin,), "lstm_kernel": (lstm_input_size(a), 4 * u), "lstm_recurrent": (u, 4 * u),
              "lstm_bias": (4 * u,), "onset_kernel": (hh, N_KEYS), "onset_bias": (N_KEYS,),
              "frame_kernel": (hh + N_KEYS, N_KEYS), "frame_bias": (N_KEYS,), "velocity_kernel": (hh, N_KEYS),
              "velocity_bias": (N_KEYS,)}
    if a["backward_units"]:
        ub = a["backward_units"]
        shapes.update(backward_kernel=(lstm_input_size(a), 4 * ub), backward_recurrent=(ub, 4 * ub),
                      backward_bias=(4 * ub,))
    if a["harmonic_units"]:
        patch = harmonic_index(settings).shape[1]
        hu, hf = a["harmonic_units"], a["harmonic_features"]
        shapes.update(harmonic_kernel=(ctx, patch, hu), harmonic_bias=(hu,), harmonic_out_kernel=(hu, hf),
                      harmonic_out_bias=(hf,), harmonic_onset_kernel=(hf,), harmonic_frame_kernel=(hf,))
    return shapes


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

    class HarmonicPatches(keras.layers.Layer):
        """``(B, T, n_bins)`` standardised -> ``(B, T, 88 * P)``: each key's bins (:func:`harmonic_index` with
        ``off = n_bins``, a zero bin appended at the end)."""

        def __init__(self, index, **kw):
            super().__init__(**kw)
            self.index = np.asarray(index, np.int64).reshape(-1)

        def call(self, x):
            x = keras.ops.concatenate([x, keras.ops.zeros_like(x[..., :1])], axis=-1)
            return keras.ops.take(x, self.index, axis=-1)

    class Reverse(keras.layers.Layer):
        """``(B, T, ...)`` -> the same, reversed in time (around the backward LSTM, so its outputs line up)."""

        def call(self, x):
            return keras.ops.flip(x, axis=1)

    _LAYERS = {"Standardize": Standardize, "StopGradient": StopGradient, "HarmonicPatches": HarmonicPatches,
               "Reverse": Reverse}
    return _LAYERS


_LAYERS = None


def build_model(settings: "Settings", stateful_batch: int | None = None):
    """The Keras model: ``(B, T, n_bins)`` raw features -> dict onset/frame/velocity ``(B, T, 88)`` in
    [0, 1].

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
    layers = make_layers(settings)
    x, g = encode(layers, x)
    h = keras.layers.LSTM(a["units"], return_sequences=True, stateful=stateful, name="lstm")(x)
    if a["backward_units"]:
        if stateful:
            raise ValueError("a backward LSTM cannot be stateful: it runs over blocks (models.inference)")
        h = layers["lstm_join"]([h, backward(layers, x)])
    return keras.Model(inp, heads(layers, h, g), name="kkoma")


def backward(layers: dict, x):
    """The backward direction: LSTM inputs ``(B, T, n_in)`` -> ``(B, T, backward_units)``, the LSTM run from the
    last step to the first (zero state after the last), its outputs in time order."""
    return layers["backward_out"](layers["backward"](layers["backward_in"](x)))


#: The layers :func:`encode` and :func:`heads` apply, in order (the harmonic ones only with the branch).
LAYER_NAMES = ("context", "harmonic_patches", "harmonic_grid", "harmonic_pad", "harmonic_conv", "harmonic_dense",
               "harmonic_flat", "lstm_in", "backward_in", "backward", "backward_out", "lstm_join",
               "onset", "harmonic_onset", "harmonic_onset_flat", "onset_sum", "onset_prob", "onset_stop",
               "frame_in", "frame", "harmonic_frame", "harmonic_frame_flat", "frame_sum", "frame_prob", "velocity")


def make_layers(settings: "Settings") -> dict:
    """New layers of :data:`LAYER_NAMES` for these settings (name -> layer; see :func:`encode`, :func:`heads`)."""
    import keras

    L = _layers()
    a = architecture(settings)
    ctx = a["context_frames"]
    branch = bool(a["harmonic_units"])
    # With the branch, the onset and frame heads add its per-key term to their logits before the sigmoid.
    head_act = None if branch else "sigmoid"
    layers = {"context": keras.layers.Conv1D(a["input_units"], ctx, padding="causal", activation="relu",
                                             name="context"),
              "onset": keras.layers.Dense(N_KEYS, activation=head_act, dtype="float32", name="onset"),
              "onset_stop": L["StopGradient"](name="onset_stop"),
              "frame_in": keras.layers.Concatenate(name="frame_in"),
              "frame": keras.layers.Dense(N_KEYS, activation=head_act, dtype="float32", name="frame"),
              "velocity": keras.layers.Dense(N_KEYS, activation="sigmoid", dtype="float32", name="velocity")}
    if a["backward_units"]:
        layers.update(backward_in=L["Reverse"](name="backward_in"),
                      backward=keras.layers.LSTM(a["backward_units"], return_sequences=True, name="backward"),
                      backward_out=L["Reverse"](name="backward_out"),
                      lstm_join=keras.layers.Concatenate(name="lstm_join"))
    if branch:
        index = harmonic_index(settings, off=a["n_bins"])
        patch = index.shape[1]
        layers.update(
            harmonic_patches=L["HarmonicPatches"](index, name="harmonic_patches"),
            harmonic_grid=keras.layers.Reshape((-1, N_KEYS, patch), name="harmonic_grid"),
            # causal in time, as the conv: frame s sees frames s-context+1 .. s, zeros before the stream
            harmonic_pad=keras.layers.ZeroPadding2D(((ctx - 1, 0), (0, 0)), name="harmonic_pad"),
            harmonic_conv=keras.layers.Conv2D(a["harmonic_units"], (ctx, 1), activation="relu",
                                              name="harmonic_conv"),
            harmonic_dense=keras.layers.Dense(a["harmonic_features"], activation="relu", name="harmonic_dense"),
            harmonic_flat=keras.layers.Reshape((-1, N_KEYS * a["harmonic_features"]), name="harmonic_flat"),
            lstm_in=keras.layers.Concatenate(name="lstm_in"))
        for head in ("onset", "frame"):
            # One weight per branch feature, shared by all keys; zero at first, so the heads start as the LSTM's.
            layers[f"harmonic_{head}"] = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros",
                                                            dtype="float32", name=f"harmonic_{head}")
            layers[f"harmonic_{head}_flat"] = keras.layers.Reshape((-1, N_KEYS), name=f"harmonic_{head}_flat")
            layers[f"{head}_sum"] = keras.layers.Add(name=f"{head}_sum")
            layers[f"{head}_prob"] = keras.layers.Activation("sigmoid", dtype="float32", name=f"{head}_prob")
    return layers


def encode(layers: dict, z):
    """Standardised features ``(B, T, n_bins)`` -> (the LSTM's input ``(B, T, lstm_input_size)``, the harmonic
    branch's per-key features ``(B, T, 88, harmonic_features)`` or None) through ``layers`` (:func:`make_layers`,
    or a built model's own: :func:`model_layers`)."""
    c = layers["context"](z)
    if "harmonic_conv" not in layers:
        return c, None
    g = z
    for name in ("harmonic_patches", "harmonic_grid", "harmonic_pad", "harmonic_conv", "harmonic_dense"):
        g = layers[name](g)
    return layers["lstm_in"]([c, layers["harmonic_flat"](g)]), g


def heads(layers: dict, h, g) -> dict:
    """LSTM outputs ``(B, T, head_input_size)`` and the branch's features (or None) -> dict onset/frame/velocity
    ``(B, T, 88)`` in [0, 1]. The frame head also reads the onset output, with its gradient stopped."""

    def head(name, logits):
        if g is None:
            return logits
        per_key = layers[f"harmonic_{name}_flat"](layers[f"harmonic_{name}"](g))
        return layers[f"{name}_prob"](layers[f"{name}_sum"]([logits, per_key]))

    onset = head("onset", layers["onset"](h))
    frame_in = layers["frame_in"]([h, layers["onset_stop"](onset)])
    frame = head("frame", layers["frame"](frame_in))
    return {"onset": onset, "frame": frame, "velocity": layers["velocity"](h)}


def model_layers(model) -> dict:
    """A built model's own layers of :data:`LAYER_NAMES` (those it has)."""
    names = {layer.name for layer in model.layers}
    return {n: model.get_layer(n) for n in LAYER_NAMES if n in names}


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
    if "backward" in model_layers(model):
        arrays["backward_kernel"], arrays["backward_recurrent"], arrays["backward_bias"] = \
            g("backward").get_weights()
    if "harmonic_conv" in model_layers(model):
        hk, hb = g("harmonic_conv").get_weights()  # (ctx, 1, P, hu)
        arrays.update(harmonic_kernel=hk[:, 0], harmonic_bias=hb)
        arrays["harmonic_out_kernel"], arrays["harmonic_out_bias"] = g("harmonic_dense").get_weights()
        arrays["harmonic_onset_kernel"] = g("harmonic_onset").get_weights()[0][:, 0]
        arrays["harmonic_frame_kernel"] = g("harmonic_frame").get_weights()[0][:, 0]
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
    if "backward" in model_layers(model):
        g("backward").set_weights([a["backward_kernel"], a["backward_recurrent"], a["backward_bias"]])
    if "harmonic_conv" in model_layers(model):
        g("harmonic_conv").set_weights([a["harmonic_kernel"][:, None], a["harmonic_bias"]])
        g("harmonic_dense").set_weights([a["harmonic_out_kernel"], a["harmonic_out_bias"]])
        g("harmonic_onset").set_weights([a["harmonic_onset_kernel"][:, None]])
        g("harmonic_frame").set_weights([a["harmonic_frame_kernel"][:, None]])


def grow_arrays(fresh: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights for a model with the harmonic branch, made from ``old`` weights without it: every array of ``old``
    as it is, the branch's from ``fresh`` (a new model's initialisation), and the LSTM's input rows for the branch
    and its per-key head weights set to zero, so the grown model computes exactly what ``old`` did until training
    moves them.

    fresh : :func:`model_arrays` of the new model; old : arrays of the same model without the branch.
    """
    out = dict(fresh)
    for k, v in old.items():
        if k != "lstm_kernel":
            out[k] = v
    lk = np.zeros_like(fresh["lstm_kernel"])
    lk[:old["lstm_kernel"].shape[0]] = old["lstm_kernel"]
    out["lstm_kernel"] = lk
    for k in ("harmonic_onset_kernel", "harmonic_frame_kernel"):
        out[k] = np.zeros_like(fresh[k])
    return out


def grow_backward(fresh: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights for a model with the backward direction, made from ``old`` weights without it: every array of
    ``old`` as it is; the backward LSTM and the heads' rows that read it from ``fresh`` (a new model's
    initialisation).

    The heads' new rows are not zero: with zero rows the backward LSTM gets no gradient until they grow, and they
    grow slowly (r18a, started that way: after 5 epochs they were 1/30 of the forward rows' size). So the grown
    model starts near ``old``, not at it; zeroing those rows gives ``old`` exactly (tests/test_inference.py).

    fresh : :func:`model_arrays` of the new model; old : arrays of the same model without the backward direction.
    """
    out = dict(fresh)
    u = old["lstm_recurrent"].shape[0]
    for k, v in old.items():
        if k not in ("onset_kernel", "frame_kernel", "velocity_kernel"):
            out[k] = v
    for k in ("onset_kernel", "frame_kernel", "velocity_kernel"):
        grown = fresh[k].copy()
        grown[:u] = old[k][:u]  # the forward LSTM's rows
        if k == "frame_kernel":  # then the onset probabilities' rows, after the backward LSTM's
            grown[grown.shape[0] - N_KEYS:] = old[k][u:]
        out[k] = grown
    return out


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
    from kkoma.models.atomic import atomic_write

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
