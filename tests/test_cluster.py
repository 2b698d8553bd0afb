"""``kkoma transcribe --scheduler``: a real Dask cluster (a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, started here as separate processes) transcribes a folder; the outputs are byte-identical to the local
run, and a worker killed in the middle of a file costs only a retry of that file.

Runs the shipped model (plumbing, not accuracy: the reference is the same model run locally). Skipped without the
extra ``kkoma[cluster]``.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("distributed")

from kkoma.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "example.flac"


# ---------------------------------------------------------------------------------------------------------------
# Errors a user can hit: one sentence, non-zero exit (no cluster started)
# ---------------------------------------------------------------------------------------------------------------
def test_scheduler_and_jobs_do_not_mix(folder, capsys):
    assert main(["transcribe", str(folder), "-j", "2", "--scheduler", "local:2"]) != 0
    assert "--jobs and --scheduler do not mix" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["local:0", "local:two"])
def test_bad_local_address(folder, tmp_path, capsys, address):
    assert main(["transcribe", str(folder), "-o", str(tmp_path), "--scheduler", address]) != 0
    err = capsys.readouterr().err
    assert "write local:N with N the number of worker processes" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_unreachable_scheduler(folder, tmp_path, capsys, monkeypatch):
    import kkoma.offline.cluster as C

    monkeypatch.setattr(C, "CONNECT_TIMEOUT_S", 2.0)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["transcribe", str(folder), "-o", str(tmp_path), "--scheduler", address]) != 0
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# A real cluster: scheduler and workers as separate processes
# ---------------------------------------------------------------------------------------------------------------


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # the documented scheduler setting: a file whose worker dies is retried once
               DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three short clips of the example and one long file (the example six times: the one killed mid-file)."""
    d = tmp_path_factory.mktemp("cluster_in")
    x, sr = sf.read(str(EXAMPLE), dtype="float32")
    sf.write(str(d / "a_long.flac"), np.tile(x, 6), sr)
    for i, (a, b) in enumerate([(0.0, 4.0), (3.0, 7.0), (6.0, 10.0)]):
        sf.write(str(d / f"clip{i}.flac"), x[int(a * sr):int(b * sr)], sr)
    return d


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The local run (``-j 1``, the same command otherwise): every output's bytes by file name."""
    out = tmp_path_factory.mktemp("cluster_ref")
    p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "-j", "1"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "4 transcribed, 0 skipped, 0 failed" in err, err
    return _outputs(out)


class Cluster:
    """A scheduler and ``n`` workers (no nanny: a killed worker stays dead), each its own process."""

    def __init__(self, n: int):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        py = sys.executable
        self.scheduler = subprocess.Popen(
            [py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
             self.address.rsplit(":", 1)[1], "--no-dashboard"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers = [subprocess.Popen(
            [py, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny",
             "--no-dashboard", "--name", f"w{i}", "--host", "127.0.0.1"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
        from distributed import Client

        self.client = Client(self.address, timeout=60)
        self.client.wait_for_workers(n, timeout=120)
        self.pids = self.client.run(os.getpid)  # worker address -> pid

    def close(self):
        self.client.close()
        for p in self.workers + [self.scheduler]:
            if p.poll() is None:
                p.terminate()
        for p in self.workers + [self.scheduler]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def cluster():
    c = Cluster(2)
    yield c
    c.close()


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kkoma.cli", "transcribe", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _outputs(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


# Lambdas, so that cloudpickle sends it by value (the workers cannot import this test module).
_builds = lambda: __import__("kkoma.offline.cluster", fromlist=["BUILDS"]).BUILDS[0]  # noqa: E731
_executing = lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing]  # noqa: E731


@pytest.mark.slow
def test_scheduler_outputs_identical_to_local_run(folder, reference, cluster, tmp_path):
    out = tmp_path / "out"
    p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "--scheduler", cluster.address])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "4 transcribed, 0 skipped, 0 failed" in err
    assert _outputs(out) == reference
    # The bar counts audio seconds and ends at the folder's length (progress arrives as Dask events).
    total = sum(sf.info(str(f)).duration for f in folder.iterdir())
    assert "4/4 files 100%" in err and f"{total:.0f}/{total:.0f} s audio" in err
    # A second run skips every file: the local skip rule, applied before anything is sent.
    p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "--scheduler", cluster.address])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "0 transcribed, 4 skipped, 0 failed" in err
    # --overwrite does them again on the same workers, which built their model once for both runs.
    p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "--overwrite", "--scheduler",
              cluster.address])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "4 transcribed, 0 skipped, 0 failed" in err
    assert _outputs(out) == reference
    builds = cluster.client.run(_builds)
    assert set(builds.values()) <= {0, 1} and sum(builds.values()) >= 1, builds



def _kill_worker_running_long_file(cluster, p, dead=()):
    """Wait for a live worker to run the long file (the first job: sorted names), let it get into the file, kill
    it (SIGKILL: no cleanup). Returns the worker's address."""
    alive = [w for w in cluster.pids if w not in dead]
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and p.poll() is None:
        running = cluster.client.run(_executing, workers=alive)
        victim = next((w for w, keys in running.items() if any(k.endswith("-0") for k in keys)), None)
        time.sleep(0.05)
    assert victim is not None, "the long file never ran"
    time.sleep(0.5)
    assert any(k.endswith("-0") for k in cluster.client.run(_executing, workers=[victim])[victim]), \
        "the long file finished before the kill: make it longer"
    os.kill(cluster.pids[victim], signal.SIGKILL)
    return victim


@pytest.mark.slow
def test_worker_killed_mid_file_loses_only_that_file(folder, reference, cluster, tmp_path):
    out = tmp_path / "out"
    p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "--scheduler", cluster.address])
    _kill_worker_running_long_file(cluster, p)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "4 transcribed, 0 skipped, 0 failed" in err  # the long file was retried on the other worker
    assert _outputs(out) == reference
    total = sum(sf.info(str(f)).duration for f in folder.iterdir())
    assert f"{total:.0f}/{total:.0f} s audio" in err


@pytest.mark.slow
def test_file_whose_workers_die_twice_is_failed_and_the_rest_done(folder, reference, tmp_path):
    c = Cluster(3)
    try:
        out = tmp_path / "out"
        p = _cli([str(folder), "-o", str(out), "-f", "mid,csv", "--device", "cpu", "--scheduler", c.address])
        first = _kill_worker_running_long_file(c, p)
        _kill_worker_running_long_file(c, p, dead=[first])
        _, err = p.communicate(timeout=600)
    finally:
        c.close()
    assert p.returncode == 1, err
    assert "3 transcribed, 0 skipped, 1 failed" in err
    assert "a_long.flac: the Dask worker transcribing it died 2 times; nothing of it was written" in err
    assert _outputs(out) == {k: v for k, v in reference.items() if not k.startswith("a_long")}
