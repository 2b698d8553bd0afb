"""Training the streaming model (``kkoma train DATASET OUT_DIR``) on a dataset made by ``kkoma prepare``.

Data regime: long random crops, state reset per crop
------------------------------------------------------
Each training example is a crop of ``model.window_frames`` consecutive frames of one piece, in the model's regime
(:func:`models.network.align`: labels delayed by ``model.lookahead_frames``, the piece followed by that many frames
of silence), and the LSTM starts every crop from a zero state. Why crops rather than the reference's consecutive
windows with state carried: (1) batches mix many pieces and positions, so gradients are far less correlated than
16 streams marching through 16 pieces in step; (2) no per-row state bookkeeping, which Keras 3 stateful layers
cannot do (they reset the whole batch); (3) the zero-state start a crop sees is exactly how inference starts a
piece, and a crop of 4 s is long against the LSTM's useful memory, so the state it reaches mid-crop is the state
it reaches mid-piece. Pieces are visited in a shuffled order each pass; a pool of ``2 * batch_size`` loaded pieces
gives ``ceil((n + R) / window)`` crops each, shuffled together, so one pass covers every frame about once.

Validation runs the exported NumPy streaming model (the very code that ships) over whole held-out pieces from a
zero state, per ``valid_*`` split, and reports note-level onset F1 and onset+offset F1 (mir_eval, as ``kkoma
evaluate``, per piece and averaged: the tracker with the run's settings against the notes of the labels,
:func:`offline.labels.label_notes`), frame-level onset F1 (onset probability ≥ ``tracker.onset_threshold`` on the
labelled onset frame), frame F1 (frame probability ≥ ``tracker.frame_threshold``), velocity MAE on onset frames,
and the mean BCE losses. The score used for checkpoints and early stopping is the mean over splits of (note onset
F1 + note onset+offset F1) / 2 with ``train.selection = "notes"``, or of (frame-level onset F1 + frame F1) / 2 with
``"frames"`` (how the models up to r16 were chosen; once they were well trained it no longer ranked checkpoints as
the note-level scores did). With
``train.average_decay`` > 0, the weights validated, kept as best and exported are a moving average of the weights
over the steps (:class:`_WeightAverage`); the step's own weights are scored beside them (``raw_score`` in the log).

The loop (:mod:`offline.train_loop`) is the same on one machine and on several TensorFlow workers (``TF_CONFIG``;
docs/cluster.md): steps synchronous over a global batch of ``train.batch_size``, the training pieces dealt out to
the workers, and the chief alone reading and writing OUT_DIR. :func:`_train` runs the named steps: read the splits
(:func:`read_splits`), open the run's state (:class:`RunState`), build or restore the model (:func:`build_model`),
epochs of steps each ended by :class:`EpochEnd` (validate, keep the best, checkpoint, early stop, log), and
:func:`export`.

OUT_DIR layout::

    kkoma.npz              best weights for models.inference (settings + training summary inside)
    summary.json           the training summary (also printed)
    learning_curve.tsv     per epoch: training hours (wall-clock, CPU), validation score, note onset (+offset) F1
    checkpoints/           last.weights.h5, last.optimizer.npz, [last.average.npz,] best.weights.h5, state.json
    logs/                  TensorBoard scalars per epoch (losses, validation metrics)
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from kkoma.models.atomic import atomic_write
from kkoma.models.errors import KkomaError
from kkoma.models.notes import N_KEYS
from kkoma.models.settings import CQTSettings
from kkoma.offline.dataset import read_manifest
from kkoma.offline.labels import LABEL_NAMES


# ----------------------------------------------------------------------------------------------------------------
# Dataset access
# ----------------------------------------------------------------------------------------------------------------
def spread_subset(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (the first, then every ``len / n``-th, in order); all if ``n`` is 0 or
    covers them. Validation subsets use it: manifests list pieces by composer, so the first 25 of a split are all
    Bach and Beethoven, and a checkpoint chosen on them would be chosen for the easiest music."""
    if not n or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def load_piece(dataset: Path, piece: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One shard -> features (n, n_bins) float16 and labels onset/frame/offset uint8, velocity uint8 (MIDI, onset
    frames)."""
    path = dataset / piece["file"]
    try:
        with np.load(path, allow_pickle=False) as z:
            features = z["features"]
            labels = {k: z[k] for k in LABEL_NAMES}
    except (OSError, KeyError, ValueError) as e:
        raise KkomaError(f"dataset shard {path} cannot be read ({type(e).__name__}: {e}).") from None
    return features, labels


def feature_stats(dataset: Path, pieces: list[dict], n_pieces: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and standard deviation of the features of up to ``n_pieces`` random pieces, (n_bins,) each."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(pieces))[:n_pieces]
    s = s2 = None
    n = 0
    for i in chosen:
        f = load_piece(dataset, pieces[int(i)])[0].astype(np.float64)
        s = f.sum(0) if s is None else s + f.sum(0)
        s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
        n += f.shape[0]
    if not n:
        raise KkomaError("the training pieces have no frames.")
    mean = s / n
    return mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))


def spectral_envelope(n_bins: int, bins_per_octave: int, max_db: float, rng: np.random.Generator) -> np.ndarray:
    """A random smooth gain curve over the CQT bins, ``(n_bins,)`` [dB] within ``[-max_db, max_db]``.

    A tilt across the whole range plus three bumps (Gaussian in log-frequency, 1/6 to 1 octave wide): the
    spectral envelope by which another piano, microphone or room differs from the training renders.
    """
    b = np.arange(n_bins, dtype=np.float64)
    curve = rng.uniform(-0.5, 0.5) * max_db * (2.0 * b / max(1, n_bins - 1) - 1.0)
    for _ in range(3):
        centre = rng.uniform(0, n_bins)
        width = rng.uniform(bins_per_octave / 6, bins_per_octave)
        curve += rng.uniform(-0.5, 0.5) * max_db * np.exp(-0.5 * ((b - centre) / width) ** 2)
    return np.clip(curve, -max_db, max_db)


def recolour(features: np.ndarray, gain_db: np.ndarray) -> np.ndarray:
    """Features ``(n, n_bins)`` as if the audio had passed a filter with magnitude ``gain_db`` ``(n_bins,)`` [dB].

    The features are ``log(1 + |C| / log_offset)`` (models.cqt), so ``|C| / log_offset = expm1(f)`` is scaled
    exactly and logged again: silence stays 0 and quiet bins are not shifted as if they were loud.
    """
    g = (10.0 ** (np.asarray(gain_db, np.float64) / 20.0)).astype(np.float32)
    return np.log1p(np.expm1(features.astype(np.float32)) * g).astype(features.dtype)


def add_room(features: np.ndarray, bin_hz: np.ndarray, frame_rate: float, rt60_s: float, wet: float,
             snr_db: float, noise_tilt_db: float, rng: np.random.Generator) -> np.ndarray:
    """Features ``(n, n_bins)`` as if the piece had been played in a room with a noisy microphone.

    In the power domain of the transform (``P = expm1(f) ** 2``, as :func:`recolour`), frame by frame:

    * late reverberation: every bin's power feeds a tail that decays by 60 dB in ``rt60_s`` [s] (longer in the bass,
      ``(f / 1 kHz) ** -0.15``: rooms damp treble faster), added ``wet`` times its steady-state level
      (a held tone gains ``wet`` of its power; a released one rings on). Sums of powers: a late tail is incoherent.
    * noise: exponentially distributed power per cell (the power of complex Gaussian noise), its mean ``snr_db``
      [dB] below the crop's mean signal power, tilted ``noise_tilt_db`` [dB per octave] around 1 kHz.

    bin_hz : ``(n_bins,)`` bin centre frequencies [Hz]. A silent crop stays silent (its noise is relative to it).
    """
    m = np.expm1(features.astype(np.float32))
    power = m.astype(np.float64) ** 2
    decay = 10.0 ** (-6.0 / (rt60_s * (bin_hz / 1000.0) ** -0.15 * frame_rate))  # per frame, in power
    out = power.copy()
    tail = np.zeros(power.shape[1])
    for t in range(power.shape[0]):
        out[t] += wet * tail
        tail = decay * tail + (1.0 - decay) * power[t]
    level = power.mean() * 10.0 ** (-snr_db / 10.0)
    shape = 10.0 ** (noise_tilt_db * np.log2(bin_hz / 1000.0) / 10.0)
    out += rng.exponential(1.0, out.shape) * (level * shape / shape.mean())
    return np.log1p(np.sqrt(out)).astype(features.dtype)


def crop_stream(dataset: Path, pieces: list[dict], window: int, lookahead: int, pool: int, seed: int,
                colour: tuple[float, float, int] | None = None, room: dict | None = None):
    """Endless generator of training crops: (features (window, n_bins) float16, then the labels of
    :data:`offline.labels.LABEL_NAMES` (window, 88) uint8), labels delayed by ``lookahead``. Pieces in a fresh random
    order each pass; see the module notes.

    colour : (probability, max_db, bins_per_octave): each crop is recoloured by a random
        :func:`spectral_envelope` with that probability (``train.spectral_eq_*``); None or max_db 0 = never.
    room : each crop is put in a random room (:func:`add_room`, before the recolouring: the microphone hears the
        room) with probability ``room["probability"]``; ranges ``rt60_s``, ``wet``, ``snr_db`` (pairs),
        ``bin_hz``, ``frame_rate``. None = never.
    """
    from kkoma.models.network import align

    rng = np.random.default_rng(seed)
    colour_rng = np.random.default_rng([seed, 1])  # a separate stream: crops are the same with colour on or off
    p_colour, max_db, bpo = colour if colour is not None else (0.0, 0.0, 1)
    room_rng = np.random.default_rng([seed, 2])  # likewise for the room
    while True:
        order = rng.permutation(len(pieces))
        for p0 in range(0, len(order), pool):
            crops = []
            for i in order[p0:p0 + pool]:
                f, lab = load_piece(dataset, pieces[int(i)])
                f, lab = align(f, lab, lookahead)
                n = f.shape[0]
                if n < window:  # short piece: pad with silence (what follows a piece)
                    f = np.concatenate([f, np.zeros((window - n, f.shape[1]), f.dtype)])
                    lab = {k: np.concatenate([v, np.zeros((window - n, N_KEYS), v.dtype)]) for k, v in lab.items()}
                    n = window
                for _ in range(max(1, math.ceil(n / window))):
                    s = int(rng.integers(0, n - window + 1))
                    crops.append((f[s:s + window], *(lab[k][s:s + window] for k in LABEL_NAMES)))
            for j in rng.permutation(len(crops)):
                f, *labels = crops[int(j)]
                if room is not None and room_rng.random() < room["probability"]:
                    f = add_room(f, room["bin_hz"], room["frame_rate"], room_rng.uniform(*room["rt60_s"]),
                                 room_rng.uniform(*room["wet"]), room_rng.uniform(*room["snr_db"]),
                                 room_rng.uniform(-3.0, 3.0), room_rng)
                if max_db > 0 and colour_rng.random() < p_colour:
                    f = recolour(f, spectral_envelope(f.shape[1], bpo, max_db, colour_rng))
                yield (f, *labels)


def crops_per_pass(pieces: list[dict], window: int, lookahead: int) -> int:
    return sum(max(1, math.ceil((int(p["n_frames"]) + lookahead) / window)) for p in pieces)


def make_dataset(dataset: Path, pieces: list[dict], settings, batch_size: int, seed: int, worker: int = 0,
                 workers: int = 1):
    """tf.data pipeline of batches ``(x (B, T, n_bins) float32, {onset, frame, velocity: (B, T, 88) float32})``;
    velocity targets are MIDI velocity / 127 (0 off the onset frames). The shards' offset labels are read (their
    format has them) but not trained on.

    worker, workers : this worker's share when several train together: every ``workers``-th piece from its index
        on, its crops drawn with a seed of its own (worker 0 keeps ``seed``, so one worker's pipeline is the
        pipeline). Each worker loads and crops only its own pieces: the crops are made in Python (loading,
        cropping, rooms, recolouring), the costliest part of the input, which tf.data's own sharding (every worker
        makes every batch and keeps its share) would repeat on every worker.
    """
    import tensorflow as tf

    if workers > 1:
        pieces = pieces[worker::workers]
        if worker:
            seed = int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])

    m, t = settings.model, settings.train
    nb_, w = settings.cqt.n_bins, m.window_frames
    sig = (tf.TensorSpec((w, nb_), tf.float16), tf.TensorSpec((w, N_KEYS), tf.uint8),
           tf.TensorSpec((w, N_KEYS), tf.uint8), tf.TensorSpec((w, N_KEYS), tf.uint8),
           tf.TensorSpec((w, N_KEYS), tf.uint8))
    a, c = settings.augment, settings.cqt
    room = None
    if t.room_probability > 0:
        room = {"probability": t.room_probability, "rt60_s": a.reverb_rt60_s, "wet": a.reverb_wet,
                "snr_db": a.snr_db, "frame_rate": settings.audio.frame_rate,
                "bin_hz": c.frequencies}
    ds = tf.data.Dataset.from_generator(
        lambda: crop_stream(dataset, pieces, w, m.lookahead_frames, max(8, 2 * batch_size), seed,
                            (t.spectral_eq_probability, t.spectral_eq_db, c.bins_per_octave), room),
        output_signature=sig)

    width = settings.train.onset_target_frames

    def widen(x):
        # An onset is a target on its frame and the (width - 1) frames after it: the frame grid cuts them
        # at an arbitrary phase, and the tracker acts on the first frame over threshold, so a wider target costs
        # no extra events.
        x = tf.cast(x, tf.float32)
        wide = x
        for k in range(1, width):
            wide = tf.maximum(wide, tf.pad(x, [[0, 0], [k, 0], [0, 0]])[:, :-k, :])
        return wide

    def to_example(f, on, fr, off, vel):  # LABEL_NAMES' order
        y = {"onset": widen(on), "frame": tf.cast(fr, tf.float32), "velocity": tf.cast(vel, tf.float32) / 127.0}
        return tf.cast(f, tf.float32), y

    return ds.batch(batch_size, drop_remainder=True).map(to_example, num_parallel_calls=2).prefetch(2)


# ----------------------------------------------------------------------------------------------------------------
# Validation (NumPy streaming model over whole pieces)
# ----------------------------------------------------------------------------------------------------------------
def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def validate(arrays: dict, settings, dataset: Path, splits: dict[str, list[dict]]) -> dict[str, float]:
    """Score weights on every validation split -> flat dict of metrics (``<split>_onset_f1`` etc., and ``score``)."""
    from kkoma.models.inference import StreamingModel
    from kkoma.models.notes import events_to_notes
    from kkoma.models.tracker import NoteTracker
    from kkoma.offline.evaluate import score_notes
    from kkoma.offline.labels import label_notes

    model = StreamingModel(settings, arrays=arrays)
    tracker = NoteTracker(settings)
    on_t, fr_t = settings.tracker.onset_threshold, settings.tracker.frame_threshold
    out: dict[str, float] = {}
    scores = []
    for split, pieces in splits.items():
        c = dict(otp=0, ofp=0, ofn=0, ftp=0, ffp=0, ffn=0, vabs=0.0, von=0, obce=0.0, fbce=0.0, nf=0)
        note_f1, onoff_f1 = [], []
        for piece in pieces:
            f, lab = load_piece(dataset, piece)
            p = model.predict(f)
            tracker.reset()
            events = tracker.process(p["onset"], p["frame"], p["velocity"]) + tracker.flush()
            est = events_to_notes(events)
            ref = label_notes(lab["onset"], lab["frame"], lab["velocity"], settings.audio.frame_rate)
            sc = score_notes(ref, est, settings.audio.frame_rate)  # kkoma evaluate's scores
            note_f1.append(sc["onset_f1"])
            onoff_f1.append(sc["onset_offset_f1"])
            on_y, fr_y = lab["onset"] > 0, lab["frame"] > 0
            on_p, fr_p = p["onset"] >= on_t, p["frame"] >= fr_t
            c["otp"] += int((on_p & on_y).sum()); c["ofp"] += int((on_p & ~on_y).sum())
            c["ofn"] += int((~on_p & on_y).sum())
            c["ftp"] += int((fr_p & fr_y).sum()); c["ffp"] += int((fr_p & ~fr_y).sum())
            c["ffn"] += int((~fr_p & fr_y).sum())
            c["vabs"] += float(np.abs(p["velocity"][on_y] * 127.0 - lab["velocity"][on_y]).sum())
            c["von"] += int(on_y.sum())
            n = f.shape[0]
            c["obce"] += _bce(p["onset"], on_y) * n; c["fbce"] += _bce(p["frame"], fr_y) * n
            c["nf"] += n
        o_f1, f_f1 = _f1(c["otp"], c["ofp"], c["ofn"]), _f1(c["ftp"], c["ffp"], c["ffn"])
        out[f"{split}_onset_f1"] = o_f1
        out[f"{split}_frame_f1"] = f_f1
        out[f"{split}_velocity_mae"] = c["vabs"] / max(1, c["von"])
        out[f"{split}_onset_bce"] = c["obce"] / max(1, c["nf"])
        out[f"{split}_frame_bce"] = c["fbce"] / max(1, c["nf"])
        out[f"{split}_note_onset_f1"] = float(np.mean(note_f1)) if note_f1 else float("nan")
        out[f"{split}_note_onoff_f1"] = float(np.mean(onoff_f1)) if onoff_f1 else float("nan")
        if settings.train.selection == "notes":
            scores.append((out[f"{split}_note_onset_f1"] + out[f"{split}_note_onoff_f1"]) / 2)
        else:
            scores.append((o_f1 + f_f1) / 2)
    out["score"] = float(np.mean(scores)) if scores else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def onset_loss(pos_weight: float):
    """Binary cross-entropy with the onset frames weighted ``pos_weight`` times: onsets are ~0.1 % of the
    (frame, key) cells, and with plain BCE the onset head sits at the prior for many epochs (measured: max onset
    probability 0.03 after 6 epochs on the ASAP renders)."""
    import keras.ops as K

    def loss(y_true, y_pred):
        p = K.clip(y_pred, 1e-7, 1.0 - 1e-7)
        return -K.mean(pos_weight * y_true * K.log(p) + (1.0 - y_true) * K.log(1.0 - p))

    loss.__name__ = "onset_loss"
    return loss


def velocity_loss(y_true, y_pred):
    """Mean squared error of velocity / 127 over the onset frames only (the targets are > 0 exactly there)."""
    import keras.ops as K

    mask = K.cast(y_true > 0, y_pred.dtype)
    return K.sum(mask * K.square(y_pred - y_true)) / K.maximum(K.sum(mask), 1.0)


def _learning_curve(path: Path, entry: dict, splits: list[str]) -> None:
    """Append one epoch's row to ``OUT_DIR/learning_curve.tsv`` (header first): epoch, training hours (wall-clock
    and CPU, across resumes), validation score, and per split note-level onset F1 and onset+offset F1. A resumed run
    appends after the rows of the epochs it kept; rows of epochs it redoes come again, the later ones count."""
    cols = ["epoch", "hours", "cpu_hours", "val_score"] + [f"val_{s}_note_{m}_f1" for s in splits
                                                             for m in ("onset", "onoff")]
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write("\t".join(cols) + "\n")
        f.write("\t".join(f"{entry[c]:.4f}" if isinstance(entry.get(c), float) else str(entry.get(c, ""))
                          for c in cols) + "\n")


def _atomic_json(path: Path, data) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=float)))


def _save_weights(model, path: Path) -> None:
    tmp = path.with_name(path.stem.replace(".weights", "") + ".tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)


def _save_optimizer(opt, path: Path) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, *[np.asarray(v) for v in opt.variables]))


def _load_optimizer(opt, model, path: Path, learning_rate: float | None, log) -> None:
    """The checkpoint's optimizer state (step count, moments, learning rate) into ``opt``; ``learning_rate`` (not
    None) replaces the rate, so that a campaign can be resumed at a lower one. None keeps the checkpoint's: a run
    resumed after a lowered rate must not climb back to config.toml's."""
    with np.load(path) as z:
        values = [z[f"arr_{i}"] for i in range(len(z.files))]
    if not opt.built:
        opt.build(model.trainable_variables)
    if len(values) != len(opt.variables) or any(tuple(v.shape) != a.shape for v, a in zip(opt.variables, values)):
        log("  optimizer state does not match this model; resuming with a fresh optimizer")
        return
    for v, a in zip(opt.variables, values):
        v.assign(a)
    was = float(opt.learning_rate.numpy())
    if learning_rate is None:
        log(f"  learning rate {was:g} (the checkpoint's)")
        return
    if not np.isclose(was, learning_rate, rtol=1e-6, atol=0.0):
        log(f"  learning rate {was:g} -> {learning_rate:g}")
    opt.learning_rate = learning_rate


