"""The benchmark's Celery app: Redis broker and result backend, a no-op task.

The queue and the Redis database come from the environment, so a benchmark run never meets
another run's (or another program's) messages.
"""

import os

from celery import Celery

redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/11")
app = Celery("bench", broker=redis, backend=redis)
app.conf.task_default_queue = os.environ.get("BENCH_QUEUE", "corral-bench")
app.conf.worker_hijack_root_logger = False
app.conf.result_expires = 600


@app.task(name="noop")
def noop(x: int = 0) -> int:
    """Return ``x``."""
    return x
