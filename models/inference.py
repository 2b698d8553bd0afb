"""Streaming inference in NumPy (+ one Numba kernel) from the exported ``.npz`` weights; no TensorFlow.

The network is the one of :mod:`models.network` (read its notes): per-bin standardisation, a causal conv over the
last ``context_frames`` frames, one forward LSTM (and, in an offline model, a backward one), three sigmoid heads.
Everything but the LSTM recurrence is vectorised over the frames of a chunk; the recurrence runs in a Numba loop.
State carried between calls: the last ``context_frames - 1`` standardised frames, the LSTM's ``h`` and ``c``, the
step counters, and with a backward LSTM the forward results of the steps still waiting for their block's backward
run, so feeding a piece in chunks of any size gives the same outputs as feeding it whole (tests/test_inference.py,
and equal to TF there).

Look-ahead: outputs are delayed by ``R = model.lookahead_frames``. After ``n`` input frames, ``max(0, n - R)``
output frames have been emitted (frame ``t`` once frame ``t + R`` has arrived); :meth:`StreamingModel.flush` feeds
R frames of silence (raw zero features, as in training) to emit the last R.

Backward direction (``model.backward_units > 0``, files only): steps wait in a buffer until a block of
``B = backward_block_frames`` steps and the ``C = backward_context_frames`` after it have arrived; the backward LSTM
then runs over those B + C steps from a zero state after the last, and the B steps' outputs are emitted. The flush
runs it over whatever is left, from the end of the stream (as training does at a piece's end). So outputs come up
to B + C + R frames after their input; ``frames_out`` counts them.

Weights file (``.npz``; written by :func:`models.network.save_weights_npz`)
-----------------------------------------------------------------------------
``meta``: JSON string ``{"format", "settings": {"audio": {...}, "cqt": {...}, "model": {n_bins, context_frames,
input_units, units, lookahead_frames, harmonic_units[, harmonic_features, harmonics], backward_units[,
backward_block_frames, backward_context_frames]}}, "summary": {...}}`` (files written before the offset head was
removed also hold ``offset_head``: false loads, true is refused);
arrays (float32; :func:`models.network.array_shapes`)::

    norm_mean, norm_inv_std (n_bins,)         context_kernel (context, n_bins, input_units), context_bias
    lstm_kernel (n_in, 4u), lstm_recurrent (u, 4u), lstm_bias (4u,)   gates i, f, c, o (Keras order); n_in =
        input_units, + 88 * harmonic_features with the harmonic branch (its rows after the conv's)
    onset_kernel (u', 88), frame_kernel (u' + 88, 88), velocity_kernel (u', 88), and their biases (88,); u' = u
        (+ ub with the backward LSTM: its rows after the forward one's)
    backward LSTM only: backward_kernel (n_in, 4ub), backward_recurrent (ub, 4ub), backward_bias (4ub,)
    harmonic branch only: harmonic_kernel (context, P, hu), harmonic_bias (hu,), harmonic_out_kernel (hu, hf),
        harmonic_out_bias (hf,), harmonic_onset_kernel (hf,), harmonic_frame_kernel (hf,)   P = bins per key
        (models.network.harmonic_index)

Loading checks every stored key (audio, transform and network) against the settings it is given, and a mismatch
raises :class:`~models.errors.KkomaError` naming the key. It adopts nothing: the settings that go with a weights file
are resolved once, by :func:`models.settings.load_settings`, which takes the file's record for every key the user
did not set (``--model FILE`` or ``--set model.weights=FILE``), so a file needs no ``--set`` of its own and a key the
user did set to another value is this error.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

from kkoma.models.errors import KkomaError
from kkoma.models.notes import N_KEYS
from kkoma.models.settings import first_mismatch, parse_override, retired_setting

if TYPE_CHECKING:  # pragma: no cover
    from kkoma.models.settings import Settings

_TRAIN_HINT = ("train weights with `kkoma train DATASET OUT_DIR` and use them with "
               "`--set model.weights=OUT_DIR/kkoma.npz` (or set model.weights in config.toml)")


# ----------------------------------------------------------------------------------------------------------------
# Numba kernel (private)
# ----------------------------------------------------------------------------------------------------------------
@nb.njit(cache=True, nogil=True, fastmath=False)
def _lstm_run(xw, recurrent, h, c, out):
    """LSTM recurrence over k steps, in place.

    xw : (k, 4u) input projections + bias; recurrent : (u, 4u); h, c : (u,) state, updated; out : (k, u) outputs.
    Gates in Keras order i, f, c, o; sigmoid recurrent activation, tanh activation.
    """
    k = xw.shape[0]
    u = h.shape[0]
    z = np.empty(4 * u, np.float32)
    for s in range(k):
        z[:] = xw[s]
        # z += h @ recurrent, row by row: contiguous rows of the recurrent matrix vectorise.
        for j in range(u):
            hj = h[j]
            row = recurrent[j]
            for m in range(4 * u):
                z[m] += hj * row[m]
        for m in range(u):
            ig = 1.0 / (1.0 + math.exp(-z[m]))
            fg = 1.0 / (1.0 + math.exp(-z[u + m]))
            cg = math.tanh(z[2 * u + m])
            og = 1.0 / (1.0 + math.exp(-z[3 * u + m]))
            cm = fg * c[m] + ig * cg
            c[m] = cm
            hm = og * math.tanh(cm)
            h[m] = hm
            out[s, m] = hm


@nb.njit(cache=True, nogil=True, fastmath=False)
def _harmonic_run(xx, idx_t, hk, hb, ok, ob, out):
    """The harmonic branch over k frames, in place.

    xx : (ctx - 1 + k, n_bins + 1) standardised frames (the ctx - 1 before the first output frame included) and a
    last column of zeros; idx_t : (P, 88) int64 bins of each key's patch (``n_bins`` = the zero column);
    hk : (ctx, P, hu), hb : (hu,) the shared first layer (ReLU); ok : (hu, hf), ob : (hf,) the second (ReLU);
    out : (k, 88 * hf), key-major.
    Loops, not gather + matmul: the patches overlap, so gathering them would copy each frame ~80 times. The keys are
    the innermost loop, so it runs on contiguous rows of 88 (SIMD).
    """
    ctx, n_p, hu = hk.shape
    hf = ok.shape[1]
    n_keys = idx_t.shape[1]
    acc = np.empty((hu, n_keys), np.float32)
    v = np.empty(n_keys, np.float32)
    z = np.empty(n_keys, np.float32)
    for s in range(out.shape[0]):
        for u in range(hu):
            acc[u, :] = hb[u]
        for i in range(ctx):
            row = xx[s + i]
            for p in range(n_p):
                ix = idx_t[p]
                for key in range(n_keys):
                    v[key] = row[ix[key]]
                w = hk[i, p]
                for u in range(hu):
                    wu = w[u]
                    a = acc[u]
                    for key in range(n_keys):
                        a[key] += wu * v[key]
        for u in range(hu):
            a = acc[u]
            for key in range(n_keys):
                if a[key] < 0.0:
                    a[key] = 0.0
        for f in range(hf):
            z[:] = ob[f]
            for u in range(hu):
                wf = ok[u, f]
                a = acc[u]
                for key in range(n_keys):
                    z[key] += wf * a[key]
            for key in range(n_keys):
                out[s, key * hf + f] = z[key] if z[key] > 0.0 else 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place: sigmoid(x) = (1 + tanh(x / 2)) / 2, which cannot overflow (and needs no np.errstate, which costs
    microseconds per call)."""
    x *= 0.5
    np.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------