class _WeightAverage:
    """Exponential moving average of a model's trainable weights (Polyak averaging), held in NumPy.

    After every training step, ``update()``: avg = d * avg + (1 - d) * w with d = min(decay, (1 + n) / (10 + n)),
    n = updates so far: the first steps follow the weights, so a short run is not pinned to where it started.
    Inside ``swapped()`` the model holds the averaged weights, and its own again after.
    """

    def __init__(self, variables: list, decay: float):
        self.variables = variables
        self.decay = decay
        self.values = [np.array(v.numpy(), dtype=np.float32) for v in variables]
        self.updates = 0

    def update(self) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for a, v in zip(self.values, self.variables):
            a += (1.0 - d) * (v.numpy() - a)  # = d * a + (1 - d) * w, and exactly a where w == a
        self.updates += 1

    @contextmanager
    def swapped(self):
        own = [v.numpy() for v in self.variables]
        for v, a in zip(self.variables, self.values):
            v.assign(a)
        try:
            yield
        finally:
            for v, w in zip(self.variables, own):
                v.assign(w)

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: np.savez(tmp, np.array(self.updates), *self.values))

    def load(self, path: Path, log) -> None:
        with np.load(path) as z:
            updates, values = int(z["arr_0"]), [z[f"arr_{i + 1}"] for i in range(len(z.files) - 1)]
        if len(values) != len(self.values) or any(v.shape != a.shape for v, a in zip(values, self.values)):
            log("  weight average does not match this model; averaging again from the resumed weights")
            return
        self.values, self.updates = [v.astype(np.float32) for v in values], updates


