"""Threads kept ready for new flows: handing a job to a waiting thread takes a few
microseconds, starting a thread about a hundred, which a new connection would wait for.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]
SPAWN_RETRY_SECONDS = 0.5


class Workers:
    """An unbounded pool that keeps `spare` threads idle. Jobs may run for as long as a
    flow lasts; each takes its thread for that time. New threads are started by a
    spawner thread of the pool's own, so no job's thread pays for starting another."""

    def __init__(self, spare: int = 8, name: str = "netwarden-worker") -> None:
        self.spare = spare
        self.name = name
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._short = threading.Event()
        self._idle = 0
        self._threads = 0
        self._closed = False
        self._top_up()
        threading.Thread(target=self._spawner, daemon=True, name=f"{name}-spawner").start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)
        with self._lock:
            short = self._idle - self._jobs.qsize() < self.spare
        if short:
            self._short.set()

    def close(self) -> None:
        """Let idle threads end; busy ones end after their job."""
        with self._lock:
            self._closed = True
            threads = self._threads
        self._short.set()
        for _ in range(threads):
            self._jobs.put(None)

    def _spawner(self) -> None:
        while True:
            self._short.wait()
            self._short.clear()
            if self._closed:
                return
            try:
                self._top_up()
            except RuntimeError as exc:  # no more threads for now: jobs wait in the queue
                log.warning("cannot start a worker thread: %s", exc)
                time.sleep(SPAWN_RETRY_SECONDS)
                self._short.set()

    def _top_up(self) -> None:
        while True:
            with self._lock:
                if self._closed or self._idle - self._jobs.qsize() >= self.spare:
                    return
                self._threads += 1
                self._idle += 1
            try:
                threading.Thread(target=self._work, daemon=True, name=self.name).start()
            except RuntimeError:
                with self._lock:
                    self._threads -= 1
                    self._idle -= 1
                raise

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            try:
                job()
            except Exception:  # a failing job must not take the thread's successors down
                log.exception("worker job failed")
            with self._lock:
                if self._closed:
                    self._threads -= 1
                    return
                self._idle += 1
