"""Question: with the machine taken out, does the scheduling policy itself keep single texts fast
while bulk requests run? The real lane (scheduler/continuous.py + queues.py, budget included)
runs on a fake event loop and a fake device whose batch time is a line,
time(n) = overhead + n / rate (default: 5 ms + n / 6000 tokens/s, about MiniLM on a quiet
2-core box), driven in fake time by closed-loop clients: BULKxC bulk clients + N single-text
clients, token counts from the mixed corpus (truncated to 256, as --auto-truncate does), each
client waiting --client-ms between a reply and its next request (its HTTP and tokenization).
No noise: one run per checkout (this one and --before, each in its own process) says what the
order and the budget do, and nothing about the machine. It does not model the CPU the server's
own threads take from the compute thread.

    python -m bench.sched_policy --before /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from types import SimpleNamespace

import numpy as np


class FakeFuture:
    def __init__(self, loop):
        self.loop, self.state, self.value, self.callbacks = loop, "pending", None, []

    def done(self):
        return self.state != "pending"

    def cancelled(self):
        return self.state == "cancelled"

    def _finish(self, state, value=None):
        self.state, self.value = state, value
        for cb in self.callbacks:
            self.loop.call_soon(cb, self)

    def set_result(self, value):
        self._finish("ok", value)

    def set_exception(self, exc):
        self._finish("error", exc)

    def cancel(self):
        if self.done():
            return False
        self._finish("cancelled")
        return True

    def result(self):
        if self.state == "error":
            raise self.value
        return self.value

    def add_done_callback(self, cb):
        if self.done():
            self.loop.call_soon(cb, self)
        else:
            self.callbacks.append(cb)


class FakeLoop:
    """call_soon runs at the current fake time; a launched batch ends after the device's line."""

    def __init__(self, overhead: float, rate: float):
        self.now, self.ready, self.events = 0.0, deque(), []
        self.overhead, self.rate, self.seq = overhead, rate, itertools.count()

    def create_future(self):
        return FakeFuture(self)

    def call_soon(self, cb, *args):
        self.ready.append((cb, args))

    def call_later(self, delay, cb, *args):
        self.at(self.now + delay, cb, *args)
        return SimpleNamespace(cancel=lambda: None)

    def run_in_executor(self, executor, fn, engine, work):
        future = FakeFuture(self)
        tokens = sum(len(s) for s in work) if isinstance(work, list) else int(work.num_tokens)
        start, seconds = self.now, self.overhead + tokens / self.rate

        def done():
            self.now, engine.seconds = start, seconds  # _compute reads the clock around embed
            future.set_result(fn(engine, work))
            self.now = start + seconds
        self.at(start + seconds, done)
        return future

    def at(self, when, cb, *args):
        heapq.heappush(self.events, (when, next(self.seq), cb, args))

    def run_until(self, end: float) -> None:
        while self.events and self.events[0][0] <= end:
            when, _, cb, args = heapq.heappop(self.events)
            self.now = when
            cb(*args)
            while self.ready:
                cb, args = self.ready.popleft()
                cb(*args)


class FakeEngine:
    def __init__(self, loop):
        self.info = SimpleNamespace(name="sim", dimensions=2, device="sim")
        self.loop, self.seconds = loop, 0.0

    def pack(self, sequences):
        return list(sequences)

    def embed(self, work):
        self.loop.now += self.seconds  # the batch's time on the fake device
        return np.zeros((len(work), 2), np.float32)