class _Board:
    """Per-epoch scalars as TensorBoard event files, written with core ``tf.summary.write`` (which, unlike
    ``tf.summary.scalar`` and Keras' TensorBoard callback, does not need the ``tensorboard`` package installed;
    install it only to view the logs: ``tensorboard --logdir OUT_DIR/logs``)."""

    def __init__(self, folder: Path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(folder))
        md = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self.metadata = md.SerializeToString()

    def write(self, step: int, values: dict) -> None:
        tf = self.tf
        with self.writer.as_default():
            for k, v in values.items():
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    continue
                tf.summary.write(k, tf.constant(v, tf.float32), step=step, metadata=self.metadata)
        self.writer.flush()


#: cqt keys an ``--init`` model may have been trained with other values of: every one but those that fix which
#: pitch each input bin is. They change the features' values, not their shape, so fine-tuning adapts the model
#: (its feature statistics recomputed on the new dataset).
_REFEATURE_KEYS = tuple(f.name for f in fields(CQTSettings)
                        if f.name not in ("fmin_midi", "n_bins", "bins_per_octave"))


def _init_arrays(init, settings, log) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of the weights file ``init`` for a new run, and whether its features differ from ours.

    Its look-ahead may differ from ours (the weights' shapes do not depend on it): fine-tuning a model to another
    look-ahead is how an offline model with more look-ahead is made from the live one. So may the transform keys
    of :data:`_REFEATURE_KEYS` (same number of bins, other values): the caller then recomputes the per-bin
    feature statistics on this dataset. A model without the harmonic branch may start one with it: its arrays
    come back without the branch's, for :func:`models.network.grow_arrays`; likewise a forward-only model may
    start one with a backward LSTM (:func:`models.network.grow_backward`).
    """
    from kkoma.models.inference import load_weights
    from kkoma.models.settings import recorded

    try:
        with np.load(init, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))["settings"]
    except Exception:  # unreadable or not ours: load_weights below says so in one sentence
        stored = {}
    changes, refeature = {}, []
    R = recorded(stored, "model", "lookahead_frames", settings.model.lookahead_frames)
    if isinstance(R, int) and R != settings.model.lookahead_frames:
        log(f"  {init} was trained with a look-ahead of {R} frames; fine-tuning it to "
            f"{settings.model.lookahead_frames}")
        changes["model__lookahead_frames"] = str(R)
    for key in _REFEATURE_KEYS:
        mine = getattr(settings.cqt, key)
        have = recorded(stored, "cqt", key, mine)
        if isinstance(have, (int, float)) and float(have) != float(mine):
            changes[f"cqt__{key}"] = str(have)
            refeature.append(f"cqt.{key} {have:g} -> {mine:g}")
    if refeature:
        log(f"  {init} was trained on other features ({', '.join(refeature)}); fine-tuning it to these, with the "
            "feature statistics recomputed on this dataset")
    if settings.model.harmonic_units and recorded(stored, "model", "harmonic_units", None) == 0:
        log(f"  {init} has no harmonic branch; adding one (model.harmonic_units = {settings.model.harmonic_units})"
            " whose LSTM inputs and per-key head weights start at zero, so training starts from exactly that model")
        changes["model__harmonic_units"] = "0"
    if settings.model.backward_units and recorded(stored, "model", "backward_units", None) == 0:
        log(f"  {init} has no backward LSTM; adding one (model.backward_units = {settings.model.backward_units})"
            " (it and the heads' weights for it freshly initialised; the rest as they are)")
        changes["model__backward_units"] = "0"
    # The network is built from the settings, so the file must be of that architecture (less the parts the run
    # adds, above).
    return load_weights(init, settings.replace(**changes) if changes else settings)[0], bool(refeature)


# ----------------------------------------------------------------------------------------------------------------
# The run, step by step: its data, its state, its model, the end of an epoch, the export
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunData:
    """A run's pieces (manifest entries): the ``train`` split, and each ``valid*`` split by name (spread over
    ``train.valid_max_pieces`` pieces when that is set)."""

    dataset: Path
    train: list
    valid: dict


def read_splits(dataset: str | Path, settings) -> RunData:
    """The dataset's manifest, checked against the settings, split for training. No training pieces: an error."""
    dataset = Path(dataset)
    pieces = read_manifest(dataset, settings, require_pieces=True)["pieces"]
    train_pieces = [p for p in pieces if p.get("split") == "train"]
    if not train_pieces:
        raise KkomaError(f"dataset {dataset} has no pieces in the train split.")
    valid: dict[str, list[dict]] = {}
    for p in pieces:
        if str(p.get("split", "")).startswith("valid"):
            valid.setdefault(p["split"], []).append(p)
    if settings.train.valid_max_pieces:
        valid = {k: spread_subset(v, settings.train.valid_max_pieces) for k, v in valid.items()}
    return RunData(dataset, train_pieces, valid)


