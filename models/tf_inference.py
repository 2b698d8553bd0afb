"""Streaming inference in TensorFlow (for a GPU), equal to the NumPy/Numba path of :mod:`models.inference`.

:class:`TFStreamingModel` is a :class:`~models.inference.StreamingModel` whose per-chunk computation runs the Keras
layers of :func:`models.network.build_model`, loaded from the same ``.npz`` weights
(:func:`models.network.set_model_arrays`). Everything else is inherited, so the two paths cannot drift apart: the
weights checks, the look-ahead delay (the first ``lookahead_frames`` outputs dropped), the flush (that many frames
of raw-zero features) and the carried state, which is the same three things held as NumPy arrays between calls:

- the last ``context_frames - 1`` *standardised* input frames, prepended to the next chunk before the causal conv
  and the harmonic branch (zeros at the start of a stream, which is their own causal zero padding), whose first
  ``context - 1`` outputs are then dropped;
- the LSTM's ``h`` and ``c``, passed as its initial state and read back after the chunk;
- with a backward LSTM, the steps waiting for their block (the base class's buffer; here the backward slot holds
  the LSTM's input, which the heads' function runs the backward LSTM over).

A chunk is one call of a traced ``tf.function`` for the forward part and one for the heads (time length free, so no
retracing per chunk size). A stream is sequential in time and is never split; the functions take a batch axis so
that several independent streams could share a call, but the file driver runs one stream (batch 1) per worker.

TensorFlow is imported only when a model is built or a GPU is looked for; :func:`resolve_device` decides ``auto``
without importing it when the machine has no NVIDIA driver.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kkoma.models.errors import KkomaError
from kkoma.models.inference import StreamingModel, make_streaming_model
from kkoma.models.notes import N_KEYS

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings

DEVICES = ("auto", "cpu", "gpu")
# TensorFlow's start-up chatter would bury the progress bar (set before it is imported; a user's value wins).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ----------------------------------------------------------------------------------------------------------------
# Choosing the device
# ----------------------------------------------------------------------------------------------------------------
def nvidia_driver_present() -> bool:
    """Whether an NVIDIA GPU driver is visible, without importing TensorFlow (a few ms; used to settle ``auto``)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        if gpus.is_dir() and any(gpus.iterdir()):
            return True
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def tensorflow_gpus() -> list[str] | None:
    """Names of the GPUs TensorFlow can use ([] for none), or None when TensorFlow is not installed."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def resolve_device(device: str) -> str:
    """``auto`` / ``cpu`` / ``gpu`` -> ``cpu`` or ``gpu``.

    ``auto`` is ``gpu`` when TensorFlow sees a GPU, else ``cpu``; with no NVIDIA driver on the machine it is ``cpu``
    at once, without importing TensorFlow.

    Raises
    ------
    KkomaError : ``gpu`` was asked for and TensorFlow cannot use one (not installed, or no GPU visible to it).
    """
    if device not in DEVICES:
        raise KkomaError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}.")
    if device == "cpu" or (device == "auto" and not nvidia_driver_present()):
        return "cpu"
    gpus = tensorflow_gpus()
    if gpus:
        return "gpu"
    if device == "auto":
        return "cpu"
    why = ("TensorFlow is not installed" if gpus is None else
           "TensorFlow sees none (no NVIDIA driver, or a CPU-only TensorFlow: install tensorflow[and-cuda])")
    raise KkomaError(f"--device gpu needs a GPU that TensorFlow can use, but {why}; use --device cpu or auto.")


def _gpu_memory_growth() -> None:
    """Let several worker processes share one GPU: each takes memory as it needs it, not the whole card."""
    import tensorflow as tf

    for g in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(g, True)
        except (RuntimeError, ValueError):  # already initialised in this process: keep its setting
            pass


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
class TFStreamingModel(StreamingModel):
    """:class:`models.inference.StreamingModel` computed by TensorFlow (on the GPU when there is one).

    Same constructor, ``process``/``flush``/``reset``/``predict``, counters and outputs (to float32 rounding; the
    test bounds the difference by 1e-4).
    """

    def __init__(self, settings: "Settings", weights_path: str | Path | None = None,
                 arrays: dict[str, np.ndarray] | None = None):
        super().__init__(settings, weights_path, arrays)
        settings = self.settings
        _gpu_memory_growth()
        import keras
        import tensorflow as tf

        # TensorFloat-32 (on by default on Ampere and later) rounds matmul inputs to 10 mantissa bits, ~1e-3 off
        # the NumPy path: enough to move a note across a threshold. Full float32 keeps the notes identical.
        tf.config.experimental.enable_tensor_float_32_execution(False)

        from kkoma.models import network

        # Inference in float32 whatever policy a training run in this process set (mixed precision).
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            model = network.build_model(settings)
            # A twin of the model's LSTM that takes and returns its state (the model's own returns neither).
            lstm = keras.layers.LSTM(self.units, return_sequences=True, return_state=True, name="lstm_stream")
            lstm.build((None, None, network.lstm_input_size(network.architecture(settings))))
        finally:
            keras.config.set_dtype_policy(policy)
        network.set_model_arrays(model, self._a)
        lstm.set_weights(model.get_layer("lstm").get_weights())
        self.keras_model = model
        std, layers = model.get_layer("standardize"), network.model_layers(model)
        keep = self.context - 1
        nb_, u = self.n_bins, self.units
        harmonic, backward = self.harmonic, bool(self.backward_units)

        @tf.function(input_signature=[tf.TensorSpec((None, None, nb_), tf.float32),
                                      tf.TensorSpec((None, keep, nb_), tf.float32),
                                      tf.TensorSpec((None, u), tf.float32), tf.TensorSpec((None, u), tf.float32)],
                     reduce_retracing=True)
        def forward(x, hist, h, c):
            """x (B, k, n_bins) raw features; hist (B, context-1, n_bins) standardised; h, c (B, units)."""
            xx = tf.concat([hist, std(x)], axis=1)
            z, g = network.encode(layers, xx)
            z = z[:, keep:]
            hs, h2, c2 = lstm(z, initial_state=[h, c])
            out = {"hs": hs, "hist": xx[:, tf.shape(xx)[1] - keep:], "h": h2, "c": c2}
            if backward:
                out["z"] = z
            if harmonic:
                out["g"] = g[:, keep:]
            return out

        arch = network.architecture(settings)
        specs = [tf.TensorSpec((None, None, u), tf.float32)]
        if backward:
            specs.append(tf.TensorSpec((None, None, network.lstm_input_size(arch)), tf.float32))
        if harmonic:
            specs.append(tf.TensorSpec((None, None, N_KEYS, arch["harmonic_features"]), tf.float32))

        @tf.function(input_signature=specs, reduce_retracing=True)
        def finish(hs, *rest):
            """hs (B, k, units) forward outputs[, z (B, k, n_in) the LSTM's input][, g (B, k, 88, hf)] -> the heads'
            outputs, after the backward LSTM over all k steps (from a zero state after the last)."""
            if backward:
                hs = layers["lstm_join"]([hs, network.backward(layers, rest[0])])
            return network.heads(layers, hs, rest[-1] if harmonic else None)

        self._tf_forward, self._tf_finish = forward, finish

    def _forward(self, features: np.ndarray) -> tuple:
        """As the NumPy path's, but the backward slot holds the LSTM's input ``(k, n_in)`` (TF projects it)."""
        r = self._tf_forward(features[None], self._hist[None], self.h[None], self.c[None])
        self._hist = r["hist"].numpy()[0]
        self.h = r["h"].numpy()[0]
        self.c = r["c"].numpy()[0]
        return tuple(r[k].numpy()[0] if k in r else None for k in ("hs", "z", "g"))

    def _finish(self, rows: tuple, n: int) -> dict[str, np.ndarray]:
        out = self._tf_finish(*(r[None] for r in rows if r is not None))
        return {k: out[k].numpy()[0, :n] for k in self.outputs}


def tf_probabilities(features, settings: "Settings", weights_path: str | Path | None = None,
                     arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Whole-piece TensorFlow inference (in ``transcribe.chunk_frames`` chunks, state carried, flushed):
    ``(n, n_bins)`` raw features -> dict onset/frame/velocity ``(n, 88)``, as ``StreamingModel.predict``."""
    return TFStreamingModel(settings, weights_path, arrays).predict(features)


def make_model(settings: "Settings", device: str, weights_path: str | Path | None = None):
    """The streaming model for ``device`` (``auto`` is resolved here): NumPy on ``cpu``, TensorFlow on ``gpu``."""
    gpu = resolve_device(device) == "gpu"
    return make_streaming_model(settings, weights_path, TFStreamingModel if gpu else StreamingModel)

