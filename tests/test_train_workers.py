"""``kkoma train`` on several TensorFlow workers (offline/train_loop.py): two worker processes on this machine, driven
by ``TF_CONFIG``, train a tiny model, the chief alone writing the run, and resume it; one process gives the same
weights twice; ``TF_CONFIG`` is read as TensorFlow reads it."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from test_train import TINY, make_dataset  # noqa: E402  (the toy dataset and model of the training tests)

from kkoma.models.errors import KkomaError  # noqa: E402
from kkoma.models.settings import load_settings  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _two_workers(ds: Path, out: Path, logs: Path, epochs: int, *extra: str) -> list[tuple[int, str]]:
    """Run ``kkoma train`` as a chief and a worker (separate processes, localhost) -> (exit status, output) each.
    The chief gets OUT_DIR ``out``, the worker ``out`` + "_worker" (which it must not make)."""
    ports = _free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    sets = [a for o in TINY + ["train.steps_per_epoch=3", "train.average_decay=0.9"] for a in ("--set", o)]
    procs = []
    for i, task in enumerate(({"type": "chief", "index": 0}, {"type": "worker", "index": 0})):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": task}),
                   TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        log = open(logs / f"w{i}_{epochs}.log", "w")
        folder = out if i == 0 else out.with_name(out.name + "_worker")
        procs.append((subprocess.Popen([sys.executable, "-m", "kkoma.cli", *sets, "train", str(ds), str(folder),
                                        "--epochs", str(epochs), "-q", *extra],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for p, log in procs:
        try:
            p.wait(timeout=240)
        except subprocess.TimeoutExpired:  # a worker waiting in a collective ignores SIGTERM
            for q, _ in procs:
                q.kill()
            p.wait()
        log.close()
        results.append((p.returncode, Path(log.name).read_text()))
    return results


@pytest.mark.slow
def test_two_workers_train_and_resume(tmp_path):
    s = load_settings(overrides=TINY)
    ds = make_dataset(tmp_path / "ds", s, n_train=4, n_valid=1)
    run = tmp_path / "run"
    (chief_rc, chief_out), (worker_rc, worker_out) = _two_workers(ds, run, tmp_path, 1)
    assert chief_rc == 0, chief_out[-3000:]
    assert worker_rc == 0, worker_out[-3000:]
    assert "2 workers x CPU (this is worker 0, the chief)" in chief_out
    assert "worker 1 of 2: 1 epochs done" in worker_out
    for f in ("kkoma.npz", "summary.json", "learning_curve.tsv", "checkpoints/state.json",
              "checkpoints/last.weights.h5", "checkpoints/best.weights.h5", "checkpoints/last.optimizer.npz",
              "checkpoints/last.average.npz"):
        assert (run / f).exists(), f
    assert not (tmp_path / "run_worker").exists()  # only the chief writes
    # The steps are synchronous: both workers report the same global-batch losses.
    epoch_line = [line for line in chief_out.splitlines() if line.startswith("3/3 - ")]
    assert epoch_line and epoch_line[0].split("loss:")[1] in worker_out
    first = json.loads((run / "checkpoints" / "state.json").read_text())
    assert first["epoch"] == 0 and len(first["history"]) == 1

    (chief_rc, chief_out), (worker_rc, worker_out) = _two_workers(ds, run, tmp_path, 2, "--resume")
    assert chief_rc == 0 and worker_rc == 0, chief_out[-3000:] + worker_out[-3000:]
    assert "resuming after epoch 1" in chief_out
    assert "worker 1 of 2: 2 epochs done" in worker_out
    assert not (tmp_path / "run_worker").exists()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and state["history"][0] == first["history"][0] and len(state["history"]) == 2
    with np.load(run / "checkpoints" / "last.optimizer.npz") as z:
        assert int(z["arr_0"]) == 6  # Adam's step count went on from the checkpoint's 3
    with np.load(run / "checkpoints" / "last.average.npz") as z:
        assert int(z["arr_0"]) == 6
    assert [line.split("\t")[0] for line in (run / "learning_curve.tsv").read_text().splitlines()] == \
        ["epoch", "1", "2"]


def test_one_worker_runs_are_deterministic(tmp_path):
    """Two identical runs (one process, CPU) end with identical weights and losses: the custom loop adds no
    nondeterminism (and where main's model.fit ran, it gave the same weights: see the commit that replaced it)."""
    from kkoma.models import network
    from kkoma.offline.train import train

    s = load_settings(overrides=TINY + ["train.epochs=1", "train.steps_per_epoch=8", "train.average_decay=0.9"])
    ds = make_dataset(tmp_path / "ds", s, n_train=3, n_valid=1)
    results = []
    for name in ("a", "b"):
        summary = train(ds, tmp_path / name, s, log=lambda m: None, verbose=0)
        model = network.build_model(s)
        model.load_weights(tmp_path / name / "checkpoints" / "last.weights.h5")
        results.append((summary["history"][0], network.model_arrays(model)))
    (ha, wa), (hb, wb) = results
    assert ha["loss"] == hb["loss"] and ha["val_score"] == hb["val_score"]
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # Not the initial weights: the steps changed them.
    assert not np.array_equal(wa["lstm_kernel"], network.model_arrays(network.build_model(s))["lstm_kernel"])


def test_workers_from_tf_config():
    from kkoma.offline.train_loop import Workers

    def read(cluster, task):
        return Workers.from_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})})

    assert Workers.from_env({}) == Workers(1, 0)
    two = {"chief": ["a:1"], "worker": ["b:1"]}
    assert read(two, {"type": "chief", "index": 0}) == Workers(2, 0)
    assert read(two, {"type": "worker", "index": 0}) == Workers(2, 1)
    assert not read(two, {"type": "worker", "index": 0}).chief
    three = {"worker": ["a:1", "b:1", "c:1"]}  # no chief: worker 0 is
    assert read(three, {"type": "worker", "index": 0}) == Workers(3, 0)
    assert read(three, {"type": "worker", "index": 2}) == Workers(3, 2)
    assert read({"worker": ["a:1"]}, {"type": "worker", "index": 0}) == Workers(1, 0)
    for cluster, task in ((two, {"type": "worker", "index": 1}), (two, {"type": "ps", "index": 0}),
                          ({**two, "ps": ["c:1"]}, {"type": "chief", "index": 0})):
        with pytest.raises(KkomaError):
            read(cluster, task)
    with pytest.raises(KkomaError, match="TF_CONFIG"):
        Workers.from_env({"TF_CONFIG": "{not json"})


