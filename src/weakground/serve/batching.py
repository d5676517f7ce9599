"""The server's micro-batch queue: concurrent requests' images go through the model together.

Each request's job thread decodes its upload, then hands (image, phrases, deadline) to
:meth:`MicroBatcher.maps` and waits. One worker thread takes what is waiting — up to ``max_batch`` requests,
waiting at most ``wait_s`` after the first for more to arrive — and runs them through
``Predictor.heatmaps_many`` under the model lock, in one call (bridge: every phrase through the text encoder at
once, equal working sizes through the image encoder as one batch). Grounding the maps (boxes, point) and
drawing the pictures then happen back on each request's own thread, outside the lock.

Deadlines are kept as before the queue existed: a request whose deadline passes (or whose client already has
its 504) while it waits in the queue is dropped and never reaches the model; one already in a running batch
cannot be stopped mid-forward, so its thread waits for that batch to end (its admission slot stays taken until
the work has stopped) and then gives up.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any


class Abandoned(Exception):
    """The request timed out (or its client has its 504) before its work was done."""


@dataclass
class _Item:
    image: Any  # what ``run`` takes per request (the server's decoded uint8 working copy)
    phrases: list[str]
    deadline: float  # time.monotonic()
    abandoned: threading.Event
    future: Future = field(default_factory=Future)

    def alive(self) -> bool:
        return not self.abandoned.is_set() and time.monotonic() <= self.deadline


BatchRun = Callable[[Sequence[Any], Sequence[Sequence[str]]], list[Any]]


class MicroBatcher:
    """One worker thread that runs waiting requests through ``run`` (``Predictor.heatmaps_many``) together.

    Args:
        run: images and their phrase lists -> one map tensor per image.
        lock: held around each call of ``run`` (the model lock, shared with the caption route).
        max_batch: most requests in one call.
        wait_s: how long the worker waits, after the first request of a batch, for more to arrive.
    """

    def __init__(self, run: BatchRun, lock: threading.Lock, max_batch: int, wait_s: float) -> None:
        self.run, self.lock, self.max_batch, self.wait_s = run, lock, max_batch, wait_s
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self.batches = 0  # calls of run so far, and the requests they carried (for tests and health)
        self.batched_requests = 0
        self._worker = threading.Thread(target=self._loop, name="weakground-batcher", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the worker after the batch it is running; requests still queued are never answered by it."""
        self._queue.put(None)

    def maps(self, image: Any, phrases: list[str], deadline: float, abandoned: threading.Event) -> Any:
        """The maps of ``image`` for ``phrases``, from the next batch; :class:`Abandoned` past ``deadline``."""
        item = _Item(image, phrases, deadline, abandoned)
        self._queue.put(item)
        try:
            return item.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if not item.future.cancel():  # already in a running batch: wait for the model to be done with it
                item.future.exception()
            raise Abandoned from None

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            for item in batch:
                if not item.alive():
                    item.future.cancel()  # queued past its deadline: dropped before the model sees it
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            if stop:
                return

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and what else arrives within ``wait_s`` (at most ``max_batch`` in all); True when the
        close marker was met."""
        batch, until = [first], time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Item]) -> None:
        try:
            with self.lock:
                self.batches += 1
                self.batched_requests += len(batch)
                results = self.run([item.image for item in batch], [item.phrases for item in batch])
        except Exception as exc:  # noqa: BLE001  (each request gets its own answer below)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # One request's bad input (e.g. a phrase of punctuation only) must not fail the others: each is run
            # again alone, so each gets its own result or its own error.
            for item in batch:
                self._run_alone(item)
            return
        for item, result in zip(batch, results):
            item.future.set_result(result)

    def _run_alone(self, item: _Item) -> None:
        try:
            with self.lock:
                result = self.run([item.image], [item.phrases])[0]
        except Exception as exc:  # noqa: BLE001
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)
