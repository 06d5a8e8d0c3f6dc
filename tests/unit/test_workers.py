"""The proxy's thread pool: every job runs at once however many wait, spare threads
stay ready, a failing job does not take its thread's successors down."""

from __future__ import annotations

import threading

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