class RunState:
    """The resumable state of a run (``checkpoints/state.json``) and the clock of its training time.

    ``st`` holds: ``epoch`` (the last one finished, counted from 0; -1 before the first), ``best_score`` and
    ``best_epoch`` (the best validation score so far and its epoch; None and -1 before the first), ``wait`` (epochs
    since the best), ``history`` (per epoch its training logs, validation metrics ``val_*``, ``valid_seconds``,
    ``hours`` and ``cpu_hours``), ``wall_seconds`` and ``cpu_seconds`` (the training time behind the checkpoint,
    across resumes [s]: wall-clock, and this process's CPU time in all its threads; what a resumed run redoes after
    its last checkpoint is not counted twice), and ``stopped_early`` once early stopping has ended the run.
    """

    def __init__(self, path: Path, st: dict | None = None):
        self.path = path
        self.resumed = st is not None
        self.st = st or {"epoch": -1, "best_score": None, "best_epoch": -1, "wait": 0, "history": []}
        self.st.setdefault("wall_seconds", 0.0)
        self.st.setdefault("cpu_seconds", 0.0)
        self.start_clock()

    @classmethod
    def open(cls, out_dir: Path, resume: bool, log) -> "RunState":
        """The run in ``out_dir``: with ``resume`` its saved state (a new run, said so, when it has none); without,
        a new run (an error when the folder already holds one). Makes ``out_dir/checkpoints``."""
        ckpt = out_dir / "checkpoints"
        path = ckpt / "state.json"
        st = None
        if path.exists():
            if not resume:
                raise KkomaError(f"{out_dir} already holds a training run; continue it with --resume or choose "
                                 "another OUT_DIR.")
            st = json.loads(path.read_text())
        elif resume:
            log(f"no checkpoint in {ckpt}; starting a new run")
        ckpt.mkdir(parents=True, exist_ok=True)
        return cls(path, st)

    @property
    def next_epoch(self) -> int:
        """The first epoch (from 0) this process trains."""
        return int(self.st["epoch"]) + 1

    def start_clock(self) -> None:
        self._clock = (time.time(), time.process_time())

    def tick(self) -> None:
        """Add the time since the clock's start or the last tick to ``wall_seconds`` and ``cpu_seconds``."""
        wall, cpu = time.time(), time.process_time()
        self.st["wall_seconds"] += wall - self._clock[0]
        self.st["cpu_seconds"] += cpu - self._clock[1]
        self._clock = (wall, cpu)

    def save(self) -> None:
        _atomic_json(self.path, self.st)


