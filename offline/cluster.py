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
it with ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=1``; Dask's default is 3 retries); a file that kills its
worker again is reported as failed, and the other files go on. Progress counts audio seconds as files finish.

Dask comes with the extra ``kkoma[cluster]``; nothing here is imported by a local run.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

from kkoma.models.errors import KkomaError
from kkoma.offline.transcribe import FileOutcome, Job, make_transcriber, run_job, usable_cores

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
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            # The scheduler's HTTP server (dashboard, health checks) on a free port: a fixed one may be taken.
            cluster = LocalCluster(n_workers=int(where), threads_per_worker=1, processes=True,
                                   dashboard_address=":0")
        return Client(cluster), cluster
    try:
        return Client(str(where), timeout="20s"), None
    except (OSError, TimeoutError) as e:
        raise KkomaError(f"cannot reach the Dask scheduler at {where} ({e}).") from None


def cluster_job(job: Job, settings, factory=None) -> FileOutcome:
    """One file on a worker (Dask task): :func:`offline.transcribe.run_job` with this worker thread's transcriber,
    streaming in threads when the worker has two cores for each of its task threads."""
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
        task_threads = 1
    return run_job(job, settings, tr, threaded=usable_cores() >= 2 * task_threads)


def _absolute(job: Job) -> Job:
    """The job with absolute paths: a worker's current folder is not the user's."""
    return Job(Path(job.audio).resolve(), {k: Path(p).resolve() for k, p in job.outputs.items()}, job.display)


def run_jobs_cluster(jobs: Sequence[Job], settings, address: str, *, progress=None,
                     on_outcome: Callable[[FileOutcome], None] | None = None, factory=None) -> list[FileOutcome]:
    """Run ``jobs`` as tasks of the cluster at ``address``, reporting each outcome as it arrives (as
    :func:`offline.transcribe.run_jobs`: ``progress(seconds)`` as files finish, ``on_outcome`` once per file).

    ``factory`` (default :func:`offline.transcribe.make_transcriber`) must be importable on the workers.
    Ctrl-C cancels the files not yet done and re-raises KeyboardInterrupt (outputs are written atomically: a file
    is either complete or absent).
    """
    # Fail fast here on problems every file would share (missing weights, bad model settings).
    (factory or make_transcriber)(settings)
    client, cluster = _client(address)
    outcomes: list[FileOutcome] = []
    try:
        from distributed import as_completed

        futures = {client.submit(cluster_job, _absolute(job), settings, factory, pure=False): job for job in jobs}
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    o = fut.result()
                except Exception as e:  # KilledWorker: the file killed a worker twice; or the task was lost
                    o = FileOutcome(job.display, "failed",
                                    reason=f"worker process failed ({type(e).__name__}: {str(e).splitlines()[0]})")
                outcomes.append(o)
                if progress is not None and o.status == "done":
                    progress(o.seconds)
                if on_outcome is not None:
                    on_outcome(o)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes
