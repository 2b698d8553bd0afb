"""``kkoma transcribe --scheduler ADDRESS``: the files of a run as tasks of a Dask distributed cluster.

The same run as on one machine (offline/transcribe.py: inputs, outputs, the skip / overwrite / failure rules, the
summary), with :func:`run_jobs_cluster` in place of the local pool. Each task is one file, done by
:func:`offline.transcribe.run_job` on a worker: read from its path (absolute: every worker must see the same
files, e.g. on a shared file system), its outputs written there atomically. A worker builds the model once (per
task thread) and reuses it for every file it gets.

Addresses: ``tcp://host:8786`` (a scheduler started with Dask's own ``dask scheduler``, workers with ``dask worker
tcp://host:8786 --nthreads 1``: one file at a time per worker process, which streams it in threads when it has two
cores for it) or ``local:N`` (a local cluster of N worker processes, started and stopped by this run).

A worker that dies during a file (killed, out of memory) loses only that file: the scheduler gives it to another
worker, once (``local:N`` sets ``distributed.scheduler.allowed-failures`` to 1; for a scheduler of your own, start
it with ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1``; Dask's default is 3 retries, and with
``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=1.0``, else a file queued on a worker that another file kills
is charged with that death too); a file that kills its
worker again is reported as failed, and the other files go on. Progress counts audio seconds as the workers
stream them (Dask events, at most every PROGRESS_EVERY_S per task).

Dask comes with the extra ``kkoma[cluster]``; nothing here is imported by a local run.
"""
from __future__ import annotations

import queue as queue_mod
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from kkoma.models.errors import KkomaError
from kkoma.models.pipeline import make_transcriber
from kkoma.offline.transcribe import FileOutcome, Job, run_job, usable_cores

PROGRESS_EVERY_S = 0.5  # [s wall] a task reports its file's progress at most this often (each report is a message)
WORKERS_TIMEOUT_S = 60.0  # [s] a scheduler of your own: how long to wait for its first worker

# Worker-side: one transcriber per (task thread, factory, settings), reused across the files that thread runs.
_TRANSCRIBERS: dict = {}


