"""The one thread pool: order, the error reported, no new job after a failure, halting.
Orders are forced with events, never with sleeps."""

from __future__ import annotations

import threading

import pytest

from ocistore.parallel import Halted, Stop, run_all


def test_every_job_runs_once() -> None:
    done: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> object:
        def run(stop: Stop) -> None:
            with lock:
                done.append(i)

        return run

    run_all([job(i) for i in range(20)], workers=3)
    assert sorted(done) == list(range(20))


def test_one_worker_runs_in_order_on_the_callers_thread() -> None:
    threads: list[threading.Thread] = []
    order: list[int] = []

    def job(i: int) -> object:
        def run(stop: Stop) -> None:
            threads.append(threading.current_thread())
            order.append(i)

        return run

    run_all([job(i) for i in range(5)], workers=1)
    assert order == [0, 1, 2, 3, 4]
    assert set(threads) == {threading.current_thread()}


def test_the_first_failure_in_order_is_reported() -> None:
    """The second job fails first (the first waits for it); the first's error is told."""
    second_failed = threading.Event()

    def first(stop: Stop) -> None:
        assert second_failed.wait(30)
        raise ValueError("first")

    def second(stop: Stop) -> None:
        second_failed.set()
        raise KeyError("second")

    with pytest.raises(ValueError, match="first"):
        run_all([first, second], workers=2)


def test_no_job_starts_after_a_failure_and_running_ones_may_halt() -> None:
    started: list[str] = []
    failed = threading.Event()

    def failing(stop: Stop) -> None:
        started.append("failing")
        failed.set()
        raise RuntimeError("broken")

    def careful(stop: Stop) -> None:
        started.append("careful")
        assert failed.wait(30)
        assert stop.failed.wait(30)  # the pool tells the others
        stop.check()  # raises Halted: this job stops, and is not what is reported

    def later(stop: Stop) -> None:
        started.append("later")

    with pytest.raises(RuntimeError, match="broken"):
        run_all([careful, failing, later], workers=2)
    assert sorted(started) == ["careful", "failing"]


def test_a_job_may_run_on_past_a_failure() -> None:
    """``check(on_failure=False)`` halts only on an interrupt: the job runs to its end."""
    finished: list[bool] = []
    failed = threading.Event()

    def failing(stop: Stop) -> None:
        failed.set()
        raise RuntimeError("broken")

    def patient(stop: Stop) -> None:
        assert failed.wait(30)
        assert stop.failed.wait(30)
        stop.check(on_failure=False)
        finished.append(True)

    with pytest.raises(RuntimeError):
        run_all([patient, failing], workers=2)
    assert finished == [True]


def test_a_halt_from_another_pool_is_an_error_here() -> None:
    outer = Stop()
    outer.interrupted.set()

    def inner(stop: Stop) -> None:
        outer.check()

    def other(stop: Stop) -> None:
        pass

    with pytest.raises(Halted) as err:
        run_all([inner, other], workers=2)
    assert err.value.stop is outer


def test_an_interruptible_pipe_reads_and_writes_what_a_pipe_does() -> None:
    import os

    from ocistore.parallel import InterruptiblePipe

    r, w = os.pipe()
    data = os.urandom(200_000)
    done = threading.Event()

    def feed() -> None:
        with InterruptiblePipe(
            os.fdopen(w, "wb", buffering=0, closefd=False)
        ) as out:  # not the main thread: plain writes
            assert out.write(data) == len(data)
        os.close(w)
        done.set()

    threading.Thread(target=feed).start()
    with InterruptiblePipe(
        os.fdopen(r, "rb", buffering=0, closefd=False)
    ) as pipe:  # the main thread: waits through select
        got = pipe.read()
    os.close(r)
    assert done.wait(30)
    assert got == data
