"""Several GPUs in one host: `--device cuda:0,cuda:1` (or `cuda:all`) loads one engine per device
and puts them behind one lane of the scheduler, so every model still has one queue.

A `DevicePool` looks like an Engine to the scheduler (info, tokenizer, pack, embed,
with_dimensions) and says how many batches may compute at once (`workers`). Its compute
executor has one thread per device, each thread bound to its device for life: a launched batch
is picked up by whichever thread is free, so it runs on whichever device is free, and no device
ever runs two batches at once (models sharing the devices share the threads). The
per-request baseline runner (`--batching per-request`) uses the same executor: concurrent
requests run on every device. Both runners' Retry-After divide the queue by the pool's drain
rate (one device's rate times the devices).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tinyembed.engine import expand_devices, load_engine

_bound = threading.local()  # .slot: the device index of this compute thread


class DevicePool:
    def __init__(self, engines: list):
        if not engines:
            raise ValueError("a device pool needs at least one engine")
        self.engines = engines
        self.devices = [engine.info.device for engine in engines]
        first = engines[0]
        self.spec = first.spec
        self.tokenizer = first.tokenizer
        self.info = dataclasses.replace(first.info, device=",".join(self.devices))
        self.workers = len(engines)

    def pack(self, sequences: list[np.ndarray]):
        return self.engines[0].pack(sequences)  # host arrays: the same for every device

    def embed(self, batch) -> np.ndarray:
        """On a compute thread of this pool's executor: the batch runs on that thread's device."""
        return self.engines[getattr(_bound, "slot", 0)].embed(batch)

    def with_dimensions(self, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
        return self.engines[0].with_dimensions(vectors, dimensions)

    def quantize(self, vectors: np.ndarray, output_dtype: str, dimensions: int | None = None) -> np.ndarray:
        return self.engines[0].quantize(vectors, output_dtype, dimensions)  # issue 29: output_dtype

    @property
    def calibration(self):
        return self.engines[0].calibration

    def embed_sequences(self, sequences, max_batch_tokens: int = 16384, dimensions: int | None = None):
        return self.engines[0].embed_sequences(sequences, max_batch_tokens, dimensions)

    def embed_texts(self, texts, truncate: bool = True, input_type=None, dimensions=None):
        return self.engines[0].embed_texts(texts, truncate, input_type, dimensions)


def compute_executor(engine) -> ThreadPoolExecutor:
    """The compute threads of an engine's device(s): one per device, each bound to its device."""
    workers = getattr(engine, "workers", 1)
    name = f"tinyembed-compute-{engine.info.device}"
    if workers == 1:
        return ThreadPoolExecutor(1, thread_name_prefix=name)
    slots = itertools.count()

    def bind() -> None:  # runs once in each new thread; count() is atomic under the GIL
        _bound.slot = next(slots)

    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=bind)


def load_on_devices(model: str, name: str | None, device: str, dtype: str | None = None,
                    threads: int | None = None, precision: str | None = None):
    """An Engine for one device; a DevicePool of one Engine per device for a list or cuda:all."""
    devices = expand_devices(device)
    if len(devices) == 1:
        return load_engine(model, name=name, device=devices[0], dtype=dtype, threads=threads, precision=precision)
    return DevicePool([load_engine(model, name=name, device=d, dtype=dtype, threads=threads, precision=precision)
                       for d in devices])
