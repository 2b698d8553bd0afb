"""``kkoma transcribe --scheduler ADDRESS``: the files of one run transcribed by a Dask distributed cluster.

The same run as the local process pool (:func:`offline.transcribe.run_jobs`), with the workers anywhere: each Dask
task is one file, run by :func:`offline.transcribe.run_job` on a worker (so the decoding, the atomic writers of
:mod:`models.atomic`, the failure rules and the outcome lines are the local ones), and the client turns the
outcomes into the same summary. What a cluster adds:

- Paths are made absolute before they are sent: every worker must see the inputs and the output folder under the
  same paths (a shared file system).
- Each worker thread builds its transcriber (the model) once and reuses it for every file it gets, for as long as
  the worker lives (:func:`_transcriber`); a long-lived worker serving runs with other settings rebuilds it.
- A worker that dies in the middle of a file (killed, out of memory, machine gone) loses only that file: nothing of
  it was written (outputs are written whole, after the transcription, through an atomic rename), and the scheduler
  gives the file to another worker. A file whose workers die ``allowed-failures + 1`` times is reported failed
  (``distributed.scheduler.allowed-failures``; ``local:N`` sets it to 1, i.e. one retry, and the docs ask the same
  of a ``dask scheduler``).
- Progress is counted in audio seconds: workers send each file's running total as a Dask event at most every
  :data:`PROGRESS_EVERY_S`, and the client counts only what a file's best attempt reached, so a retried file is not
  counted twice.

Dask is the optional extra ``kkoma[cluster]``; nothing here is imported by a run without ``--scheduler``.
"""
from __future__ import annotations

import os
import pickle
import queue as queue_mod
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Callable

from kkoma.models.errors import KkomaError
from kkoma.offline.transcribe import FileOutcome, Job, make_transcriber, run_job

PROGRESS_EVERY_S = 0.5  # [s wall] a worker reports a file's progress at most this often (each report is a message)
CONNECT_TIMEOUT_S = 20.0  # [s] to reach the scheduler
WORKERS_TIMEOUT_S = 60.0  # [s] to wait for the first worker to join the scheduler
LOCAL_ALLOWED_FAILURES = 1  # ``local:N``: a file whose worker dies is retried once, then failed


# ---------------------------------------------------------------------------------------------------------------
# On the worker
# ---------------------------------------------------------------------------------------------------------------
_CACHE = threading.local()  # per worker thread: (key, transcriber); a transcriber is a stateful stream, never shared
BUILDS = [0]  # transcribers this worker process has built (ask a cluster with ``client.run``)


def _transcriber(settings, factory):
    """The worker thread's transcriber for these settings and factory, built on first use and then reused."""
    key = pickle.dumps((settings, factory))
    cached = getattr(_CACHE, "entry", None)
    if cached is None or cached[0] != key:
        _CACHE.entry = None  # drop the old model before building the new one
        _CACHE.entry = (key, (factory or make_transcriber)(settings))
        BUILDS[0] += 1
    return _CACHE.entry[1]


def _worker_task(job: Job, settings, factory, topic: str, index: int) -> FileOutcome:
    """One Dask task: transcribe ``job`` on this worker, reporting ``(index, audio seconds so far)`` on ``topic``."""
    # One file per worker thread: threads inside it would only oversubscribe the cores (as in the local pool). Set
    # before NumPy/Numba spin up their pools in this process; a worker that already ran a file keeps its setting.
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from distributed import get_worker

    worker = get_worker()
    done = [0.0, time.monotonic()]  # audio seconds so far [s], wall time of the last report

    def progress(sec: float) -> None:
        done[0] += sec
        now = time.monotonic()
        if now - done[1] >= PROGRESS_EVERY_S:
            done[1] = now
            worker.log_event(topic, (index, done[0]))

    return run_job(job, settings, _transcriber(settings, factory), progress=progress, threaded=False)


# ---------------------------------------------------------------------------------------------------------------
# On the client
# ---------------------------------------------------------------------------------------------------------------
def _absolute(job: Job) -> Job:
    """``job`` with absolute paths (the worker's working folder is not the client's); the display name is kept."""
    return replace(job, audio=Path(job.audio).absolute(),
                   outputs={ext: Path(p).absolute() for ext, p in job.outputs.items()})