@dataclass(frozen=True)
class RunFacts:
    """What a run's summary says beside its state: its data, shape and devices."""

    data: RunData
    out_dir: Path
    settings: object
    parameters: int
    steps: int
    devices: str
    mixed: bool
    started: float  # time.time() when the run started [s]

    def summary(self, state: RunState, final: bool) -> dict:
        """The training summary (``summary.json``, and inside ``kkoma.npz``); ``final``: the run has ended."""
        st, t, m = state.st, self.settings.train, self.settings.model
        return {"dataset": str(self.data.dataset), "out_dir": str(self.out_dir), "epochs_run": st["epoch"] + 1,
                "best_epoch": st["best_epoch"] + 1, "best_score": st["best_score"],
                "best": st["history"][st["best_epoch"]] if st["best_epoch"] >= 0 else None,
                "stopped_early": bool(final and st.get("stopped_early")), "parameters": self.parameters,
                "train_pieces": len(self.data.train), "valid_pieces": {k: len(v) for k, v in self.data.valid.items()},
                "steps_per_epoch": self.steps, "batch_size": t.batch_size, "window_frames": m.window_frames,
                "lookahead_frames": m.lookahead_frames, "lookahead_ms": self.settings.model_lookahead_ms,
                "devices": self.devices, "mixed_precision": self.mixed, "train_settings": asdict(t),
                "seconds": round(time.time() - self.started, 1), "history": st["history"]}


