"""Where the micro-batcher runs a batch (mnistops/serving/batching.py): on the event loop when the
model's CPU time per batch is small, on the deployment's thread when it is large. The decision reads
the CPU clock, not the wall clock: on a loaded machine a 1 ms model's wall time jumps whenever the
scheduler preempts the worker, which used to move fast models onto the thread (hand-offs cost CPU)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from mnistops.serving.batching import INLINE_MAX_MS, MicroBatcher


def where_batches_run(predict_cost) -> tuple:
    """(inline?, the threads the batches ran on) after 20 sequential one-image requests."""
    threads = set()

    def predict(x):
        threads.add(threading.get_ident())
        predict_cost()
        return np.full((len(x), 10), 0.1, np.float32)

    async def main():
        b = MicroBatcher("blue", predict, max_batch=8, max_wait_ms=1, max_queue=64)
        b.start()
        for _ in range(20):
            await b.submit(np.zeros((1, 28, 28), np.float32))
        inline, loop_thread = b.inline, threading.get_ident()
        await b.close()
        return inline, threads - {loop_thread}

    return asyncio.run(main())


def test_a_model_whose_wall_time_is_long_but_cpu_short_runs_on_the_loop():
    # waiting without CPU stands in for a worker preempted by other processes mid-batch
    inline, off_loop = where_batches_run(lambda: time.sleep(2 * INLINE_MAX_MS / 1000))
    assert inline
    assert len(off_loop) == 1  # only the first batch, before the model was measured


def test_a_model_that_burns_cpu_keeps_its_thread():
    def burn():
        end = time.thread_time() + 1.5 * INLINE_MAX_MS / 1000
        while time.thread_time() < end:
            pass

    inline, off_loop = where_batches_run(burn)
    assert not inline and len(off_loop) == 1
