"""Several GPUs behind one scheduler (scheduler/devices.py), on the CPU: the CUDA ops are replaced
by a stand-in (the numpy ops, named cuda:N, that record which device ran which batch on which
thread, and can hold a device busy). The engines, the device pool and the scheduler are real."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from conftest import TINY_MODEL
from tinyembed.common.errors import TinyEmbedError
from tinyembed.engine import expand_devices
from tinyembed.engine.ops import cuda_ops as ops_cuda
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.scheduler import Scheduler
from tinyembed.scheduler.devices import DevicePool, load_on_devices

BOUND = 30.0  # seconds any wait in this file may take before the test fails


class Recorder:
    def __init__(self, devices: int):
        self.lock = threading.Lock()
        self.runs: list[tuple[int, str, int]] = []  # (device, thread, tokens)
        self.busy = [0] * devices
        self.most_busy = [0] * devices
        self.open = [threading.Event() for _ in range(devices)]
        for gate in self.open:
            gate.set()


@pytest.fixture
def two_gpus(monkeypatch):
    """`make_ops("cuda:N")` -> the recording stand-in; CuPy "sees" two devices."""
    recorder = Recorder(2)

    class StandInCudaOps(NumpyOps):
        def __init__(self, index: int = 0, dtype: str = "float16", kernels=None):
            super().__init__(threads=1)
            self.index, self.name = index, f"cuda:{index}"

        def upload_batch(self, batch):  # the first op of every forward pass
            with recorder.lock:
                recorder.runs.append((self.index, threading.current_thread().name, batch.num_tokens))
                recorder.busy[self.index] += 1
                recorder.most_busy[self.index] = max(recorder.most_busy[self.index], recorder.busy[self.index])
            assert recorder.open[self.index].wait(BOUND)
            return super().upload_batch(batch)

        def to_host(self, array):  # the last op of every forward pass
            with recorder.lock:
                recorder.busy[self.index] -= 1
            return super().to_host(array)

    monkeypatch.setattr(ops_cuda, "CudaOps", StandInCudaOps)
    monkeypatch.setattr(ops_cuda, "device_count", lambda: 2)
    return recorder


def seqs(rng, n: int) -> list[np.ndarray]:
    return [rng.integers(5, 600, size=int(rng.integers(3, 40))).astype(np.int32) for _ in range(n)]


def test_device_lists_expand_and_bad_ones_are_refused(two_gpus):
    assert expand_devices("cuda:all") == ["cuda:0", "cuda:1"]
    assert expand_devices("cuda:1, cuda:0") == ["cuda:1", "cuda:0"]
    assert expand_devices("cpu") == ["cpu"] and expand_devices("cuda:1") == ["cuda:1"]
    with pytest.raises(TinyEmbedError, match="GPUs only"):
        expand_devices("cpu,cuda:0")
    with pytest.raises(TinyEmbedError, match="named twice"):
        expand_devices("cuda:0,cuda")


def test_cuda_all_without_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(ops_cuda, "device_count", lambda: 0)
    with pytest.raises(TinyEmbedError, match="cuda:all"):
        expand_devices("cuda:all")


def test_a_batch_goes_to_the_device_that_is_free(two_gpus, tiny):
    pool = load_on_devices(TINY_MODEL, "tiny", "cuda:all")
    assert isinstance(pool, DevicePool) and pool.devices == ["cuda:0", "cuda:1"] and pool.workers == 2
    rng = np.random.default_rng(0)
    first, second = seqs(rng, 3), seqs(rng, 3)

    async def until(condition) -> None:
        deadline = time.monotonic() + BOUND
        while not condition():
            assert time.monotonic() < deadline, "the scheduler never got there"
            await asyncio.sleep(0.005)

    async def scenario():
        scheduler = Scheduler(max_batch_tokens=4096)
        scheduler.start()
        for gate in two_gpus.open:
            gate.clear()  # every device holds its next batch until the test lets it go
        a = asyncio.create_task(scheduler.embed(pool, first))
        await until(lambda: len(two_gpus.runs) == 1)
        b = asyncio.create_task(scheduler.embed(pool, second))  # the first device is busy
        await until(lambda: len(two_gpus.runs) == 2)
        for gate in two_gpus.open:
            gate.set()
        out = await asyncio.gather(a, b)
        await scheduler.stop()
        return out

    got_a, got_b = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert {two_gpus.runs[0][0], two_gpus.runs[1][0]} == {0, 1}  # both devices at work at once
    np.testing.assert_allclose(got_a, tiny.embed_sequences(first), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_b, tiny.embed_sequences(second), atol=1e-5, rtol=0)


def test_many_requests_spread_over_both_devices_one_batch_per_device_at_a_time(two_gpus, tiny):
    pool = load_on_devices(TINY_MODEL, "tiny", "cuda:0,cuda:1")
    rng = np.random.default_rng(1)
    requests = [seqs(rng, int(rng.integers(1, 12))) for _ in range(60)]

    async def scenario():
        scheduler = Scheduler(max_batch_tokens=256, max_queue_tokens=1_000_000)
        scheduler.start()
        out = await asyncio.gather(*(scheduler.embed(pool, r) for r in requests))
        await scheduler.stop()
        return out

    results = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    for request, vectors in zip(requests, results):
        np.testing.assert_allclose(vectors, tiny.embed_sequences(request), atol=1e-5, rtol=0)
    devices = {device for device, _, _ in two_gpus.runs}
    assert devices == {0, 1}, two_gpus.runs
    assert two_gpus.most_busy == [1, 1]  # a device never runs two batches at once
    thread_device = {}
    for device, thread, _ in two_gpus.runs:  # each compute thread stays on its device
        assert thread_device.setdefault(thread, device) == device
    assert sum(tokens for _, _, tokens in two_gpus.runs) == sum(len(s) for r in requests for s in r)


def test_the_server_loads_one_engine_per_device(two_gpus):
    from tinyembed.server.app import load_models
    from tinyembed.server.config import ModelSource, ServerConfig

    config = ServerConfig(models=(ModelSource("tiny", TINY_MODEL),), device="cuda:0,cuda:1")
    [(source, engine)] = load_models(config)
    assert engine.info.device == "cuda:0,cuda:1" and [e.info.device for e in engine.engines] == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("device", ["cuda:0,cuda:1", "cuda:all", "cuda:x"])
def test_one_engine_refuses_a_device_list_with_a_clear_error(device):
    from tinyembed.engine import make_ops

    with pytest.raises(TinyEmbedError, match="one engine runs on one device|unknown device"):
        make_ops(device)
