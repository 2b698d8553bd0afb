"""``kkoma transcribe --scheduler``: a Dask scheduler and two workers started as separate processes on this machine
(offline/cluster.py). The transcriber is the test double of tests/test_transcribe.py (real decoding, tracker and
writing; a loudness detector for the network), imported by the workers from this folder.
"""
import json
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

from test_transcribe import EnergyTranscriber, tone_file  # noqa: E402

import kkoma.offline.transcribe as T  # noqa: E402
from kkoma.models.errors import KkomaError  # noqa: E402
from kkoma.models.settings import load_settings  # noqa: E402
from kkoma.offline.cluster import parse_address  # noqa: E402

S = load_settings()
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A `dask scheduler` (one retry for a file whose worker dies) and two `dask worker`s, each a separate process."""
    port = _free_port()
    markers = tmp_path_factory.mktemp("markers")
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1", KKOMA_TEST_MARKERS=str(markers),
               DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0",
               PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    logs = tmp_path_factory.mktemp("dask")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env,
                              stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    address = f"tcp://127.0.0.1:{port}"
    for i in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-dashboard", "--name", f"w{i}"], env=env,
                                      stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))
    from distributed import Client

    deadline = time.monotonic() + 120
    with Client(address, timeout="60s") as c:
        while len(c.scheduler_info()["workers"]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the two workers did not start: " + (logs / "worker0.log").read_text()[-2000:])
            time.sleep(0.5)
    yield address, markers
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_parse_address():
    assert parse_address("local:3") == ("local", 3)
    assert parse_address("tcp://127.0.0.1:8786") == ("remote", "tcp://127.0.0.1:8786")
    for bad in ("local:0", "local:x", "127.0.0.1:8786"):
        with pytest.raises(KkomaError):
            parse_address(bad)


def _files(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tone_file(folder / f"f{i}.wav", seconds=1.0 + 0.5 * i, bursts=((0.1 * (i + 1), 0.6),))


def _notes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): json.loads(p.read_text())["notes"] for p in sorted(folder.rglob("*.json"))}


def test_cluster_run_equals_the_local_run_and_keeps_the_rules(cluster, tmp_path):
    cluster, _ = cluster
    src = tmp_path / "in"
    _files(src, 4)
    _files(src / "sub", 1)
    local, remote = tmp_path / "local", tmp_path / "remote"
    s1 = T.transcribe_paths([str(src)], S, out_dir=local, formats=("json", "mid"), quiet=True, n_jobs=1,
                            factory=EnergyTranscriber)
    s2 = T.transcribe_paths([str(src)], S, out_dir=remote, formats=("json", "mid"), quiet=True,
                            factory=EnergyTranscriber, scheduler=cluster)
    assert len(s1.done) == len(s2.done) == 5 and not s2.failed
    assert _notes(remote) == _notes(local) and len(_notes(remote)) == 5
    assert (remote / "sub" / "f0.mid").read_bytes() == (local / "sub" / "f0.mid").read_bytes()
    assert s2.audio_seconds == pytest.approx(s1.audio_seconds)
    # Same skip rule: a second run skips every file; --overwrite redoes them.
    s3 = T.transcribe_paths([str(src)], S, out_dir=remote, quiet=True, factory=EnergyTranscriber, scheduler=cluster)
    assert len(s3.skipped) == 5 and not s3.done
    # A bad file fails alone, with its reason, as locally.
    (src / "bad.wav").write_bytes(b"not audio at all")
    s4 = T.transcribe_paths([str(src)], S, out_dir=remote, quiet=True, overwrite=True, factory=EnergyTranscriber,
                            scheduler=cluster)
    assert len(s4.done) == 5 and [o.audio for o in s4.failed] == [str(src / "bad.wav")]


class Dying(EnergyTranscriber):
    """EnergyTranscriber that kills its own worker process (SIGKILL, mid-file: after the first block) on a file of
    constant samples 0.5, every time, and on one of 0.25 the first time only (a marker file in
    ``$KKOMA_TEST_MARKERS`` is removed before the kill, so the retry on another worker goes through)."""

    def reset(self):
        super().reset()
        self._first = True

    def process(self, block):
        if getattr(self, "_first", False) and len(block):
            self._first = False
            level = float(np.median(block))
            once = Path(os.environ.get("KKOMA_TEST_MARKERS", "/nonexistent")) / "kill_once"
            kill = abs(level - 0.5) < 1e-3
            if abs(level - 0.25) < 1e-3 and once.exists():
                once.unlink()
                kill = True
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().process(block)


def dying_factory(settings):
    return Dying(settings)


def test_a_worker_killed_during_a_file_loses_only_that_file(cluster, tmp_path):
    address, markers = cluster
    src = tmp_path / "in"
    _files(src, 2)
    for name, level in (("g_once", 0.25), ("h_always", 0.5)):
        sf.write(str(src / f"{name}.wav"), np.full(2 * 16000, level, np.float32), 16000)
    (markers / "kill_once").write_text("")
    out, ref = tmp_path / "out", tmp_path / "ref"
    s = T.transcribe_paths([str(src)], S, out_dir=out, formats=("json",), quiet=True, factory=dying_factory,
                           scheduler=address)
    assert sorted(Path(o.audio).name for o in s.done) == ["f0.wav", "f1.wav", "g_once.wav"], \
        [(o.audio, o.reason) for o in s.failed]
    assert [Path(o.audio).name for o in s.failed] == ["h_always.wav"]
    assert "worker process failed: the Dask worker transcribing it died 2 times" in s.failed[0].reason
    assert not (markers / "kill_once").exists()  # g_once did kill a worker, and was retried
    assert sorted(p.name for p in out.iterdir()) == ["f0.json", "f1.json", "g_once.json"]  # nothing half-written
    T.transcribe_paths([str(src / f) for f in ("f0.wav", "f1.wav", "g_once.wav")], S, out_dir=ref,
                       formats=("json",), quiet=True, n_jobs=1, factory=EnergyTranscriber)
    assert _notes(out) == _notes(ref) and _notes(out)["g_once.json"]


def test_cli_local_cluster_gives_the_notes_of_a_local_run(tmp_path, capsys):
    """`kkoma transcribe --scheduler local:1` (a local cluster started and stopped by the run), shipped model."""
    from kkoma.cli import main
    from kkoma.models.notes import read_midi

    example = REPO / "examples" / "example.flac"
    assert main(["transcribe", str(example), "-o", str(tmp_path / "local"), "-q"]) == 0
    assert main(["transcribe", str(example), "-o", str(tmp_path / "dask"), "-q", "--scheduler", "local:1"]) == 0
    want = read_midi(tmp_path / "local" / "example.mid")
    assert want and read_midi(tmp_path / "dask" / "example.mid") == want


def test_cli_bad_address_is_one_sentence(tmp_path, capsys):
    from kkoma.cli import main

    assert main(["transcribe", str(tmp_path), "--scheduler", "127.0.0.1:8786"]) == 1
    err = capsys.readouterr().err
    assert "is not a scheduler address" in err and "Traceback" not in err


class Slow(EnergyTranscriber):
    """EnergyTranscriber that takes 0.6 s per block, so a file lasts several progress reports."""

    def process(self, block):
        time.sleep(0.6)
        return super().process(block)


def slow_factory(settings):
    return Slow(settings)


def test_progress_counts_audio_seconds_while_files_run(cluster, tmp_path):
    """The bar moves during a file (Dask events from the task), and ends at the audio's length, counted once."""
    from kkoma.offline.cluster import run_jobs_cluster

    address, _ = cluster
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tone_file(src / f"long{i}.wav", seconds=100.0, sr=16000, bursts=((1.0, 2.0),))
    inputs, _ = T.find_inputs([str(src)])
    jobs, _ = T.plan_jobs(inputs, tmp_path / "out", ("mid",), False)
    calls: list = []
    outcomes = run_jobs_cluster(jobs, S, address, progress=calls.append, factory=slow_factory)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert sum(calls) == pytest.approx(200.0, abs=0.1)
    assert len(calls) > len(jobs)  # reports before the files ended, not one per finished file


def test_no_worker_is_one_sentence(tmp_path, monkeypatch):
    """A scheduler without workers: the run says so after WORKERS_TIMEOUT_S instead of waiting for ever."""
    import kkoma.offline.cluster as C

    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                          str(port), "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setattr(C, "WORKERS_TIMEOUT_S", 2.0)
        _files(tmp_path / "in", 1)
        with pytest.raises(KkomaError, match="no Dask worker joined the scheduler at tcp://127.0.0.1"):
            for _ in range(40):  # the scheduler takes a moment to listen
                try:
                    T.transcribe_paths([str(tmp_path / "in")], S, out_dir=tmp_path / "out", quiet=True,
                                       factory=EnergyTranscriber, scheduler=f"tcp://127.0.0.1:{port}")
                except KkomaError as e:
                    if "cannot reach" not in str(e):
                        raise
                    time.sleep(0.5)
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    finally:
        p.terminate()
        p.wait(timeout=20)