def _settings_record(settings: "Settings") -> dict:
    from kkoma.models.network import settings_record

    return settings_record(settings)


def load_weights(path: str | Path, settings: "Settings") -> tuple[dict[str, np.ndarray], dict]:
    """Read and check a weights file: every key of its settings record (audio, cqt, model) must be ``settings``'
    (as :func:`models.settings.load_settings` makes them for the file), and its arrays of the shapes they give.

    Returns
    -------
    arrays : name -> float32 array (see the module notes); meta : the stored JSON record.

    Raises
    ------
    KkomaError : the file is missing or unreadable, was made for other audio/cqt/model settings (the message
        names the first mismatching key and both values), or has a part this kkoma no longer has.
    """
    path = Path(path)
    if not path.is_file():
        raise KkomaError(f"no model weights at {path}: {_TRAIN_HINT}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise KkomaError(f"model weights {path} cannot be read ({type(e).__name__}: {e}); {_TRAIN_HINT}.") from None
    from kkoma.models.network import WEIGHTS_FORMAT

    if meta.get("format") != WEIGHTS_FORMAT:
        raise KkomaError(f"model weights {path} have format {meta.get('format')!r}, this kkoma reads format "
                         f"{WEIGHTS_FORMAT}; {_TRAIN_HINT}.")
    gone = retired_setting(meta.get("settings", {}))
    if gone:
        section, key, have = gone
        raise KkomaError(f"model weights {path} were trained with {section}.{key} = {_shown(have)}, an option this "
                         f"kkoma no longer has; retrain the model without it.")
    want = _settings_record(settings)
    bad = first_mismatch(meta.get("settings", {}), want)
    if bad:
        section, key, have, value = bad
        if any(parse_override(o)[:2] == (section, key) for o in settings.transcribe.overrides):
            # The live and offline models read different transforms: name the switch, not one key of it.
            fix = ("weights for the live transform go with --set 'transcribe.overrides=[]' on files, weights for "
                   "the offline one (transcribe.overrides in config.toml) are for files only")
        else:  # load_settings gives a file its own values: this one was set (config file, --set) or is another's
            fix = (f"leave {section}.{key} unset (a weights file brings its settings) or set it to "
                   f"{_shown(have)}, or retrain the model")
        raise KkomaError(f"model weights {path} were trained with {section}.{key} = {_shown(have)} but the "
                         f"settings say {_shown(value)}; {fix}.")
    _check_shapes(arrays, settings, path)
    return arrays, meta


def _shown(value) -> str:
    """A settings value as ``--set`` takes it (true/false for booleans, as in config.toml)."""
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _check_shapes(a: dict[str, np.ndarray], settings: "Settings", path) -> None:
    from kkoma.models.network import array_shapes

    for k, shape in array_shapes(settings).items():
        if k not in a:
            raise KkomaError(f"model weights {path} are incomplete: {k} is missing.")
        if a[k].shape != shape:
            raise KkomaError(f"model weights {path} are damaged: {k} has shape {a[k].shape}, expected {shape}.")


def random_arrays(settings: "Settings", seed: int = 0) -> dict[str, np.ndarray]:
    """Randomly initialised weights of the right shapes (Glorot-uniform kernels, unit forget bias), for tests.

    Not a trained model: its notes are meaningless, but it exercises every path exactly like real weights.
    """
    from kkoma.models.network import array_shapes

    shapes = array_shapes(settings)
    rng = np.random.default_rng(seed)
    u = shapes["lstm_recurrent"][0]

    def glorot(name, scale=1.0):
        shape = shapes[name]
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return (scale * rng.uniform(-lim, lim, shape)).astype(np.float32)

    def normal(name, sd):
        return rng.normal(0, sd, shapes[name]).astype(np.float32)

    def unit_forget_bias(units):
        b = np.zeros(4 * units, np.float32)
        b[units:2 * units] = 1.0
        return b

    a = {
        "norm_mean": rng.uniform(0.0, 2.0, shapes["norm_mean"]).astype(np.float32),
        "norm_inv_std": rng.uniform(0.5, 1.5, shapes["norm_inv_std"]).astype(np.float32),
        "context_kernel": glorot("context_kernel"),
        "context_bias": normal("context_bias", 0.1),
        "lstm_kernel": glorot("lstm_kernel"),
        "lstm_recurrent": glorot("lstm_recurrent"),
        "lstm_bias": unit_forget_bias(u),
        "onset_kernel": glorot("onset_kernel", 4.0),
        "onset_bias": np.full(shapes["onset_bias"], -1.0, np.float32),
        "frame_kernel": glorot("frame_kernel", 4.0),
        "frame_bias": np.zeros(shapes["frame_bias"], np.float32),
        "velocity_kernel": glorot("velocity_kernel"),
        "velocity_bias": np.zeros(shapes["velocity_bias"], np.float32),
    }
    if "backward_kernel" in shapes:
        a.update(backward_kernel=glorot("backward_kernel"), backward_recurrent=glorot("backward_recurrent"),
                 backward_bias=unit_forget_bias(shapes["backward_recurrent"][0]))
    if "harmonic_kernel" in shapes:
        a.update(harmonic_kernel=glorot("harmonic_kernel"), harmonic_bias=normal("harmonic_bias", 0.1),
                 harmonic_out_kernel=glorot("harmonic_out_kernel"),
                 harmonic_out_bias=normal("harmonic_out_bias", 0.1),
                 harmonic_onset_kernel=normal("harmonic_onset_kernel", 0.5),
                 harmonic_frame_kernel=normal("harmonic_frame_kernel", 0.5))
    return a


def export_random_weights(path: str | Path, settings: "Settings", seed: int = 0) -> Path:
    """Write randomly initialised weights (:func:`random_arrays`) to ``path``, for tests and benchmarks only."""
    from kkoma.models.network import save_weights_npz

    return save_weights_npz(path, random_arrays(settings, seed), settings,
                            summary={"note": "random weights, not trained", "seed": seed})


# ----------------------------------------------------------------------------------------------------------------
# Streaming model
# ----------------------------------------------------------------------------------------------------------------
class StreamingModel:
    """The network run frame by frame (or chunk by chunk) with its state carried between calls.

    Parameters
    ----------
    settings : kkoma settings for these weights (:func:`models.settings.load_settings` with the file in
        ``model.weights`` or ``--model``: the file's own settings where the user set none); ``model.weights_path`` is
        read unless ``weights_path`` or ``arrays`` is given.
    weights_path : a ``.npz`` weights file instead of ``model.weights_path`` (its record must match ``settings``).
    arrays : weights already in memory (as :func:`load_weights` returns them; used by training's validation).

    State (restored by :meth:`reset`): ``frames_in`` input frames consumed, ``frames_out`` output frames emitted,
    ``steps_out`` model steps emitted (frames_out + the look-ahead's skipped first steps), ``h``/``c`` the LSTM
    state, the last ``context_frames - 1`` standardised input frames; with a backward LSTM, ``pending``: the
    forward results of the steps not yet emitted (see the module notes).
    """

    def __init__(self, settings: "Settings", weights_path: str | Path | None = None,
                 arrays: dict[str, np.ndarray] | None = None):
        from kkoma.models.network import OUTPUTS, architecture

        self.settings = settings
        if arrays is None:
            self.weights_path = Path(weights_path) if weights_path is not None else settings.model.weights_path
            arrays, self.meta = load_weights(self.weights_path, settings)
        else:
            self.weights_path, self.meta = None, {}
            _check_shapes(arrays, settings, "in memory")
        a = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        self._a = a
        m = architecture(settings)
        self.n_bins = m["n_bins"]
        self.units = m["units"]
        self.context = m["context_frames"]
        self.lookahead_frames = m["lookahead_frames"]
        self.backward_units = m["backward_units"]
        self.backward_block = m.get("backward_block_frames", 0)
        self.backward_context = m.get("backward_context_frames", 0)
        #: the outputs' names: onset, frame, velocity
        self.outputs = OUTPUTS
        hh = self.units + self.backward_units
        self._fk_h = np.ascontiguousarray(a["frame_kernel"][:hh])
        self._fk_o = np.ascontiguousarray(a["frame_kernel"][hh:])
        # Onset and velocity heads read the same input: one matmul for both. The causal conv as one
        # matmul over the flattened window of context_frames frames.
        direct = ["onset", "velocity"]
        self._ov_k = np.ascontiguousarray(np.concatenate([a[f"{n}_kernel"] for n in direct], axis=1))
        self._ov_b = np.concatenate([a[f"{n}_bias"] for n in direct])
        self._ck = np.ascontiguousarray(a["context_kernel"].reshape(-1, a["context_kernel"].shape[2]))
        hin = m["input_units"]
        self._lk_ctx = np.ascontiguousarray(a["lstm_kernel"][:hin])
        if self.backward_units:
            self._bk_ctx = np.ascontiguousarray(a["backward_kernel"][:hin])
            self._bk_h = np.ascontiguousarray(a["backward_kernel"][hin:])
        self.harmonic = bool(m["harmonic_units"])
        if self.harmonic:
            from kkoma.models.network import harmonic_index

            self._h_idx_t = np.ascontiguousarray(harmonic_index(settings, off=self.n_bins).T, dtype=np.int64)
            self._lk_h = np.ascontiguousarray(a["lstm_kernel"][hin:])
        self.reset()

    @property
    def lookahead_ms(self) -> float:
        """Longest output delay [ms]: frame t comes out once frame t + lookahead_frames has been fed; with a
        backward LSTM, up to backward_block_frames + backward_context_frames frames later still."""
        wait = self.backward_block + self.backward_context if self.backward_units else 0
        return 1000.0 * (self.lookahead_frames + wait) * self.settings.audio.hop_seconds

    @property
    def n_params(self) -> int:
        return int(sum(v.size for k, v in self._a.items() if not k.startswith("norm_")))

    def reset(self) -> None:
        """Forget the stream: zero state, counters back to 0."""
        self.h = np.zeros(self.units, np.float32)
        self.c = np.zeros(self.units, np.float32)
        self._hist = np.zeros((self.context - 1, self.n_bins), np.float32)
        self.frames_in = 0
        self.frames_out = 0
        self.steps_out = 0
        self.pending: list[tuple] = []  # backward LSTM only: per chunk, the rows of _forward's results not emitted
        self._flushed = False

    def _empty(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((0, N_KEYS), np.float32) for n in self.outputs}

    def _forward(self, features: np.ndarray) -> tuple:
        """Everything up to the heads for ``(k, n_bins)`` raw features, carrying the state: a tuple of per-step
        arrays (k rows each) for :meth:`_finish`: the forward LSTM's outputs ``(k, units)``, the backward LSTM's
        input projection ``(k, 4 backward_units)`` (none without it), the harmonic branch's ``(k, 88, hf)``
        (none without it)."""
        a = self._a
        k = features.shape[0]
        x = (features - a["norm_mean"]) * a["norm_inv_std"]
        ctx, nb_ = self.context, self.n_bins
        xx = np.concatenate([self._hist, x]) if ctx > 1 else x
        if ctx > 1:
            self._hist = xx[-(ctx - 1):].copy()
        if k == 1:
            win = xx.reshape(1, -1)
        else:  # rows: frames s-ctx+1 .. s, flattened (k, ctx * n_bins)
            win = np.lib.stride_tricks.sliding_window_view(xx, (ctx, nb_))[:, 0].reshape(k, ctx * nb_)
        z = win @ self._ck
        z += a["context_bias"]
        np.maximum(z, 0.0, out=z)
        xw = z @ self._lk_ctx
        xw += a["lstm_bias"]
        xb = g3 = None
        if self.backward_units:
            xb = z @ self._bk_ctx
            xb += a["backward_bias"]
        if self.harmonic:
            g = self._harmonic(xx, k)
            xw += g @ self._lk_h
            if xb is not None:
                xb += g @ self._bk_h
            g3 = g.reshape(k, N_KEYS, -1)  # per key, for its term in the onset and frame logits
        hs = np.empty((k, self.units), np.float32)
        _lstm_run(xw, a["lstm_recurrent"], self.h, self.c, hs)
        return hs, xb, g3

    def _backward(self, xb: np.ndarray) -> np.ndarray:
        """The backward LSTM over ``xb`` (k, 4 backward_units) input projections, from a zero state after the last
        step -> ``(k, backward_units)`` in time order."""
        ub = self.backward_units
        out = np.empty((xb.shape[0], ub), np.float32)
        _lstm_run(np.ascontiguousarray(xb[::-1]), self._a["backward_recurrent"], np.zeros(ub, np.float32),
                  np.zeros(ub, np.float32), out)
        return out[::-1]

    def _finish(self, rows: tuple, n: int) -> dict[str, np.ndarray]:
        """:meth:`_forward`'s rows of k steps -> the heads' outputs for the first ``n`` of them; with a backward
        LSTM, run over all k first (the steps after the n are its context)."""
        a = self._a
        hs, xb, g3 = rows
        if self.backward_units:
            hs = np.concatenate([hs[:n], self._backward(xb)[:n]], axis=1)
        else:
            hs = hs[:n]
        if g3 is not None:
            g3 = g3[:n]
        ov = hs @ self._ov_k
        ov += self._ov_b
        if g3 is not None:
            ov[:, :N_KEYS] += g3 @ a["harmonic_onset_kernel"]
        _sigmoid(ov)
        onset = ov[:, :N_KEYS]
        frame = hs @ self._fk_h
        frame += onset @ self._fk_o
        frame += a["frame_bias"]
        if g3 is not None:
            frame += g3 @ a["harmonic_frame_kernel"]
        _sigmoid(frame)
        return {"onset": onset, "frame": frame, "velocity": ov[:, N_KEYS:]}

    def _run(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """``(k, n_bins)`` raw features -> the outputs of the steps now complete (k of them without a backward
        LSTM; with one, every complete block's)."""
        rows = self._forward(features)
        if not self.backward_units:
            return self._finish(rows, features.shape[0])
        self.pending.append(rows)
        return self._emit_blocks(final=False)

    def _emit_blocks(self, final: bool) -> dict[str, np.ndarray]:
        """With a backward LSTM: the outputs of the pending steps whose block and context have arrived (all of them
        when ``final``: the stream has ended)."""
        n = sum(r[0].shape[0] for r in self.pending)
        block, span = self.backward_block, self.backward_block + self.backward_context
        if n == 0 or (n < span and not final):
            return self._empty()
        rows = tuple(None if r0 is None else np.concatenate([r[i] for r in self.pending])
                     for i, r0 in enumerate(self.pending[0]))
        parts, s = [], 0
        while n - s >= span:
            parts.append(self._finish(tuple(None if r is None else r[s:s + span] for r in rows), block))
            s += block
        if final and s < n:
            parts.append(self._finish(tuple(None if r is None else r[s:] for r in rows), n - s))
            s = n
        self.pending = [tuple(None if r is None else r[s:] for r in rows)] if s < n else []
        return {k: np.concatenate([p[k] for p in parts]) for k in self.outputs}

    def _harmonic(self, xx: np.ndarray, k: int) -> np.ndarray:
        """The harmonic branch: ``xx`` (context - 1 + k, n_bins) standardised frames -> (k, 88 * hf)."""
        a = self._a
        out = np.empty((k, N_KEYS * a["harmonic_out_kernel"].shape[1]), np.float32)
        ext = np.zeros((xx.shape[0], self.n_bins + 1), np.float32)
        ext[:, :self.n_bins] = xx
        _harmonic_run(ext, self._h_idx_t, a["harmonic_kernel"], a["harmonic_bias"], a["harmonic_out_kernel"],
                      a["harmonic_out_bias"], out)
        return out

    def process(self, features) -> dict[str, np.ndarray]:
        """Feed ``(k, n_bins)`` raw features (k ≥ 0, any chunking) -> dict onset/frame/velocity ``(k', 88)``
        (:attr:`outputs`).

        The outputs are for frames ``frames_out .. frames_out + k' - 1`` in [0, 1] (velocity = MIDI velocity / 127),
        ``k' = k`` once the first ``lookahead_frames`` frames have been fed (with a backward LSTM, whole blocks
        instead: ``k'`` is a multiple of ``backward_block_frames``, less the look-ahead at the start).
        """
        if self._flushed:
            raise KkomaError("this StreamingModel was flushed; call reset() before streaming a new signal.")
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.n_bins:
            raise ValueError(f"features must be (k, {self.n_bins}); got {f.shape}")
        k = f.shape[0]
        if k == 0:
            return self._empty()
        out = self._run(np.ascontiguousarray(f))
        self.frames_in += k
        return self._count(out)

    def _count(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Emitted steps -> output frames: the first ``lookahead_frames`` steps of a stream come before its first
        frame and are dropped."""
        skip = min(out["onset"].shape[0], max(0, self.lookahead_frames - self.steps_out))
        self.steps_out += out["onset"].shape[0]
        if skip:
            out = {n: v[skip:] for n, v in out.items()}
        self.frames_out += out["onset"].shape[0]
        return out

    def flush(self) -> dict[str, np.ndarray]:
        """End of stream: feed ``lookahead_frames`` frames of silence and return the last outputs.

        After it, ``frames_out == frames_in`` (of the real frames); call :meth:`reset` to stream again.
        """
        if self._flushed:
            return self._empty()
        n_real, owed = self.frames_in, self.frames_in - self.frames_out  # frames of the real signal still owed
        out = self.process(np.zeros((self.lookahead_frames, self.n_bins), np.float32))
        if self.backward_units:
            rest = self._count(self._emit_blocks(final=True))
            out = {n: np.concatenate([out[n], rest[n]]) for n in out}
        out = {n: v[:owed] for n, v in out.items()}
        self.frames_out = n_real
        self.frames_in = n_real
        self._flushed = True
        return out

    def predict(self, features) -> dict[str, np.ndarray]:
        """Whole-piece batch entry point: ``reset``, ``process`` in ``transcribe.chunk_frames`` chunks, ``flush``.

        features : (n, n_bins) raw features -> dict onset/frame/velocity (n, 88). Leaves the model reset.
        """
        f = np.asarray(features, dtype=np.float32)
        self.reset()
        step = self.settings.transcribe.chunk_frames
        parts = [self.process(f[i:i + step]) for i in range(0, f.shape[0], step)]
        parts.append(self.flush())
        self.reset()
        return {n: np.concatenate([p[n] for p in parts]) for n in self.outputs}


# ----------------------------------------------------------------------------------------------------------------
# Ensembles (model.ensemble)
# ----------------------------------------------------------------------------------------------------------------
def member_settings(settings: "Settings", path: str | Path) -> "Settings":
    """The settings a member of ``model.ensemble`` runs with: ``settings`` with ``model.weights`` = ``path`` and the
    network shape its file records. A member reads the same features as the ensemble's first network, so its audio
    and transform settings must be ``settings``' (else :class:`~models.errors.KkomaError`, naming the key)."""
    from kkoma.models.catalog import record_table, weights_record

    path = Path(path)
    record = weights_record(path)
    if record is None:
        load_weights(path, settings)  # says what is wrong with the file
    table = record_table(record)
    want = _settings_record(settings)
    bad = first_mismatch({k: table[k] for k in ("audio", "cqt")}, {k: want[k] for k in ("audio", "cqt")})
    if bad:
        section, key, have, value = bad
        raise KkomaError(f"model.ensemble's {path.name} was trained with {section}.{key} = {_shown(have)} but "
                         f"{settings.model.weights_path.name} with {_shown(value)}: an ensemble's networks must read "
                         f"the same features.")
    shape = {f"model__{k}": json.dumps(v) for k, v in table["model"].items()}
    return settings.replace(model__weights=json.dumps(str(path)), model__ensemble="[]", model__ensemble_weights="[]",
                            **shape)


class EnsembleModel:
    """Several streaming models fed the same features, their onset, frame and velocity outputs averaged (weighted by
    ``weights``, one share per member, normalised to sum 1; None = equal shares).

    ``members``: :class:`StreamingModel` (or TF twins) for the same features, e.g. a forward-only model and one with a
    backward LSTM. Each emits its frames when it can; frame ``t`` comes out of the ensemble once every member has
    emitted it, so its look-ahead is the longest member's. Same interface as :class:`StreamingModel` (``process``,
    ``flush``, ``reset``, ``predict``, ``lookahead_ms``, ``outputs``); state: each member's, and ``pending``, the
    outputs of members that are ahead of the slowest.

    ``parallel``: the members after the first run on threads of their own, each call handed over and joined
    (their kernels release the GIL). A file's threaded stream sets it (:meth:`models.pipeline.Transcriber.stream`):
    there the model thread, running every member in turn, is the slowest of the three; live keeps one thread, as a
    hand-over per 10 ms hop would cost more than it saves. The outputs are the same either way.
    """

    def __init__(self, members: list, weights=None):
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more models")
        shares = np.ones(len(members)) if weights is None or len(weights) == 0 else np.asarray(weights, np.float64)
        if shares.shape != (len(members),) or not np.all(shares > 0):
            raise ValueError(f"an ensemble of {len(members)} models needs as many positive weights, not {weights!r}")
        self.members = members
        #: ``(n_members,)`` each member's share of the average, summing to 1
        self.weights = (shares / shares.sum()).astype(np.float32)
        self.settings = members[0].settings
        self.outputs = members[0].outputs
        self.n_bins = members[0].n_bins
        #: the largest member's backward LSTM (live refuses a model with one)
        self.backward_units = max(getattr(m, "backward_units", 0) for m in members)
        self.parallel = False
        self._pool = None  # the members' threads, started at the first parallel call
        self.reset()

    @property
    def lookahead_ms(self) -> float:
        return max(m.lookahead_ms for m in self.members)

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.members)

    def reset(self) -> None:
        for m in self.members:
            m.reset()
        self.pending = [{n: np.zeros((0, N_KEYS), np.float32) for n in self.outputs} for _ in self.members]
        self.frames_out = 0

    def _merge(self, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        self.pending = [{n: np.concatenate([p[n], o[n]]) for n in self.outputs} for p, o in zip(self.pending, outs)]
        k = min(p["onset"].shape[0] for p in self.pending)
        out = {n: np.tensordot(self.weights, np.stack([p[n][:k] for p in self.pending]), axes=1).astype(np.float32)
               for n in self.outputs}
        self.pending = [{n: p[n][k:] for n in self.outputs} for p in self.pending]
        self.frames_out += k
        return out

    def _each(self, call) -> list:
        """``call(member)`` for every member, in order: in turn, or (``parallel``) the first on this thread while
        the others run on theirs."""
        if not self.parallel:
            return [call(m) for m in self.members]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=len(self.members) - 1, thread_name_prefix="kkoma-member")
        others = [self._pool.submit(call, m) for m in self.members[1:]]
        first = call(self.members[0])
        return [first] + [f.result() for f in others]

    def process(self, features) -> dict[str, np.ndarray]:
        """``(k, n_bins)`` raw features -> the averaged outputs of the frames every member has emitted."""
        return self._merge(self._each(lambda m: m.process(features)))

    def flush(self) -> dict[str, np.ndarray]:
        """End of stream: every member's last outputs, averaged (all members have then emitted every frame)."""
        return self._merge(self._each(lambda m: m.flush()))

    predict = StreamingModel.predict


def make_streaming_model(settings: "Settings", weights_path: str | Path | None = None, build=None):
    """The network for ``settings``: ``build(settings, weights_path)`` (default :class:`StreamingModel`), or with
    ``model.ensemble`` an :class:`EnsembleModel` of it and each listed file (:func:`member_settings`)."""
    build = build or StreamingModel
    first = build(settings, weights_path)
    paths = settings.model.ensemble_paths
    if not paths:
        return first
    return EnsembleModel([first] + [build(member_settings(settings, p), p) for p in paths],
                         settings.model.ensemble_weights or None)