def _losses(settings) -> tuple[dict, dict]:
    """The loss of each output and its weight in the total: onset (BCE, onsets weighted ``train.onset_pos_weight``),
    frame (BCE) and velocity (MSE on the onset frames, weighted ``train.velocity_weight``)."""
    import keras

    t = settings.train
    losses = {"onset": onset_loss(t.onset_pos_weight), "frame": keras.losses.binary_crossentropy,
              "velocity": velocity_loss}
    weights = {"onset": 1.0, "frame": 1.0, "velocity": t.velocity_weight}
    return losses, weights


def build_model(settings, strategy, mixed: bool, data: RunData, state: RunState | None, init, log,
                resume_rate: float | None = None):
    """The model and its (built) optimizer, made under ``strategy``: a resumed run's from its last checkpoint
    (weights, optimizer state; its learning rate unless ``resume_rate``); a new run's from ``init``'s weights or at
    random, with the per-bin feature statistics computed on the training pieces (unless ``init`` brings them, for
    these features). ``state`` None: a worker that is not the chief (made only; it takes the chief's values)."""
    from kkoma.models import network
    from kkoma.offline.train_loop import make_optimizer

    t = settings.train
    with strategy.scope():
        model = network.build_model(settings)
        opt = make_optimizer(settings, mixed)
        opt.build(model.trainable_variables)
        if state is not None and state.resumed:
            ckpt = state.path.parent
            model.load_weights(ckpt / "last.weights.h5")
            _load_optimizer(opt, model, ckpt / "last.optimizer.npz", resume_rate, log)
        elif state is not None:
            refeature = False
            if init:
                arrays, refeature = _init_arrays(init, settings, log)
                if "harmonic_kernel" not in arrays and settings.model.harmonic_units:
                    arrays = network.grow_arrays(network.model_arrays(model), arrays)
                if "backward_kernel" not in arrays and settings.model.backward_units:
                    arrays = network.grow_backward(network.model_arrays(model), arrays)
                network.set_model_arrays(model, arrays)
                log(f"starting from the weights in {init}")
            if refeature or not init:
                mean, std = feature_stats(data.dataset, data.train, t.norm_pieces, t.seed)
                network.set_normalization(model, mean, std)
        # Attached (no loss: the loop computes it) so that the .weights.h5 checkpoints hold the optimizer's variables
        # too, as when model.fit trained the model. After loading: loading into a compiled model makes variables,
        # which under several workers only the chief would make (a collective operation the others never join).
        model.compile(optimizer=opt, jit_compile=False)
    return model, opt


def _log_start(facts: RunFacts, state: RunState, log) -> None:
    """The run's first lines: data, model, devices, batch; what is done on the fly; where a resumed run goes on."""
    s, data = facts.settings, facts.data
    t, m = s.train, s.model
    log(f"kkoma train: {len(data.train)} training pieces, validation "
        + (", ".join(f"{k} ({len(v)})" for k, v in data.valid.items()) or "none")
        + f"; {facts.parameters:,} parameters; {facts.devices}{', mixed precision' if facts.mixed else ''}; batch "
        f"{t.batch_size} x {m.window_frames} frames, {facts.steps} steps/epoch; look-ahead {m.lookahead_frames} "
        f"frames ({s.model_lookahead_ms:g} ms)"
        + (f"; backward LSTM of {m.backward_units} (inference blocks {m.backward_block_frames} + "
           f"{m.backward_context_frames} frames)" if m.backward_units else ""))
    envelope = (f"on {t.spectral_eq_probability:.0%} of crops (±{t.spectral_eq_db:g} dB)" if t.spectral_eq_db
                else "off")
    log(f"on the fly: spectral envelope {envelope}, rooms on {t.room_probability:.0%}; weight average "
        + (f"decay {t.average_decay:g}" if t.average_decay else "off")
        + ("; checkpoints chosen by note-level F1 (notes: onset / onset+offset F1)" if t.selection == "notes" else
           "; checkpoints chosen by frame-level F1 (frames: onset / frame F1)"))
    if state.resumed:
        log(f"resuming after epoch {state.next_epoch} (best score {state.st['best_score']:.4f} at epoch "
            f"{state.st['best_epoch'] + 1})")
    if state.next_epoch >= t.epochs:
        log(f"the run has already done {state.next_epoch} of {t.epochs} epochs")


