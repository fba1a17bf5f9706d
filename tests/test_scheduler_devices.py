"""Several devices behind one lane, with CPU stand-ins: Retry-After counts the whole pool's
drain rate, and `--batching per-request` (DirectRunner) computes on every device."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest

from conftest import TINY_MODEL
from tinyembed.engine import load_engine
from tinyembed.scheduler import DirectRunner
from tinyembed.scheduler.devices import DevicePool

from scheduler_sim import Sim

BOUND = 30.0  # seconds any wait in this file may take before the test fails


def retry_after(monkeypatch, devices: int) -> float:
    """A lane whose devices each compute 1000 tokens/s (fake time), a full queue, one more request."""
    sim = Sim(monkeypatch, workers=devices, seconds_per_token=0.001, max_batch_tokens=100, max_queue_tokens=1000)
    try:
        for _ in range(6):  # measured batches: the drain rate is known
            sim.arrive([50, 50], 1, None)
        sim.drain()
        for _ in range(10):  # 1000 tokens admitted and unfinished: the bound
            sim.arrive([50, 50], 1, None)
        sim.arrive([250, 250], 1, None)  # 500 over the bound
        assert len(sim.refused) == 1
        return sim.refused[0].retry_after
    finally:
        sim.close()


def test_retry_after_divides_the_excess_by_the_pool_drain_rate(monkeypatch):
    one, two, four = (retry_after(monkeypatch, n) for n in (1, 2, 4))
    assert one == pytest.approx(500 / 1000)
    assert two == pytest.approx(500 / 2000) and four == pytest.approx(500 / 4000)


class StandIn:
    """An engine on CPU stand-in device `index`: records which device ran each batch, and can
    hold its device busy until the test lets it go."""

    def __init__(self, engine, index: int, runs: list, gate: threading.Event):
        self.engine, self.index, self.runs, self.gate = engine, index, runs, gate
        self.spec, self.tokenizer = engine.spec, engine.tokenizer
        self.info = dataclasses.replace(engine.info, device=f"cpu:{index}")

    def pack(self, sequences):
        return self.engine.pack(sequences)

    def embed(self, batch):
        self.runs.append(self.index)
        assert self.gate.wait(BOUND)
        return self.engine.embed(batch)

    def with_dimensions(self, vectors, dimensions):
        return self.engine.with_dimensions(vectors, dimensions)


def test_per_request_batching_uses_every_device():
    tiny = load_engine(TINY_MODEL, name="tiny")
    runs: list[int] = []
    gates = [threading.Event(), threading.Event()]
    pool = DevicePool([StandIn(tiny, i, runs, gates[i]) for i in range(2)])
    rng = np.random.default_rng(0)
    first, second = ([rng.integers(5, 600, size=int(rng.integers(3, 20))).astype(np.int32) for _ in range(3)]
                     for _ in range(2))

    async def until(condition, what: str) -> None:
        deadline = time.monotonic() + BOUND
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.005)

    async def scenario():
        runner = DirectRunner(max_batch_tokens=4096)
        runner.start()
        a = asyncio.create_task(runner.embed(pool, first))
        await until(lambda: len(runs) == 1, "the first request never reached a device")
        b = asyncio.create_task(runner.embed(pool, second))  # that device is held busy
        await until(lambda: len(runs) == 2, "the second request waited for the busy device: one device used")
        for gate in gates:
            gate.set()
        out = await asyncio.gather(a, b)
        await runner.stop()
        return out

    try:
        got_a, got_b = asyncio.run(asyncio.wait_for(scenario(), BOUND + 5))
    finally:
        for gate in gates:
            gate.set()
    assert sorted(runs) == [0, 1]  # both devices computed, at the same time
    np.testing.assert_allclose(got_a, tiny.embed_sequences(first), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_b, tiny.embed_sequences(second), atol=1e-5, rtol=0)
