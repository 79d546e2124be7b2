"""The worker for server-side batching: gunicorn's gthread, whose request threads
(SMSUPER_BATCH_SIZE of them at least) let concurrent requests reach one worker's
Batcher (batching.py) at once.

Only the stop differs from gthread: the master's SIGTERM sends its workers a
SIGWINCH (master/gunicorn_app.py) while it keeps serving for nginx to drain; here
it tells the Batcher to stop waiting for batches to fill, so the requests of a
partial batch are answered within the drain instead of after the batch delay.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from . import batching


class BatchingWorker(ThreadWorker):
    def handle_winch(self, sig: int, frame: Any) -> None:
        batching.stop_waiting()

    def handle_exit(self, sig: int, frame: Any) -> None:
        batching.stop_waiting()
        super().handle_exit(sig, frame)
