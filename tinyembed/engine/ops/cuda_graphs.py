"""CUDA graphs for small token buckets: one captured forward per (token bucket, sequence bucket).

A short request (a 16-token query) costs about a hundred kernel launches whose GPU work is a few
microseconds each, so launch overhead and Python dispatch dominate it. A CUDA graph replays all
of them with one launch. A graph is fixed to its shapes and addresses, so a batch is padded to
its bucket: T tokens -> the next bucket in TOKEN_BUCKETS, n sequences -> the next power of two.
Padding tokens belong to no sequence (the trailing cu_seqlens entries repeat T: empty
sequences), and every op but attention and pooling works row by row, so they never touch a real
row; attention and pooling read only within each sequence. The graph's max_len is the bucket
size: the attention kernel's extra query tiles exit at once.

Each graph owns its static input buffer (ids | positions | cu_seqlens, int32) and a private CuPy
memory pool: every array the captured forward allocates comes from it and stays cached there, so
no other work can be handed memory the graph writes on replay. A replay is: upload the padded
inputs (pinned, as for eager batches), copy them into the static buffer, launch the graph, copy
the first n pooled rows out (a later replay overwrites the graph's own output).

Off by default (TINYEMBED_CUDA_GRAPHS=1 or CudaOps(graphs=True)) until a GPU run has shown it
gives the eager vectors: tests/test_graphs_cuda.py. A bucket whose capture fails falls back to
the eager path, said once in the log.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

import numpy as np

from tinyembed.engine.ops.cuda_runtime import _cp

log = logging.getLogger("tinyembed.cuda")

TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512)
DEFAULT_MAX_TOKENS = 256  # beyond this a batch is long enough for launches not to matter
MAX_GRAPHS = 48  # least recently used graphs are dropped past this (each holds its activations)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def bucket_for(tokens: int, seqs: int, max_tokens: int) -> tuple[int, int] | None:
    """(token bucket, sequence bucket) for a batch, or None when it should run eagerly."""
    if tokens == 0 or seqs == 0 or tokens > max_tokens:
        return None
    token_bucket = next((b for b in TOKEN_BUCKETS if b >= tokens), None)
    if token_bucket is None or seqs > token_bucket:  # more sequences than tokens: empty ones
        return None
    return token_bucket, _next_pow2(seqs)


def padded_inputs(batch, bucket: tuple[int, int]) -> np.ndarray:
    """ids | positions | cu_seqlens of `batch`, padded to the bucket, as one int32 array."""
    token_bucket, seq_bucket = bucket
    tokens, n = batch.num_tokens, len(batch)
    out = np.zeros(2 * token_bucket + seq_bucket + 1, dtype=np.int32)
    out[:tokens] = batch.input_ids  # padding: id 0 at position 0 (valid rows of both tables)
    out[token_bucket:token_bucket + tokens] = batch.position_ids
    cu = out[2 * token_bucket:]
    cu[:n + 1] = batch.cu_seqlens
    cu[n + 1:] = tokens  # empty trailing sequences
    return out


class _Graph:
    def __init__(self, inputs, output, graph, pool):
        self.inputs, self.output, self.graph, self.pool = inputs, output, graph, pool


class GraphCache:
    """Captured forwards of one model on one CudaOps. `forward(ids, positions, cu_seqlens,
    max_len)` must enqueue the whole device forward on ops.stream and return its (n, dims)
    float32 device output without synchronizing."""

    def __init__(self, ops, forward, max_tokens: int | None = None):
        self.ops, self.forward = ops, forward
        self.max_tokens = max_tokens or int(os.environ.get("TINYEMBED_CUDA_GRAPH_MAX_TOKENS", DEFAULT_MAX_TOKENS))
        self.graphs: OrderedDict[tuple[int, int], _Graph] = OrderedDict()
        self.failed: set[tuple[int, int]] = set()
        self.replays = 0  # tests and benches read these to know the graph path really ran
        self.captures = 0
        self._lock = threading.Lock()

    def run(self, batch):
        """The batch's (n, dims) float32 vectors on the device, through a graph; None when the
        batch is not in a bucket (or its capture failed): the caller runs it eagerly."""
        bucket = bucket_for(batch.num_tokens, len(batch), self.max_tokens)
        if bucket is None or bucket in self.failed:
            return None
        cp = _cp()
        with self._lock:
            graph = self.graphs.get(bucket)
            if graph is None:
                graph = self._capture(bucket)
                if graph is None:
                    return None
            self.graphs.move_to_end(bucket)
            (staged,) = self.ops.upload_arrays(padded_inputs(batch, bucket))
            self.ops._enter()
            cp.cuda.runtime.memcpyAsync(graph.inputs.data.ptr, staged.data.ptr, 4 * graph.inputs.size,
                                        cp.cuda.runtime.memcpyDeviceToDevice, self.ops.stream.ptr)
            self.ops.release_batch(staged)
            graph.graph.launch(stream=self.ops.stream)
            self.replays += 1
            return graph.output[:len(batch)].copy()  # on ops.stream (current): ordered after the replay

    def _capture(self, bucket: tuple[int, int]) -> _Graph | None:
        cp = _cp()
        ops, (token_bucket, seq_bucket) = self.ops, bucket
        count = 2 * token_bucket + seq_bucket + 1
        pool = cp.cuda.MemoryPool()
        stream = ops.stream
        try:
            ops._enter()
            with cp.cuda.using_allocator(pool.malloc):
                inputs = cp.zeros(count, dtype=cp.int32)
                cu = np.full(seq_bucket + 1, token_bucket, dtype=np.int32)
                cu[0] = 0  # a valid layout for the warm-up: one full-length sequence
                inputs[2 * token_bucket:].set(cu, stream=stream)
                views = (inputs[:token_bucket], inputs[token_bucket:2 * token_bucket], inputs[2 * token_bucket:])
                # Eager warm-up in the private pool: loads every kernel, lets cuBLAS choose its
                # algorithms and fills the pool, so the capture allocates nothing new.
                self.forward(*views, token_bucket)
                stream.synchronize()
                stream.begin_capture()
                try:
                    output = self.forward(*views, token_bucket)
                finally:
                    graph = stream.end_capture()  # raises when the capture was invalidated
            stream.synchronize()
        except Exception as exc:  # capture is an optimization: fall back, say why once
            self.failed.add(bucket)
            log.warning("CUDA graph capture failed for bucket %s (%s: %s); running it eagerly",
                        bucket, type(exc).__name__, exc)
            return None
        self.captures += 1
        captured = _Graph(inputs, output, graph, pool)
        self.graphs[bucket] = captured
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return captured