class EpochEnd:
    """The chief's end of an epoch, in this order: validate -> keep the best -> checkpoint the last -> early stop ->
    log. Called with the epoch (counted from 0) and its training logs (:class:`offline.train_loop.Trainer`);
    returns whether the run stops there.

    Validation scores the weights that are kept and exported: the weight average when there is one, and then the
    step's own weights beside it (``val_raw_score``, so the log shows what the average adds); without validation
    data a lower training loss is better. Better than the best so far: ``checkpoints/best.weights.h5`` and
    ``kkoma.npz``. Every epoch: the step's own weights, the optimizer state and the average (what a resumed run
    continues from, not the average), ``state.json``, a row of ``learning_curve.tsv``, the TensorBoard scalars and
    the console line.
    """

    def __init__(self, model, optimizer, average: "_WeightAverage | None", facts: RunFacts, state: RunState,
                 log: Callable[[str], None]):
        self.model, self.optimizer, self.average = model, optimizer, average
        self.facts, self.state, self.log = facts, state, log
        self.settings, self.data = facts.settings, facts.data
        self.ckpt = facts.out_dir / "checkpoints"
        self.board = _Board(facts.out_dir / "logs")

    def __call__(self, epoch: int, logs: dict) -> bool:
        from kkoma.models import network

        t0 = time.time()
        logs = dict(logs)
        st, valid = self.state.st, self.data.valid
        if self.average is not None and valid:
            raw = validate(network.model_arrays(self.model), self.settings, self.data.dataset, valid)
            logs["val_raw_score"] = raw["score"]
        with self.average.swapped() if self.average is not None else nullcontext():
            arrays = network.model_arrays(self.model)
            metrics = validate(arrays, self.settings, self.data.dataset, valid) if valid else {}
            score = metrics.get("score")
            if score is None or not np.isfinite(score):  # no validation data: lower training loss is better
                score = -float(logs.get("loss", np.inf))
            for k, v in metrics.items():
                logs[f"val_{k}"] = v
            logs["val_score"] = score
            self.state.tick()
            entry = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                     "valid_seconds": round(time.time() - t0, 1), "hours": st["wall_seconds"] / 3600.0,
                     "cpu_hours": st["cpu_seconds"] / 3600.0}
            st["history"].append(entry)
            st["epoch"] = epoch
            improved = self._keep_best(epoch, score, arrays)
        self._checkpoint()
        stop = st["wait"] > self.settings.train.patience
        if stop:
            st["stopped_early"] = True
        self.state.save()
        _learning_curve(self.facts.out_dir / "learning_curve.tsv", entry, list(valid))
        self.board.write(epoch + 1, logs)
        self.log(self._line(epoch, logs, metrics, score, improved))
        if stop:
            self.log(f"early stop: no improvement for {st['wait']} epochs (train.patience = "
                     f"{self.settings.train.patience})")
        return stop

    def _keep_best(self, epoch: int, score: float, arrays: dict) -> bool:
        """A better score: the model's weights (as validated) become the best checkpoint and ``kkoma.npz``; else
        one more epoch of waiting."""
        from kkoma.models import network

        st = self.state.st
        if st["best_score"] is not None and not score > st["best_score"]:
            st["wait"] += 1
            return False
        st["best_score"], st["best_epoch"], st["wait"] = float(score), epoch, 0
        _save_weights(self.model, self.ckpt / "best.weights.h5")
        network.save_weights_npz(self.facts.out_dir / "kkoma.npz", arrays, self.settings,
                                 self.facts.summary(self.state, False))
        return True

    def _checkpoint(self) -> None:
        """What a resumed run continues from: the step's own weights, the optimizer state, the average."""
        _save_weights(self.model, self.ckpt / "last.weights.h5")
        _save_optimizer(self.optimizer, self.ckpt / "last.optimizer.npz")
        if self.average is not None:
            self.average.save(self.ckpt / "last.average.npz")

    def _line(self, epoch: int, logs: dict, metrics: dict, score: float, improved: bool) -> str:
        """The console line: loss, per split note / frame F1 and velocity error, the score and the best."""
        st = self.state.st
        parts = [f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}"]
        for split in self.data.valid:
            parts.append(f"{split} notes {metrics[f'{split}_note_onset_f1']:.3f} / "
                         f"{metrics[f'{split}_note_onoff_f1']:.3f}, frames {metrics[f'{split}_onset_f1']:.3f} / "
                         f"{metrics[f'{split}_frame_f1']:.3f}, vel MAE {metrics[f'{split}_velocity_mae']:.1f}")
        if "val_raw_score" in logs:
            parts.append(f"score without averaging {logs['val_raw_score']:.4f}")
        parts.append(f"score {score:.4f}" + (" (best)" if improved else f" (best {st['best_score']:.4f} "
                                                                          f"at epoch {st['best_epoch'] + 1})"))
        return "; ".join(parts)


