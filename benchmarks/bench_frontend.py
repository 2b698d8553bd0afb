"""What a convolutional front end would cost here: training step and inference time of the shipped network beside
Onsets-and-Frames-style stacks of 2-D convolutions across time and frequency, same machine, same run.

The model card names such a front end (convolutions shared across pitch, trained from scratch) as the next step
for timbre generalisation. This prints what one training step and one frame of inference cost on this machine
against the shipped network, so the hours a from-scratch run needs can be worked out from the figures instead of
guessed. The candidates are defined here only (they are not in ``models/``: no weights exist for them):

- ``shipped``: the network of config.toml (``models.network.build_model``: causal Conv1D(3 frames, 256) over the 264
  bins -> LSTM(128) -> heads).
- ``conv_small``: Conv2D(16, 3x3) -> Conv2D(16, 3x3) -> max-pool 3 bins (264 -> 88, one per key) -> Conv2D(32, 3x3)
  -> Dense(256) per frame -> LSTM(128) -> the same heads.
- ``conv_of``: the acoustic stack of Onsets and Frames (Hawthorne et al. 2018) on our 264 bins: Conv2D(32, 3x3) ->
  Conv2D(32, 3x3) -> max-pool 2 -> Conv2D(64, 3x3) -> max-pool 2 -> Dense(512) -> LSTM(128) -> the same heads.

- ``pitch_s``, ``pitch_m``, ``pitch_l``: the network of ``models.network`` itself with its pitch-shared front end, the
  harmonic branch (per key, the 3 bins around 0.5, 1, 1.5, 2, 3 ... 8 x its frequency over the conv's 3 frames,
  through a network shared by all 88 keys, Dense(32 or 64) -> Dense(4, 8 or 16 features per key), whose per-key
  features join the LSTM's input and each key's onset and frame logits), and the files model's backward LSTM (64 or
  128 units) over 100-frame blocks: the settings of :data:`PITCH` (``pitch_s`` is the campaign's,
  ``offline/campaigns/pitch_files.toml``). ``pitch_s_live``: ``pitch_s`` without the backward LSTM (the live
  sibling).

Every convolution is causal in time (3 frames: this one and the two before), as the shipped Conv1D, so each could
stream with the live look-ahead. Batch and crop are the training defaults (``train.batch_size`` x
``model.window_frames``), Adam, float32, TensorFlow on the CPU with its default threads.

For the networks ``models.network`` builds (``shipped`` and the ``pitch_*`` ones) it also times the NumPy/Numba
streaming path that ships (``models.inference``), one BLAS thread, random weights of each shape.

Usage: python benchmarks/bench_frontend.py [--steps N] [--frames N] [--only NAME ...]. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_HARMONICS = "model.harmonics=[0.5, 1, 1.5, 2, 3, 4, 5, 6, 7, 8]"
_FILES = ["model.backward_block_frames=100", "model.backward_context_frames=100"]
#: Pitch-shared candidates: settings overrides of the configured network (``models.network.build_model``).
PITCH = {
    "pitch_s_live": [_HARMONICS, "model.harmonic_units=32", "model.harmonic_features=4", "model.backward_units=0"],
    "pitch_s": [_HARMONICS, "model.harmonic_units=32", "model.harmonic_features=4", "model.backward_units=64",
                *_FILES],
    "pitch_m": [_HARMONICS, "model.harmonic_units=32", "model.harmonic_features=8", "model.backward_units=128",
                *_FILES],
    "pitch_l": [_HARMONICS, "model.harmonic_units=64", "model.harmonic_features=16", "model.backward_units=128",
                *_FILES],
}


def candidate_settings(name: str, settings):
    """The settings of a candidate that ``models.network`` builds (``shipped`` or one of :data:`PITCH`)."""
    return settings.replace(**{o.split("=", 1)[0].replace(".", "__"): o.split("=", 1)[1] for o in PITCH.get(name, [])})


def numpy_frame_seconds(name: str, settings, frames: int, reps: int = 3) -> float | None:
    """Seconds per frame of the NumPy/Numba streaming path (``models.inference.StreamingModel.predict``, what the
    CPU transcriber and the live engine run) for a candidate it can run (None for the others), random weights of its
    shape (the cost does not depend on their values), one BLAS thread (as each file worker runs), best of ``reps``."""
    if name != "shipped" and name not in PITCH:
        return None
    from threadpoolctl import threadpool_limits

    from kkoma.models.inference import StreamingModel, random_arrays

    s = candidate_settings(name, settings)
    model = StreamingModel(s, arrays=random_arrays(s))
    x = np.random.default_rng(0).uniform(0, 5, (frames, s.cqt.n_bins)).astype(np.float32)
    best = np.inf
    with threadpool_limits(limits=1, user_api="blas"):
        model.predict(x[:300])  # Numba compile / load
        for _ in range(reps):
            t0 = time.perf_counter()
            model.predict(x)
            best = min(best, (time.perf_counter() - t0) / frames)
    return best


def candidate(name: str, settings):
    """The Keras model ``name`` (see the module docstring): ``(B, T, n_bins)`` -> onset/frame/velocity ``(B, T, 88)``.
    The candidates end in the shipped network's own LSTM width and heads (``models.network.heads``)."""
    import keras

    from kkoma.models.network import build_model, heads, make_layers

    if name == "shipped":
        return build_model(settings)
    if name in PITCH:
        return build_model(candidate_settings(name, settings))
    # A number is a causal 3x3 convolution with that many channels; ("pool", p) max-pools p bins into one.
    stacks = {"conv_small": ([16, 16, ("pool", 3), 32], 256), "conv_of": ([32, 32, ("pool", 2), 64, ("pool", 2)], 512)}
    stack, dense = stacks[name]
    n_bins = settings.cqt.n_bins
    inp = keras.Input(shape=(None, n_bins), name="features")
    x = keras.layers.Reshape((-1, n_bins, 1))(inp)
    for spec in stack:
        if isinstance(spec, tuple):
            x = keras.layers.MaxPooling2D((1, spec[1]))(x)
        else:
            x = keras.layers.ZeroPadding2D(((2, 0), (1, 1)))(x)  # causal in time, same in frequency
            x = keras.layers.Conv2D(spec, (3, 3), activation="relu")(x)
    x = keras.layers.Reshape((-1, x.shape[2] * x.shape[3]))(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    h = keras.layers.LSTM(settings.model.units, return_sequences=True)(x)
    return keras.Model(inp, heads(make_layers(settings), h, None), name=name)


def measure(name: str, settings, steps: int, frames: int) -> dict:
    """Seconds per training step (batch x window), seconds per frame of inference (one stream, ``frames`` at a
    time), and the trainable parameters."""
    import tensorflow as tf

    from kkoma.models.notes import N_KEYS

    model = candidate(name, settings)
    b, t, nb = settings.train.batch_size, settings.model.window_frames, settings.cqt.n_bins
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 5, (b, t, nb)).astype(np.float32))
    y = {k: tf.constant((rng.random((b, t, N_KEYS)) < 0.05).astype(np.float32)) for k in ("onset", "frame", "velocity")}
    opt = tf.keras.optimizers.Adam(1e-3)
    bce = tf.keras.losses.BinaryCrossentropy()

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = bce(y["onset"], out["onset"]) + bce(y["frame"], out["frame"]) + \
                tf.reduce_mean((out["velocity"] - y["velocity"]) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def infer(z):
        return model(z, training=False)

    for _ in range(3):  # trace and warm up
        train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step()
    step_s = (time.perf_counter() - t0) / steps
    z = tf.constant(rng.uniform(0, 5, (1, frames, nb)).astype(np.float32))
    infer(z)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        infer(z)
    frame_s = (time.perf_counter() - t0) / reps / frames
    n_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return {"step_s": step_s, "frame_s": frame_s, "params": n_params,
            "numpy_s": numpy_frame_seconds(name, settings, frames)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per network")
    ap.add_argument("--frames", type=int, default=2000, help="frames per inference call")
    ap.add_argument("--only", nargs="+", default=["shipped", "conv_small", "conv_of", *PITCH])
    args = ap.parse_args()
    from kkoma.models.settings import load_settings

    s = load_settings()
    print(f"batch {s.train.batch_size} x {s.model.window_frames} frames x {s.cqt.n_bins} bins; "
          f"{os.cpu_count()} CPU cores; TensorFlow float32")
    rows = {name: measure(name, s, args.steps, args.frames) for name in args.only}
    base = rows.get("shipped")
    print(f"{'network':<12} {'parameters':>11} {'train step [s]':>15} {'x shipped':>10} "
          f"{'TF inference [us/frame]':>24} {'x shipped':>10} {'NumPy [us/frame]':>17} {'x shipped':>10}")
    for name, r in rows.items():
        ts = f"{r['step_s'] / base['step_s']:.1f}" if base else "-"
        tf_ = f"{r['frame_s'] / base['frame_s']:.1f}" if base else "-"
        npy = f"{r['numpy_s'] * 1e6:.1f}" if r["numpy_s"] else "-"
        npx = f"{r['numpy_s'] / base['numpy_s']:.1f}" if base and r["numpy_s"] else "-"
        print(f"{name:<12} {r['params']:>11,} {r['step_s']:>15.3f} {ts:>10} {r['frame_s'] * 1e6:>24.1f} {tf_:>10} "
              f"{npy:>17} {npx:>10}")


if __name__ == "__main__":
    main()