def worker(spec: dict) -> dict:
    """In a process whose `tinyembed` is the checkout under test."""
    from tinyembed.scheduler import continuous
    from tinyembed.scheduler.queues import Request

    loop = FakeLoop(spec["overhead"], spec["rate"])
    continuous.time = SimpleNamespace(monotonic=lambda: loop.now)
    scheduler = continuous.Scheduler(max_batch_tokens=spec["max_batch_tokens"],
                                     max_batch_latency=spec["max_batch_latency"])
    scheduler._loop = loop
    engine = FakeEngine(loop)
    lane = scheduler._lane(engine)
    lengths, cursor = spec["lengths"], itertools.count()
    start, end = spec["warmup"], spec["warmup"] + spec["duration"]
    singles, waited, computed = [], [], {"bulk": 0, "single": 0}
    launch = lane.launch

    def counting_launch(batch):  # tokens launched in the window, by kind of request
        if start <= loop.now <= end:
            for p in batch.picks:
                computed["bulk" if len(p.request.sequences) > 1 else "single"] += p.tokens
        launch(batch)
    lane.launch = counting_launch

    def send(texts: int) -> None:
        seqs = [np.ones(lengths[next(cursor) % len(lengths)], np.int32) for _ in range(texts)]
        req = Request(seqs, 1, None, None, loop.now)
        lane.admit(req)

        def replied(_):
            if start <= req.admitted and loop.now <= end:
                if texts == 1:
                    singles.append(loop.now - req.admitted)
                    waited.append(req.batches_waited)
            loop.at(loop.now + spec["client_s"], send, texts)
        req.future.add_done_callback(replied)

    bulk_texts, bulk_clients = spec["bulk"]
    for c in range(bulk_clients):
        loop.at(0.001 * c, send, bulk_texts)
    for c in range(spec["singles"]):
        loop.at(0.01 + 0.003 * c, send, 1)
    loop.run_until(end)
    singles.sort()
    pick = lambda p: 1000 * singles[min(len(singles) - 1, int(p / 100 * len(singles)))] if singles else 0.0  # noqa: E731
    return {"single_p50_ms": pick(50), "single_p99_ms": pick(99), "single_max_ms": pick(100),
            "singles": len(singles), "single_max_batches_waited": max(waited, default=0),
            "bulk_tokens_per_s": computed["bulk"] / spec["duration"],
            "total_tokens_per_s": (computed["bulk"] + computed["single"]) / spec["duration"],
            "budget_tokens": lane.budget.tokens,
            "batches": lane.queues.batches_launched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="another checkout, run the same way")
    parser.add_argument("--bulk", default="256x2")
    parser.add_argument("--singles", type=int, default=16)
    parser.add_argument("--overhead-ms", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=6000.0, help="peak tokens/s of the fake device")
    parser.add_argument("--client-ms", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=60.0, help="fake seconds measured")
    parser.add_argument("--max-batch-latency", type=float, default=0.075)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.worker) as f:
            print(json.dumps(worker(json.load(f))))
        return
    from bench.corpus import mixed_corpus
    from tinyembed.engine import load_engine

    tokenizer = load_engine("all-MiniLM-L6-v2").tokenizer
    lengths = [len(s) for s in tokenizer.encode(mixed_corpus(1200), True)]
    texts, clients = (int(x) for x in args.bulk.split("x"))
    spec = {"lengths": lengths, "bulk": [texts, clients], "singles": args.singles, "overhead": args.overhead_ms / 1000,
            "rate": args.rate, "client_s": args.client_ms / 1000, "warmup": 3.0, "duration": args.duration,
            "max_batch_tokens": 16384, "max_batch_latency": args.max_batch_latency}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = {}
    for name, path in (("before", args.before), ("after", here)):
        if path is None:
            continue
        env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", f.name], env=env,
                             cwd=os.path.abspath(path), capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    os.unlink(f.name)
    print(f"fake device: {args.overhead_ms} ms + n / {args.rate:.0f} tokens/s; {args.bulk} bulk + 1x{args.singles}, "
          f"{args.duration:.0f} fake s")
    keys = list(next(iter(rows.values())))
    print(f"{'':<28}" + "".join(f"{name:>12}" for name in rows) + ("   after/before" if len(rows) == 2 else ""))
    for key in keys:
        values = [rows[name][key] for name in rows]
        ratio = f"   {values[1] / values[0]:.2f}" if len(values) == 2 and values[0] else ""
        print(f"{key:<28}" + "".join(f"{v:>12.1f}" for v in values) + ratio)


if __name__ == "__main__":
    main()