def export(model, facts: RunFacts, state: RunState) -> dict:
    """The end of a run: the summary (``summary.json``), and the best weights exported again to ``kkoma.npz`` with
    the complete summary inside (when an epoch has been validated). Returns the summary."""
    from kkoma.models import network

    result = facts.summary(state, True)
    if state.st["best_epoch"] >= 0:
        model.load_weights(facts.out_dir / "checkpoints" / "best.weights.h5")
        network.export_npz(model, facts.out_dir / "kkoma.npz", facts.settings, result)
    _atomic_json(facts.out_dir / "summary.json", result)
    return result


def train(dataset: str | Path, out_dir: str | Path, settings, *, resume: bool = False,
          init: str | Path | None = None, log: Callable[[str], None] = print, verbose: int | str = "auto",
          resume_rate: float | None = None) -> dict:
    """Train, validate, checkpoint, and export the best weights to ``OUT_DIR/kkoma.npz``.

    Parameters
    ----------
    dataset : a folder made by ``kkoma prepare`` (manifest.json + per-piece npz shards).
    out_dir : where checkpoints, logs, the summary and the exported weights go (written by the chief alone when
        ``TF_CONFIG`` names several workers: :mod:`offline.train_loop`).
    settings : ``train.*`` (batch size, epochs, steps per epoch, patience, learning rate, ...) and ``model.*``.
    resume : continue from ``OUT_DIR/checkpoints`` (model, optimizer with its learning rate, epoch, best score,
        patience counter).
    resume_rate : with ``resume``, the learning rate to go on at (``kkoma train --resume --learning-rate``); None
        keeps the checkpoint's (``train.learning_rate`` sets only a new run's).
    init : a weights file (``kkoma.npz``) of the same architecture to start a new run from (fine-tuning on more or
        other data), its feature statistics included; ignored when resuming.
    verbose : progress output (0 silent, 1 a bar per epoch, 2 one line per epoch, "auto" = 1).

    Returns
    -------
    The training summary (also written to ``OUT_DIR/summary.json`` and stored inside ``kkoma.npz``); on a worker
    that is not the chief, ``{"chief": False, "worker": index, "workers": count, "epochs_run": n}``.
    """
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(dataset, out_dir, settings, resume=resume, init=init, log=log, verbose=verbose,
                      resume_rate=resume_rate)
    finally:  # the precision policy is process-global: leave it as found
        keras.mixed_precision.set_global_policy(policy)


def _train(dataset, out_dir, settings, *, resume, init, log, verbose, resume_rate=None) -> dict:
    """The run: read the splits -> open the run state (the chief) -> strategy -> model (built, restored or
    started) -> every worker takes the chief's weights and epoch -> epochs of steps, each ended by the chief's
    :class:`EpochEnd` and a stop decision every worker shares -> export (the chief). With several workers, a lost
    worker ends it in one sentence (:func:`offline.train_loop.lost_workers`)."""
    from kkoma.offline.train_loop import Workers, lost_workers

    workers = Workers.from_env()
    with lost_workers(workers):
        return _run(dataset, Path(out_dir), settings, workers, resume=resume, init=init, log=log, verbose=verbose,
                    resume_rate=resume_rate)


def _run(dataset, out_dir: Path, settings, workers, *, resume, init, log, verbose, resume_rate=None) -> dict:
    """:func:`_train`'s steps, for this process's place among the ``workers``."""
    from kkoma.models import network
    from kkoma.offline.train_loop import ChiefBroadcast, Trainer, distributed_batches, setup_tf

    started = time.time()
    t = settings.train
    data = read_splits(dataset, settings)
    if len(data.train) < workers.count:
        raise KkomaError(f"dataset {data.dataset} has {len(data.train)} training pieces, fewer than the "
                         f"{workers.count} workers that share them.")
    state = RunState.open(out_dir, resume, log) if workers.chief else None
    strategy, mixed, devices = setup_tf(settings, workers)
    steps = t.steps_per_epoch or max(1, crops_per_pass(data.train, settings.model.window_frames,
                                                       settings.model.lookahead_frames) // t.batch_size)
    model, opt = build_model(settings, strategy, mixed, data, state, init, log, resume_rate)
    chief = ChiefBroadcast(strategy, workers)
    chief.variables(model.weights + opt.variables)
    first, stopped = (int(v) for v in chief.arrays([state.next_epoch if state else 0,
                                                     int(bool(state and state.st.get("stopped_early")))]))
    average = None
    if state is not None and t.average_decay:  # only the chief validates and saves the average
        average = _WeightAverage(model.trainable_variables, t.average_decay)
        if state.resumed and (state.path.parent / "last.average.npz").exists():
            average.load(state.path.parent / "last.average.npz", log)
    facts = RunFacts(data, out_dir, settings, network.count_params(network.model_arrays(model)), steps, devices,
                     mixed, started)
    if state is not None:
        _log_start(facts, state, log)
    epochs_run = first
    if first < t.epochs and not stopped:
        # Resumed runs draw different (but reproducible) crops from the epochs they skip.
        batches = distributed_batches(strategy, t.batch_size, lambda batch, worker, n: make_dataset(
            data.dataset, data.train, settings, batch, t.seed + 1000 * first, worker=worker, workers=n))
        trainer = Trainer(model, opt, strategy, *_losses(settings))
        end = EpochEnd(model, opt, average, facts, state, log) if state is not None else None
        progress = 1 if verbose == "auto" else int(verbose)
        if state is not None:
            state.start_clock()
        for epoch in range(first, t.epochs):
            if progress and t.epochs > 1:
                print(f"Epoch {epoch + 1}/{t.epochs}", flush=True)
            logs = trainer.epoch(batches, steps, average.update if average is not None else None, progress)
            epochs_run = epoch + 1
            stop = end(epoch, logs) if end is not None else False
            if chief.arrays([int(stop)])[0]:
                break
    if state is None:
        return {"chief": False, "worker": workers.index, "workers": workers.count, "epochs_run": epochs_run}
    return export(model, facts, state)