def connect(address: str):
    """A ``distributed.Client`` for ``address`` (``tcp://host:port`` or another Dask address, or ``local:N`` for a
    cluster of N worker processes on this machine, one thread each). Returns ``(client, cluster or None)``."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise KkomaError("--scheduler needs Dask: install it with pip install 'kkoma[cluster]'.") from None
    if address.startswith("local:"):
        try:
            n = int(address[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise KkomaError(f"--scheduler {address}: write local:N with N the number of worker processes (1 or more).")
        with dask.config.set({"distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise KkomaError(f"cannot reach the Dask scheduler at {address} ({e}).") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        client.close()
        raise KkomaError(f"no Dask worker joined the scheduler at {address} within {WORKERS_TIMEOUT_S:.0f} s "
                         f"(start some with: dask worker {address} --nthreads 1).") from None
    return client, None


def _allowed_failures(dask_scheduler=None) -> int:
    return dask_scheduler.allowed_failures


def run_jobs_on_cluster(jobs: Sequence[Job], settings, address: str, *, progress=None,
                        on_outcome: Callable[[FileOutcome], None] | None = None, factory=None) -> list[FileOutcome]:
    """Run ``jobs`` on the Dask cluster at ``address``, one task per file; the contract of
    :func:`offline.transcribe.run_jobs` (``progress(seconds)`` as audio is consumed, ``on_outcome`` once per file,
    outcomes returned in the order they arrive). ``factory`` must be importable on the workers (a module-level
    callable of an installed module).

    Ctrl-C cancels the files not started yet and re-raises KeyboardInterrupt; a file already running finishes on its
    worker (its outputs appear whole, or not at all).
    """
    if not jobs:
        return []
    # Fail fast here on problems every file would share (missing weights, bad model settings).
    (factory or make_transcriber)(settings)
    client, cluster = connect(address)
    outcomes: list[FileOutcome] = []
    events: queue_mod.Queue = queue_mod.Queue()  # ("progress", index, seconds so far) | ("done", index, future)
    topic = f"kkoma-progress-{uuid.uuid4().hex}"
    counted = [0.0] * len(jobs)  # audio seconds already passed to progress(), per file (its best attempt)
    futures: list = []

    def count(i: int, total: float) -> None:
        if total > counted[i]:
            if progress is not None:
                progress(total - counted[i])
            counted[i] = total

    try:
        retries = client.run_on_scheduler(_allowed_failures)
        client.subscribe_topic(topic, lambda event: events.put(("progress",) + tuple(event[1])))
        for i, job in enumerate(jobs):
            f = client.submit(_worker_task, _absolute(job), settings, factory, topic, i, pure=False,
                              key=f"kkoma-transcribe-{topic[-8:]}-{i}")
            f.add_done_callback(lambda fut, i=i: events.put(("done", i, fut)))
            futures.append(f)
        remaining = len(jobs)
        while remaining:
            try:
                event = events.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            if event[0] == "progress":
                count(event[1], event[2])
                continue
            _, i, fut = event
            remaining -= 1
            o = _outcome(fut, jobs[i], retries)
            if o.status == "done":
                count(i, o.seconds)
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(o)
    except KeyboardInterrupt:
        client.cancel(futures)
        raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:
            pass
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def _outcome(fut, job: Job, retries: int) -> FileOutcome:
    """The FileOutcome of a finished task; a task that never returned (its workers died) is a failure."""
    from distributed import KilledWorker

    if fut.status == "finished":
        return fut.result()
    if fut.status == "cancelled":
        return FileOutcome(job.display, "failed", reason="its task was cancelled on the cluster")
    e = fut.exception()
    if isinstance(e, KilledWorker):
        tries = "once" if retries == 0 else f"{retries + 1} times"
        return FileOutcome(job.display, "failed", reason=f"the Dask worker transcribing it died {tries}; "
                                                         "nothing of it was written")
    return FileOutcome(job.display, "failed", reason=f"cluster task failed ({type(e).__name__}: {e})")
