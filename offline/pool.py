"""One process pool for the offline jobs: ``kkoma prepare``'s pieces and ``kkoma transcribe``'s files.

:func:`run_pool` runs ``fn(item)`` for every item in worker processes and hands each result to the calling process as
it finishes, so the caller records progress (a manifest, a summary line) one item at a time:

- workers start from a fresh single-threaded ``forkserver`` (``spawn`` where there is none). Not ``fork``: a parent
  that has started threads (FluidSynth, Numba, a BLAS pool) can leave a forked child deadlocked on a lock one of them
  held. Modules named in ``preload`` are imported once in the server, so each worker starts in milliseconds;
- at most ``in_flight`` items per worker are handed out at a time, so results arrive while the run goes on and an
  interrupt leaves few items half done;
- Ctrl-C (KeyboardInterrupt in the caller): ``on_interrupt()`` runs (e.g. setting an event the workers poll), the
  items in flight are let finish, those that finished with a result are recorded, and the KeyboardInterrupt goes on.
  Workers ignore SIGINT (:func:`worker_setup`), so a worker is never killed in the middle of writing a file.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence


def pool_context(preload: Sequence[str] = ()):
    """The multiprocessing context workers start from (see the module notes)."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - Windows / macOS default


def limit_threads(n: int = 1) -> None:
    """Cap Numba's and the BLAS/OpenMP pools at ``n`` threads in this process.

    Through the libraries' own calls rather than environment variables: in a worker, NumPy is already imported (by
    the preload, or by unpickling the settings) before any initializer runs, so ``OPENBLAS_NUM_THREADS`` set then
    would change nothing, and one BLAS thread per core in every worker oversubscribes the machine.
    """
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # pragma: no cover - numba is a core dependency
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # stays in force: the returned object is never restored
    except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn / is a core dependency
        pass


def worker_setup(initializer: Callable | None = None, initargs: tuple = ()) -> None:
    """Every worker's first step: leave Ctrl-C to the parent, one thread per pool, then the caller's initializer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(1)
    if initializer is not None:
        initializer(*initargs)


def run_pool(fn: Callable[[Any], Any], items: Iterable, *, workers: int,
             on_result: Callable[[Any, Any], None],
             on_error: Callable[[Any, BaseException], Any] | None = None,
             initializer: Callable | None = None, initargs: tuple = (), preload: Sequence[str] = (),
             on_poll: Callable[[], None] | None = None, poll_s: float | None = None,
             on_interrupt: Callable[[], None] | None = None, in_flight: int = 2) -> None:
    """Run ``fn(item)`` for every item in ``workers`` processes; ``on_result(item, result)`` in this process as each
    finishes (completion order).

    Parameters
    ----------
    fn, initializer : module-level callables (they are pickled to the workers); ``initializer(*initargs)`` runs once
        per worker after :func:`worker_setup`'s signal and thread settings.
    on_error : ``on_error(item, exception) -> result`` for an item whose ``fn`` raised or whose worker died (the
        returned value is recorded through ``on_result``); None: the exception stops the run and is raised here.
    on_poll : called at least every ``poll_s`` seconds while waiting, and once at the end (e.g. to drain a progress
        queue the workers fill).
    on_interrupt : called first on KeyboardInterrupt (see the module notes).
    in_flight : items handed to each worker at a time.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    queue = list(items)
    queue.reverse()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(preload), initializer=worker_setup,
                               initargs=(initializer, initargs))
    pending: dict = {}

    def record(fut, item) -> None:
        try:
            result = fut.result()
        except Exception as e:  # fn raised, or the worker died (BrokenProcessPool)
            if on_error is None:
                raise
            result = on_error(item, e)
        on_result(item, result)

    try:
        while queue or pending:
            while queue and len(pending) < in_flight * workers:
                item = queue.pop()
                try:
                    pending[pool.submit(fn, item)] = item
                except Exception as e:  # the pool broke (a worker died): every later item fails the same way
                    if on_error is None:
                        raise
                    on_result(item, on_error(item, e))
            if not pending:
                continue
            done, _ = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            if on_poll is not None:
                on_poll()
            for fut in done:
                record(fut, pending.pop(fut))
        if on_poll is not None:
            on_poll()
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt()
        # Let the items in flight finish (their work is kept), then stop.
        pool.shutdown(wait=True, cancel_futures=True)
        for fut, item in pending.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                on_result(item, fut.result())
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