#: Runs in a fresh process: two logical CPUs must be set up before TensorFlow starts.
REPLICAS = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kkoma.offline.train_loop import SummedGradientAdam, Trainer, distributed_batches

rng = np.random.default_rng(0)
x = rng.normal(size=(4, 6, 5)).astype(np.float32)
y = (rng.random((4, 6, 3)) < 0.3).astype(np.float32)

def make(batch, pipeline, pipelines):
    return tf.data.Dataset.from_tensor_slices((x, {"a": y})).batch(batch).repeat()

def run(strategy, optimizer_class):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        inp = keras.Input((None, 5))
        h = keras.layers.LSTM(8, return_sequences=True)(inp)
        model = keras.Model(inp, {"a": keras.layers.Dense(3, activation="sigmoid", name="a")(h)})
        opt = optimizer_class(0.1, global_clipnorm=0.05)  # small: the clip acts
        opt.build(model.trainable_variables)
    trainer = Trainer(model, opt, strategy, {"a": keras.losses.binary_crossentropy}, {"a": 1.0})
    logs = trainer.epoch(distributed_batches(strategy, 4, make), 3)
    return logs, [v.numpy() for v in model.trainable_variables]

one_logs, one = run(tf.distribute.get_strategy(), SummedGradientAdam)
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert two.num_replicas_in_sync == 2
two_logs, both = run(two, SummedGradientAdam)
_, keras_adam = run(two, keras.optimizers.Adam)
same = max(float(np.max(np.abs(a - b))) for a, b in zip(one, both))
other = max(float(np.max(np.abs(a - b))) for a, b in zip(one, keras_adam))
print("RESULT", one_logs["loss"], two_logs["loss"], same, other)
"""


def test_two_replicas_take_the_step_of_one_on_the_global_batch():
    """The step's arithmetic: two replicas sharing a batch of 4 (MirroredStrategy over two logical CPUs) end where
    one replica on the whole batch does, with the global-norm clip acting; Keras' own Adam, which clips each
    replica's share before summing, does not."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_CONFIG", None)
    p = subprocess.run([sys.executable, "-c", REPLICAS], env=env, capture_output=True, text=True, timeout=240)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, p.stdout[-2000:] + p.stderr[-3000:]
    one_loss, two_loss, same, keras_adam = (float(v) for v in line.split()[1:])
    assert two_loss == pytest.approx(one_loss, rel=1e-6)
    assert same < 1e-5
    assert keras_adam > 1e-3


def test_train_help_names_the_workers(capsys):
    from kkoma.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "TF_CONFIG" in out and "the chief alone writes it" in out
