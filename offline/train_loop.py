"""The training loop of ``kkoma train``, the same for one process and for several TensorFlow workers.

One step: every replica (a GPU, or the CPU; on every worker) runs the model on its share of the global batch, its
loss scaled by ``1 / replicas`` (so the sum over replicas is the mean loss of the global batch), the gradients are
summed over all replicas (an all-reduce: what every replica then holds is the gradient of the global batch's mean
loss), and the optimizer applies them on every replica: the weights stay identical everywhere. The optimizer clips
that summed gradient (``train.clip_norm``, a global norm): Keras' own optimizer would clip each replica's share
before summing, which is another clip once there is more than one replica (:class:`SummedGradientAdam`).

Workers: the standard ``TF_CONFIG`` environment variable (``{"cluster": {"chief": [...], "worker": [...]},
"task": {"type": ..., "index": ...}}``) naming more than one process selects
``tf.distribute.MultiWorkerMirroredStrategy``; otherwise the strategy is ``MirroredStrategy`` on GPUs and the
default one on the CPU. The chief (the ``chief`` task, or ``worker`` 0 when there is none) alone reads and writes
the run's folder; the others take its weights, optimizer state and epoch counter at the start and its early-stopping
decision after every epoch (:class:`ChiefBroadcast`). The steps are synchronous: the global batch is
``train.batch_size`` however many workers share it.

This module imports TensorFlow and Keras at the top; ``offline.train`` imports it only when a run starts.
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from kkoma.models.errors import KkomaError


@dataclass(frozen=True)
class Workers:
    """This process's place among the processes training one model: ``count`` of them (1: one machine), this one
    ``index`` (0: the chief, which alone reads and writes OUT_DIR)."""

    count: int = 1
    index: int = 0

    @property
    def chief(self) -> bool:
        return self.index == 0

    @classmethod
    def from_env(cls, environ=os.environ) -> "Workers":
        """From ``TF_CONFIG`` (absent: one worker). The chief is the ``chief`` task, or ``worker`` 0 when the
        cluster has no ``chief``; the others count on from there (TensorFlow's own numbering)."""
        text = environ.get("TF_CONFIG", "").strip()
        if not text:
            return cls()
        try:
            config = json.loads(text)
            cluster, task = config.get("cluster") or {}, config.get("task") or {}
            chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
            kind, index = str(task.get("type", "worker")), int(task.get("index", 0))
        except (ValueError, TypeError, AttributeError) as e:
            raise KkomaError(f"TF_CONFIG is not a TensorFlow cluster configuration ({e}).") from None
        if set(cluster) - {"chief", "worker"} or kind not in ("chief", "worker") or len(chiefs) > 1:
            raise KkomaError("TF_CONFIG may name one chief and workers only (kkoma train runs "
                             "MultiWorkerMirroredStrategy: no parameter servers or evaluators).")
        members = chiefs + workers
        place = index if kind == "chief" else len(chiefs) + index
        if not 0 <= place < len(members) or (kind == "chief" and index != 0):
            raise KkomaError(f"TF_CONFIG's task ({kind} {index}) is not in its cluster.")
        return cls(count=len(members), index=place)


@contextmanager
def lost_workers(workers: Workers):
    """Several workers: a collective operation that fails (TensorFlow finds a worker crashed or unreachable within
    about a minute and aborts the others' exchanges) ends the run in one sentence. One worker: errors as they are."""
    try:
        yield
    except tf.errors.OpError as e:
        if workers.count == 1:
            raise
        text = str(e.message)
        reason = ("a worker stopped sending heartbeats" if "unhealthy" in text else
                  f"{type(e).__name__}: {text.strip().splitlines()[0][:160] if text.strip() else ''}")
        raise KkomaError(f"worker {workers.index}: training stopped, the cluster lost a worker ({reason}); start "
                         "every worker again with --resume to continue from the last checkpoint.") from None


def setup_tf(settings, workers: Workers):
    """Seeds, strategy and precision policy. Returns (strategy, mixed_precision: bool, devices: str).

    Several workers: ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, made first (it sets up the runtime's
    collective operations, which must happen before TensorFlow runs anything). One: ``MirroredStrategy`` over the
    GPUs, or the default strategy on the CPU (where op determinism is switched on: two runs give the same weights).
    """
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if workers.count > 1 else None
    gpus = tf.config.list_physical_devices("GPU")
    keras.utils.set_random_seed(settings.train.seed)
    if not gpus:
        tf.config.experimental.enable_op_determinism()
    mp = settings.train.mixed_precision
    mixed = (mp == "on") or (mp == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if strategy is None:
        strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    devices = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    if workers.count > 1:
        devices = f"{workers.count} workers x {devices} (this is worker {workers.index}" \
                  + (", the chief)" if workers.chief else ")")
    return strategy, mixed, devices


class SummedGradientAdam(keras.optimizers.Adam):
    """Adam that takes gradients already summed over the replicas (:class:`Trainer` does it), so that its global
    norm clip (``global_clipnorm``) acts on the global batch's gradient. Keras' Adam sums them itself after clipping
    each replica's share; with one replica the two are the same. Same variables, same state file."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


def make_optimizer(settings, mixed: bool):
    """Adam with ``train.learning_rate`` and the global-norm clip ``train.clip_norm``; with mixed precision wrapped in
    a loss-scale optimizer, as ``model.compile`` does (its variables are the checkpoint's optimizer state)."""
    t = settings.train
    opt = SummedGradientAdam(t.learning_rate, global_clipnorm=t.clip_norm or None)
    return keras.optimizers.LossScaleOptimizer(opt, name="loss_scale_optimizer") if mixed else opt


class ChiefBroadcast:
    """The chief's values, given to every worker: one all-reduce in which only the chief's first replica
    contributes (the others add zeros). With one worker, nothing to do."""

    def __init__(self, strategy, workers: Workers):
        self.strategy = strategy
        self.active = workers.count > 1
        self._run = tf.function(self._broadcast)

    def _broadcast(self, values):
        return self.strategy.run(self._replica, args=(values,))

    @staticmethod
    def _replica(values):
        ctx = tf.distribute.get_replica_context()
        first = tf.equal(ctx.replica_id_in_sync_group, 0)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [tf.where(first, v, tf.zeros_like(v)) for v in values])

    def arrays(self, arrays: list) -> list[np.ndarray]:
        """The chief's ``arrays`` (numbers of any shape; float64 on the way, exact for float32 and integers below
        2 ** 53)."""
        if not self.active:
            return [np.asarray(a) for a in arrays]
        values = [tf.constant(np.asarray(a, np.float64)) for a in arrays]
        out = self.strategy.experimental_local_results(self._run(values))[0]
        return [np.asarray(o.numpy()).astype(np.asarray(a).dtype) for o, a in zip(out, arrays)]

    def variables(self, variables: list) -> None:
        """Every worker's ``variables`` (Keras variables: weights, optimizer state) take the chief's values."""
        if not self.active:
            return
        for v, a in zip(variables, self.arrays([np.asarray(v.numpy()) for v in variables])):
            v.assign(a)


def distributed_batches(strategy, batch: int, make: Callable[[int, int, int], "tf.data.Dataset"]):
    """An iterator over ``make(per_replica_batch, pipeline, pipelines)``'s batches, one input pipeline per worker
    (``pipeline`` = the worker's index), each replica given its own batch of ``batch / replicas`` examples."""
    replicas = strategy.num_replicas_in_sync
    if batch % replicas:
        raise KkomaError(f"train.batch_size ({batch}) must be a multiple of the number of replicas ({replicas}): "
                         "the global batch is shared equally.")
    return iter(strategy.distribute_datasets_from_function(
        lambda ctx: make(ctx.get_per_replica_batch_size(batch), ctx.input_pipeline_id, ctx.num_input_pipelines)))


class Trainer:
    """The training step on every replica, and an epoch of steps with a progress bar.

    losses : output name -> ``loss(y_true (B, T, 88), y_pred (B, T, 88))``, a scalar or a tensor whose mean is the
        loss (as ``model.compile``'s losses, reduced "sum_over_batch_size"); weights : output name -> its weight in
        the total loss ``loss``.
    The logs of a step and of an epoch: ``loss`` and ``<output>_loss`` (unweighted), means over the global batch
    (and over the epoch's steps), as ``model.fit`` logs them.
    """

    def __init__(self, model, optimizer, strategy, losses: dict, weights: dict):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.losses, self.weights = losses, weights
        self.names = sorted(["loss"] + [f"{k}_loss" for k in losses])
        # No XLA: model.compile's jit_compile="auto" leaves it off on CPUs and under tf.distribute, which covers
        # every run here (GPUs run under MirroredStrategy).
        self._step = tf.function(self._one_step, jit_compile=False)

    def _replica_step(self, x, y):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            pred = self.model(x, training=True)
            logs = {}
            for k, fn in self.losses.items():
                v = fn(y[k], pred[k])
                logs[f"{k}_loss"] = v if v.shape.rank == 0 else tf.reduce_sum(v) / tf.cast(tf.size(v), v.dtype)
            # Summed in model.compile's order (outputs sorted by name), so one worker's steps are its steps.
            total = sum(logs[f"{k}_loss"] * self.weights[k] for k in sorted(self.losses))
            scaled = self.optimizer.scale_loss(total / replicas if replicas > 1 else total)
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled, variables)
        if replicas > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        self.optimizer.apply(grads, variables)
        return {"loss": total, **logs}

    def _one_step(self, iterator):
        x, y = next(iterator)
        logs = self.strategy.run(self._replica_step, args=(x, y))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    def epoch(self, iterator, steps: int, after_step: Callable[[], None] | None = None,
              verbose: int = 0) -> dict[str, float]:
        """``steps`` steps on batches of ``iterator`` -> the epoch's mean logs. ``after_step`` runs after each step
        (the weight average); ``verbose`` 1 shows a progress bar with the running means, 2 one line at the end, 0
        nothing."""
        bar = keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=self.names) if verbose else None
        sums = dict.fromkeys(self.names, 0.0)
        for i in range(steps):
            logs = self._step(iterator)
            for k in self.names:
                sums[k] += float(logs[k])
            if after_step is not None:
                after_step()
            if bar is not None:
                bar.update(i + 1, [(k, sums[k] / (i + 1)) for k in self.names])
        if bar is not None and verbose == 1:
            sys.stdout.flush()
        return {k: sums[k] / steps for k in self.names}
