"""Server-side batching: the dispatcher behind the invoke seam (SMSUPER_BATCH_SIZE > 1).

Each request is decoded in its own request thread (input_fn), then handed to
the worker's Batcher and waits. The Batcher's one dispatcher thread sends what
is queued to the model as one batch when SMSUPER_BATCH_SIZE requests are
there, or when the first of them has waited SMSUPER_BATCH_DELAY_MS, whichever
comes first; each request then takes its own part of the result back to its
thread, which encodes and answers it (output_fn, its own Accept). So one bad
request (a body that does not decode, an Accept that cannot be met, an
output_fn that fails on it) fails alone; only an error of the one model call
fails every request of that batch.

How a batch meets the model is handlers.Handlers.predict_together: a stacked
2-D array for predict_fn, or the list of inputs for predict_batch_fn.

A stopping worker does not wait out the delay: from the master's SIGTERM on
(SIGWINCH to the workers, batching_worker.py) a partial batch goes at once, so
it is answered while nginx drains, however long the delay is.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, List, Optional

from ...metrics.worker import serving as serving_metrics

# How often a partial batch looks at the stop flag (a signal handler only sets a flag).
STOP_POLL = 0.05

_stopping = [False]


def stop_waiting() -> None:
    """From the worker's signal handler: send partial batches at once from now on."""
    _stopping[0] = True


class _Pending:
    __slots__ = ("data", "arrived", "waited", "result", "error", "done")

    def __init__(self, data: Any):
        self.data = data
        self.arrived = time.monotonic()
        self.waited = 0.0
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()


class Batcher:
    """Queues one worker's requests and predicts them together, `size` at most, `delay` seconds late at most.

    `predict_together(inputs) -> outputs` gets the inputs of one batch and returns one output per
    input, in order; an output that is an exception fails its request alone."""

    def __init__(self, size: int, delay: float, predict_together: Callable[[List[Any]], List[Any]]):
        self.size = size
        self.delay = delay
        self.predict_together = predict_together
        self.queue: List[_Pending] = []
        self.ready = threading.Condition(threading.Lock())
        self._dispatcher_pid = 0  # the dispatcher is started in the worker (the master may load the model)

    def predict(self, data: Any) -> Any:
        """From a request thread: this input's prediction, once its batch has been predicted."""
        pending = _Pending(data)
        with self.ready:
            if self._dispatcher_pid != os.getpid():
                self._dispatcher_pid = os.getpid()
                threading.Thread(target=self._dispatch_forever, name="smsuper-batcher", daemon=True).start()
            self.queue.append(pending)
            if len(self.queue) >= self.size or len(self.queue) == 1:
                self.ready.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    # ---- the dispatcher thread ---------------------------------------------------------------
    def _next_batch(self) -> List[_Pending]:
        with self.ready:
            while not self.queue:
                self.ready.wait()
            deadline = self.queue[0].arrived + self.delay
            while len(self.queue) < self.size and not _stopping[0]:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.ready.wait(min(left, STOP_POLL))
            batch = self.queue[:self.size]
            del self.queue[:self.size]
        return batch

    def _dispatch_forever(self) -> None:
        while True:
            batch = self._next_batch()
            sent = time.monotonic()
            for pending in batch:
                pending.waited = sent - pending.arrived
            try:
                outputs = self.predict_together([pending.data for pending in batch])
                for pending, output in zip(batch, outputs):
                    if isinstance(output, BaseException):
                        pending.error = output
                    else:
                        pending.result = output
            except BaseException as error:  # the one call failed: so did every request of it
                for pending in batch:
                    pending.error = error
            finally:
                for pending in batch:
                    pending.done.set()
            try:
                serving_metrics.batch_sent(pending.waited for pending in batch)
            except Exception:
                pass  # metrics never cost an answer
