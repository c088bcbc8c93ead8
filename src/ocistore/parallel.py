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
  Ctrl-C reaches it; jobs that wait on each other through a queue do it with
  :func:`get` and :func:`put`, which give up once the caller was interrupted.
* :class:`InterruptiblePipe` reads or writes standard input or output on the main
  thread so that Ctrl-C always stops the wait.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TypeVar

__all__ = ["Halted", "InterruptiblePipe", "Stop", "ahead", "get", "put", "run_all"]

_T = TypeVar("_T")
#: How often a job waiting on another through a queue looks whether it should stop.
_POLL = 0.05


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


def get(q: queue.Queue[_T], stop: Stop, on_failure: bool = False) -> _T:
    """``q.get()`` for a job waiting on another: raises :class:`Halted` once the caller
    was interrupted (the other may never put anything: it was interrupted before it
    began), or (with ``on_failure``) once another job failed."""
    while True:
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            stop.check(on_failure)


def put(q: queue.Queue[_T], item: _T, stop: Stop, on_failure: bool = True) -> None:
    """``q.put(item)`` into a bounded queue for a job feeding another: raises
    :class:`Halted` once the caller was interrupted, or (with ``on_failure``) once
    another job failed, rather than wait for room that will not come."""
    while True:
        stop.check(on_failure)
        try:
            q.put(item, timeout=_POLL)
            return
        except queue.Full:
            pass


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


_END = object()


def ahead(produce: Callable[[Callable[[_T], None]], object], depth: int = 4) -> Iterator[_T]:
    """What ``produce`` hands to the function it is given, made on a thread of its own at
    most ``depth`` items ahead of the caller, who iterates: reading, checking and
    decompressing a layer overlap with what is done with its bytes. The producer's error
    is raised where the caller takes the item it could not give. When the caller stops
    (done, failed or interrupted), the producer is told at its next item and waited for."""
    q: queue.Queue[object] = queue.Queue(depth)
    stop = Stop()

    def give(item: object) -> None:
        put(q, item, stop, on_failure=False)

    def producer() -> None:
        try:
            produce(give)
            end: object = _END
        except Halted:
            return
        except BaseException as e:
            end = e
        with contextlib.suppress(Halted):
            give(end)

    thread = start_thread(producer, "ocistore-producer")
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.interrupted.set()
        thread.join()


def _start(
    work: Callable[[], None],
    count: int,
    running: list[int],
    lock: threading.Lock,
    done: Callable[[], None],
) -> None:
    """Start ``count`` threads running ``work``, each counted in ``running`` before it
    starts, with SIGINT blocked (:func:`_sigint_blocked`): an interrupt arrives before or
    after, never between a count and its thread."""
    try:
        with _sigint_blocked():
            for i in range(count):
                with lock:
                    running[0] += 1
                try:
                    threading.Thread(target=work, name=f"ocistore-worker-{i}", daemon=True).start()
                except Exception:  # it could not start, so it will not count itself out
                    done()
                    raise
    finally:
        done()  # the one for the starting


def start_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Start a daemon thread that never takes SIGINT (see :func:`_sigint_blocked`)."""
    with _sigint_blocked():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    return thread


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """On the main thread, SIGINT blocked for the block. Blocking it first runs any
    handler still pending (Python's may raise KeyboardInterrupt right there), so no
    interrupt can land inside: not inside ``Thread.start``, where it is unknowable
    whether the thread started. Threads started meanwhile inherit the mask, so Ctrl-C
    always goes to the main thread, which is where Python handles it and where it
    interrupts a blocking read or write; unblocking runs it, after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class InterruptiblePipe:
    """A pipe (standard input or output) read or written on the main thread, where
    Ctrl-C always stops the wait.

    CPython 3.11 can lose a SIGINT that arrives while another thread holds the
    interpreter: its C handler runs, but the main thread may then block in ``read`` or
    ``write`` without ever running the Python handler (until a second signal). Here each
    wait is a ``select`` on the pipe and on the signal wakeup pipe, which the C handler
    writes to whatever else happens; when that fires, the pending handlers run (and
    raise KeyboardInterrupt); the bytes then move with ``os.readv``/``os.write`` on the
    descriptor, so ``stream`` must not have read ahead. Elsewhere than on the main
    thread, on a file that is not a pipe, a socket or a terminal, or on a stream without
    a descriptor (one a program put in ``sys.stdin``), it is ``stream`` itself.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        import stat

        self._stream = stream
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._previous: int | None = None
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation too
            return
        waits = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
        if waits and threading.current_thread() is threading.main_thread():
            import signal

            self._fd = fd
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._previous = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def fileno(self) -> int:
        return self._stream.fileno()

    def _wait(self, reading: bool) -> None:
        import select
        import signal

        reads = [self._fd, self._wake_r] if reading else [self._wake_r]
        writes = [] if reading else [self._fd]
        while True:
            ready, writable, _ = select.select(reads, writes, [])
            if self._wake_r in ready:
                while True:
                    try:
                        if not os.read(self._wake_r, 64):
                            break
                    except BlockingIOError:
                        break
                signal.pthread_sigmask(signal.SIG_BLOCK, ())  # runs the pending handlers
            if self._fd in ready or self._fd in writable:
                return

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._fd < 0:
            return self._stream.readinto(buf)  # type: ignore[attr-defined, no-any-return]
        self._wait(reading=True)
        return os.readv(self._fd, [buf])

    def read(self, n: int = -1) -> bytes:
        if self._fd < 0:
            return self._stream.read(n)
        if n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        buf = bytearray(n)
        return bytes(memoryview(buf)[: self.readinto(buf)])

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._fd < 0:
            self._stream.write(data)
            return len(data)
        view = memoryview(data).cast("B")
        while view:
            self._wait(reading=False)
            # No more than a pipe's worth at a time: a longer write could block again.
            n = os.write(self._fd, view[: 1 << 16])
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        if self._fd < 0:
            self._stream.flush()

    def close(self) -> None:
        """Give the signal wakeup back (the stream stays open)."""
        self.flush()
        if self._wake_r >= 0:
            import signal

            signal.set_wakeup_fd(-1 if self._previous is None else self._previous)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def __enter__(self) -> InterruptiblePipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