def parse_address(address: str) -> tuple[str, int | str]:
    """``"local:N"`` -> ``("local", N)``; ``"tcp://host:port"`` (any scheme Dask knows) -> ``("remote", address)``."""
    address = address.strip()
    if address.startswith("local:"):
        try:
            n = int(address[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise KkomaError(f"--scheduler {address}: local:N needs a number of worker processes N >= 1.")
        return "local", n
    if "://" not in address:
        raise KkomaError(f"--scheduler {address!r} is not a scheduler address: give tcp://HOST:PORT (a `dask "
                         "scheduler`) or local:N (N local worker processes).")
    return "remote", address


def _client(address: str):
    """A connected ``distributed.Client`` (and the LocalCluster it owns for ``local:N``); KkomaError when Dask is
    missing or the scheduler cannot be reached."""
    kind, where = parse_address(address)
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise KkomaError("--scheduler needs Dask: pip install 'kkoma[cluster]'.") from None
    if kind == "local":
        # worker-saturation 1.0: a worker holds only the files it is running, so a worker that dies costs a retry
        # to those alone (Dask counts a death against every task on the worker, queued ones included).
        with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                              "distributed.scheduler.worker-saturation": 1.0}):
            # The scheduler's HTTP server (dashboard, health checks) on a free port: a fixed one may be taken.
            cluster = LocalCluster(n_workers=int(where), threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
        return Client(cluster), cluster
    try:
        client = Client(str(where), timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise KkomaError(f"cannot reach the Dask scheduler at {where} ({e}).") from None
    try:  # without a worker the tasks would wait for ever
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        client.close()
        raise KkomaError(f"no Dask worker joined the scheduler at {where} within {WORKERS_TIMEOUT_S:g} s (start "
                         f"some with: dask worker {where} --nthreads 1).") from None
    return client, None


def cluster_job(job: Job, settings, factory=None, topic: str | None = None, index: int = 0) -> FileOutcome:
    """One file on a worker (Dask task): :func:`offline.transcribe.run_job` with this worker thread's transcriber,
    streaming in threads when the worker has two cores for each of its task threads. With ``topic``, the audio
    seconds done so far are sent as Dask events ``(index, seconds)`` on it, at most every :data:`PROGRESS_EVERY_S`."""
    factory_ = factory or make_transcriber
    key = (threading.get_ident(), factory_, repr(settings))
    tr = _TRANSCRIBERS.get(key)
    if tr is None:
        tr = _TRANSCRIBERS[key] = factory_(settings)
    try:
        from distributed import get_worker

        worker = get_worker()
        task_threads = max(1, int(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1))
    except (ImportError, ValueError):  # not on a worker (called directly)
        worker, task_threads = None, 1
    progress = None
    if topic is not None and worker is not None:
        done = [0.0, time.monotonic()]  # audio seconds so far [s], wall time of the last report

        def progress(sec: float) -> None:
            done[0] += sec
            if time.monotonic() - done[1] >= PROGRESS_EVERY_S:
                done[1] = time.monotonic()
                worker.log_event(topic, (index, done[0]))
    return run_job(job, settings, tr, progress=progress, threaded=usable_cores() >= 2 * task_threads)


def _absolute(job: Job) -> Job:
    """The job with absolute paths: a worker's current folder is not the user's."""
    return Job(Path(job.audio).resolve(), {k: Path(p).resolve() for k, p in job.outputs.items()}, job.display)


def run_jobs_cluster(jobs: Sequence[Job], settings, address: str, *, progress=None,
                     on_outcome: Callable[[FileOutcome], None] | None = None, factory=None) -> list[FileOutcome]:
    """Run ``jobs`` as tasks of the cluster at ``address``, reporting each outcome as it arrives (as
    :func:`offline.transcribe.run_jobs`: ``progress(seconds)`` as audio is consumed, ``on_outcome`` once per file).

    Progress arrives as Dask events from the tasks; a file's seconds are counted once, as far as its furthest
    attempt got (a file retried after its worker died is not counted twice).
    ``factory`` (default :func:`models.pipeline.make_transcriber`) must be importable on the workers.
    Ctrl-C cancels the files not yet done and re-raises KeyboardInterrupt (outputs are written atomically: a file
    is either complete or absent).
    """
    # Fail fast here on problems every file would share (missing weights, bad model settings).
    (factory or make_transcriber)(settings)
    client, cluster = _client(address)
    outcomes: list[FileOutcome] = []
    events: queue_mod.Queue = queue_mod.Queue()  # ("progress", index, seconds so far) | ("done", index, future)
    topic = f"kkoma-progress-{uuid.uuid4().hex}"
    counted = [0.0] * len(jobs)  # audio seconds passed to progress() per file

    def count(i: int, total: float) -> None:
        if total > counted[i]:
            if progress is not None:
                progress(total - counted[i])
            counted[i] = total

    futures: list = []
    try:
        try:
            retries = client.run_on_scheduler(_allowed_failures)
        except Exception:  # a scheduler that refuses to run code (distributed.scheduler.pickle = false)
            retries = None
        client.subscribe_topic(topic, lambda event: events.put(("progress", *event[1])))
        for i, job in enumerate(jobs):
            f = client.submit(cluster_job, _absolute(job), settings, factory, topic, i, pure=False)
            f.add_done_callback(lambda fut, i=i: events.put(("done", i, fut)))
            futures.append(f)
        remaining = len(jobs)
        try:
            while remaining:
                try:
                    event = events.get(timeout=0.2)
                except queue_mod.Empty:
                    continue
                if event[0] == "progress":
                    count(event[1], event[2])
                    continue
                remaining -= 1
                o = _outcome(event[2], jobs[event[1]], retries)
                if o.status == "done":
                    count(event[1], o.seconds)
                outcomes.append(o)
                if on_outcome is not None:
                    on_outcome(o)
        except KeyboardInterrupt:
            client.cancel(futures)
            raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # never subscribed, or the scheduler is gone
            pass
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def _allowed_failures(dask_scheduler=None) -> int:
    return int(dask_scheduler.allowed_failures)


def _outcome(fut, job: Job, retries: int | None) -> FileOutcome:
    """The FileOutcome of a finished task; a task that never returned (its workers died) is a failure.

    A result lives on the worker that computed it: if that worker died after the task ended, the scheduler computes
    it again, and ``result()`` waits for that (the file is transcribed again; its outputs are replaced atomically).
    """
    from distributed import KilledWorker

    try:
        return fut.result()
    except KilledWorker:
        times = "more than once" if retries is None else "once" if retries == 0 else f"{retries + 1} times"
        return FileOutcome(job.display, "failed", reason=f"worker process failed: the Dask worker transcribing it "
                                                         f"died {times}; nothing of it was written")
    except Exception as e:  # cancelled on the cluster, or the task itself raised
        first = str(e).splitlines()[0] if str(e) else ""
        return FileOutcome(job.display, "failed", reason=f"worker process failed ({type(e).__name__}: {first})")
