"""Running work on threads: the one pool every part of ocistore uses.

hashlib, isal, zstandard and file I/O release the GIL, so layers staged, blobs copied and
tar members filled on several threads run on several cores. :func:`run_all` runs a list
of jobs on up to ``workers`` threads, in the order given:

* After a job fails no new job starts; the jobs already running go on unless they look
  at their :class:`Stop` (``stop.check()`` raises :class:`Halted` once another job failed,
  or once the caller was interrupted).
* The error raised is that of the first job, in the order given, that failed; a job that
  only halted because of the others does not count.
* The caller waits on an event rather than ``Thread.join``: in Python 3.11 a join cut short
  by Ctrl-C takes its thread for finished, and the interpreter would exit without waiting
  for it. After an interrupt the jobs are told (``stop.interrupted``), every thread is
  waited for, so each can remove what it was writing, and the interrupt goes on up; a
  second interrupt stops the wait. The threads are started with SIGINT blocked, so that
  an interrupt always finds them all started and counted, and never lands in one of
  them. A job that waits on a pipe runs on the caller's thread (``caller_first``), where
  Ctrl-C reaches it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

__all__ = ["Halted", "Stop", "run_all"]


class Halted(Exception):
    """Raised in a job by :meth:`Stop.check`: another job failed, or the caller was
    interrupted. Never the error :func:`run_all` reports for the job itself."""

    def __init__(self, stop: Stop) -> None:
        super().__init__("stopped")
        self.stop = stop


class Stop:
    """What a job of one :func:`run_all` call knows of the others. A job that fails may
    set :attr:`failed` itself before it cleans up, so that the others stop sooner."""

    __slots__ = ("failed", "interrupted")

    def __init__(self) -> None:
        #: Set once some job raised.
        self.failed = threading.Event()
        #: Set once the caller was interrupted (Ctrl-C).
        self.interrupted = threading.Event()

    def check(self, on_failure: bool = True) -> None:
        """Raise :class:`Halted` if the caller was interrupted, or (with ``on_failure``)
        if another job failed. A job calls this between pieces of its work."""
        if self.interrupted.is_set() or (on_failure and self.failed.is_set()):
            raise Halted(self)


Job = Callable[[Stop], object]


def run_all(jobs: Sequence[Job], workers: int, caller_first: bool = False) -> None:
    """Run every job, at most ``workers`` at once, each on a thread of its own (with one
    worker, on the caller's thread). With ``caller_first`` the first job runs on the
    caller's thread, beside the others: the one that waits on a pipe or a terminal, so
    that Ctrl-C reaches it where it waits. Returns when all are done; raises as the
    module says."""
    stop = Stop()
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            job(stop)
        return
    todo = iter(enumerate(jobs[1:] if caller_first else jobs, 1 if caller_first else 0))
    lock = threading.Lock()
    errors: list[tuple[int, BaseException]] = []
    # Threads still working, plus one for the starting below, so that a thread done
    # early does not look like the last one.
    running = [1]
    finished = threading.Event()

    def done() -> None:
        with lock:
            running[0] -= 1
            if not running[0]:
                finished.set()

    def take() -> tuple[int, Job] | None:
        with lock:
            if stop.failed.is_set() or stop.interrupted.is_set():
                return None
            return next(todo, None)

    def failed(position: int, e: BaseException) -> None:
        with lock:  # with the error, so that no job is taken after it
            if not (isinstance(e, Halted) and e.stop is stop):
                errors.append((position, e))
            stop.failed.set()

    def work() -> None:
        try:
            while (item := take()) is not None:
                position, job = item
                try:
                    job(stop)
                except BaseException as e:
                    failed(position, e)
        finally:
            done()

    threads = min(workers, len(jobs)) - (1 if caller_first else 0)
    try:
        _start(work, threads, running, lock, done)
        if caller_first:
            try:
                jobs[0](stop)
            except Exception as e:
                failed(0, e)
        finished.wait()
    except BaseException:
        # Interrupted (or a thread could not start): the jobs in flight stop at their
        # next check and clean up, and are waited for. A second interrupt stops the
        # wait: whatever they leave in tmp/ is garbage for gc.
        stop.interrupted.set()
        stop.failed.set()
        finished.wait()
        raise
    if errors:
        raise min(errors, key=lambda item: item[0])[1]


def _start(
    work: Callable[[], None],
    count: int,
    running: list[int],
    lock: threading.Lock,
    done: Callable[[], None],
) -> None:
    """Start ``count`` threads running ``work``, each counted in ``running`` before it
    starts. On the main thread SIGINT is blocked meanwhile, so that an interrupt cannot
    land inside ``Thread.start`` (where it is unknowable whether the thread started) and
    the threads, which inherit the mask, never take it: it arrives right after, in the
    caller."""
    import signal

    main = threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if main else None
    try:
        for i in range(count):
            thread = threading.Thread(target=work, name=f"ocistore-worker-{i}", daemon=True)
            with lock:
                running[0] += 1
            try:
                thread.start()
            except Exception:  # it could not start, so it will not count itself out
                done()
                raise
    finally:
        try:
            done()  # the one for the starting
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
