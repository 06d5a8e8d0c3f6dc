"""The proxy's thread pool: every job runs at once however many wait, spare threads
stay ready, a failing job does not take its thread's successors down."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from netwarden.proxy import workers as workers_module
from netwarden.proxy.workers import Workers


def test_jobs_that_last_run_side_by_side_beyond_the_spare_threads() -> None:
    workers = Workers(spare=2)
    release = threading.Event()
    started = threading.Semaphore(0)

    def flow() -> None:
        started.release()
        release.wait(10)

    try:
        for _ in range(6):  # three times the spare threads, all busy at once
            workers.submit(flow)
        for _ in range(6):
            assert started.acquire(timeout=5), "a job never started"
    finally:
        release.set()
        workers.close()


def test_a_failing_job_leaves_the_pool_working() -> None:
    workers = Workers(spare=1)
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("a broken flow")

    try:
        for _ in range(3):
            workers.submit(fail)
        workers.submit(done.set)
        assert done.wait(5)
    finally:
        workers.close()


def test_a_pool_that_cannot_start_threads_for_a_while_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [0]

    class Flaky(threading.Thread):
        def start(self) -> None:
            if failures[0] > 0:
                failures[0] -= 1
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(workers_module, "threading", SimpleNamespace(
        Thread=Flaky, Lock=threading.Lock, Event=threading.Event))  # fmt: skip
    monkeypatch.setattr(workers_module, "SPAWN_RETRY_SECONDS", 0.01)
    workers = Workers(spare=1)
    release, second = threading.Event(), threading.Event()

    def hold() -> None:
        release.wait(10)

    try:
        failures[0] = 2
        workers.submit(hold)  # takes the only thread
        workers.submit(second.set)  # needs a new one, which fails twice to start
        assert second.wait(5)
        assert failures[0] == 0
    finally:
        release.set()
        workers.close()
